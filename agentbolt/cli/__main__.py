"""``python -m agentbolt.cli`` is the ``agentbolt`` command."""

from agentbolt.cli import main

main()

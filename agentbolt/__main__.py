"""``python -m agentbolt`` is the ``agentbolt`` command (used to start worker processes)."""

from agentbolt.cli import main

main()

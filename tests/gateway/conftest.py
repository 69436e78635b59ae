"""The gateway tests' fixtures, defined in live_gateway.py (importable by other test packages too)."""

from tests.gateway.live_gateway import start_server, tiny_engine  # noqa: F401  (fixtures used by name)

"""Fixtures of the example tests: the gateway tests' real server with a scripted backend."""

from tests.gateway.live_gateway import start_server  # noqa: F401  (fixture used by name)

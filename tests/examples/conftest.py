"""Fixtures of the example tests: the gateway tests' real server with a scripted backend."""

from tests.gateway.live_gateway import start_server, tokenizer  # noqa: F401  (fixtures used by name)

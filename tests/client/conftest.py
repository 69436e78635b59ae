from tests.live import keyed_server, server, small_limit_server

__all__ = ["keyed_server", "server", "small_limit_server"]

from tests.live import server

__all__ = ["server"]

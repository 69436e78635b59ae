"""The durable store (SQLite or PostgreSQL): rollout queue, attempts, spans, workers, model versions."""

from agentbolt.store.schema import SCHEMA_VERSION
from agentbolt.store.store import Store

__all__ = ["SCHEMA_VERSION", "Store"]

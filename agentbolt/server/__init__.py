"""The Lightning Server: rollout queue API, OTLP trace ingest, health and (later) the LLM gateway."""

from agentbolt.server.app import create_app

__all__ = ["create_app"]

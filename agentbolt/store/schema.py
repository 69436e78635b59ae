"""The store's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

JSON values (a rollout's input, config and metadata; a span's attributes, events, links and
resource; an attempt's error) are stored as JSON text, which both backends treat alike.
Queue timestamps are float seconds, span timestamps int nanoseconds.

``SCHEMA_VERSION`` is written to ``schema_info`` when the tables are created; a store refuses a
database whose version it does not know, so that a later release can migrate it instead
(:func:`prepare_schema`, run when a store opens).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from agentbolt.errors import StoreUnavailable

SCHEMA_VERSION = 1

# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGINT identity.
_AutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

schema_info = sa.Table(
    "schema_info",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1: one row
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

rollouts = sa.Table(
    "rollouts",
    metadata,
    # Insertion order: the queue hands out the lowest ``seq`` first (FIFO).
    sa.Column("seq", _AutoId, primary_key=True, autoincrement=True),
    sa.Column("rollout_id", sa.Text, nullable=False, unique=True),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("group_id", sa.Text),
    sa.Column("model_version", sa.Integer),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double),
    sa.Column("num_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reward", sa.Double),
    # Next sequence id of rollout-level spans (spans with this rollout id and no attempt id).
    sa.Column("next_span_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_rollouts_queue", "status", "seq"),
    sa.Index("ix_rollouts_mode_queue", "mode", "status", "seq"),
    sa.Index("ix_rollouts_group", "group_id", "seq"),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("attempt_id", sa.Text, primary_key=True),
    sa.Column("rollout_id", sa.Text, sa.ForeignKey("rollouts.rollout_id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("ended_at", sa.Double),
    sa.Column("last_heartbeat_at", sa.Double, nullable=False),
    sa.Column("error", sa.Text),
    # Copied from the rollout's config at dequeue so the watchdog can select expired attempts in SQL.
    sa.Column("timeout_s", sa.Double),
    sa.Column("heartbeat_timeout_s", sa.Double),
    # Next sequence id of this attempt's spans.
    sa.Column("next_span_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("rollout_id", "number", name="uq_attempts_rollout_number"),
    sa.Index("ix_attempts_status", "status"),
)

spans = sa.Table(
    "spans",
    metadata,
    sa.Column("id", _AutoId, primary_key=True, autoincrement=True),
    sa.Column("rollout_id", sa.Text, sa.ForeignKey("rollouts.rollout_id")),
    sa.Column("attempt_id", sa.Text, sa.ForeignKey("attempts.attempt_id")),
    # The attempt's number (0 for rollout-level and unattributed spans), kept here for ordering.
    sa.Column("attempt_number", sa.Integer, nullable=False),
    sa.Column("sequence_id", sa.BigInteger, nullable=False),
    sa.Column("trace_id", sa.Text, nullable=False),
    sa.Column("span_id", sa.Text, nullable=False),
    sa.Column("parent_id", sa.Text),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("start_time_ns", sa.BigInteger, nullable=False),
    sa.Column("end_time_ns", sa.BigInteger, nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("events", sa.Text, nullable=False),
    sa.Column("links", sa.Text, nullable=False),
    sa.Column("status_code", sa.Text, nullable=False),
    sa.Column("status_message", sa.Text, nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("scope", sa.Text),
    # Idempotent ingest: a span is stored once, however often it is sent.
    sa.UniqueConstraint("trace_id", "span_id", name="uq_spans_trace_span"),
    sa.Index("ix_spans_rollout_order", "rollout_id", "attempt_number", "sequence_id"),
)

# Store-wide counters; one row, "unattributed_spans", numbers spans that carry no rollout id.
sequences = sa.Table(
    "sequences",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("next_value", sa.BigInteger, nullable=False),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", sa.Text, primary_key=True),
    sa.Column("first_seen_at", sa.Double, nullable=False),
    sa.Column("last_seen_at", sa.Double, nullable=False),
    sa.Column("current_attempt_id", sa.Text),
    sa.Column("attempts_done", sa.Integer, nullable=False, server_default="0"),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("checkpoint", sa.Text),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

UNATTRIBUTED_SPANS = "unattributed_spans"

# Key of the advisory lock that serialises schema creation across PostgreSQL clients.
_PG_SCHEMA_LOCK = 0x61676E74626F6C74  # "agntbolt"


def prepare_schema(conn: Connection, url: str) -> None:
    """Create the missing tables and check the schema version of the database at ``url``.

    Raises StoreUnavailable for a database of another schema version, or one with agentbolt's table
    names but no ``schema_info``.
    """
    if conn.dialect.name == "postgresql":
        # Two processes opening a fresh database must not both create the tables.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
    tables = set(sa.inspect(conn).get_table_names())
    ours = set(metadata.tables)
    if schema_info.name in tables:
        version = conn.execute(sa.select(schema_info.c.version).where(schema_info.c.id == 1)).scalar()
        if version is None:
            raise StoreUnavailable(
                f"the database at {url} has an empty schema_info table; it was not made by "
                "agentbolt or is damaged. Use another database."
            )
        if version != SCHEMA_VERSION:
            advice = (
                "Upgrade agentbolt to open it."
                if version > SCHEMA_VERSION
                else "This version is unknown; use another database."
            )
            raise StoreUnavailable(
                f"the database at {url} has schema version {version}, but this agentbolt "
                f"understands version {SCHEMA_VERSION} only. {advice}"
            )
    elif tables & ours:
        raise StoreUnavailable(
            f"the database at {url} has tables named like agentbolt's ({', '.join(sorted(tables & ours))}) "
            "but no schema_info table, so its schema version is unknown. Use another database."
        )
    metadata.create_all(conn)  # only the missing tables
    if schema_info.name not in tables:
        conn.execute(sa.insert(schema_info).values(id=1, version=SCHEMA_VERSION, created_at=time.time()))
    counter = conn.execute(sa.select(sequences.c.name).where(sequences.c.name == UNATTRIBUTED_SPANS)).first()
    if counter is None:
        conn.execute(sa.insert(sequences).values(name=UNATTRIBUTED_SPANS, next_value=0))

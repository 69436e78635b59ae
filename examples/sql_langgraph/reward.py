"""Reward of the SQL agent: does the query return the same result set as the gold query?"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

SCHEMA = Path(__file__).with_name("schema.sql")
MAX_ROWS = 1000  # a query returning more rows than this is not an answer to these questions


def open_database() -> sqlite3.Connection:
    """A fresh in-memory copy of the example database (each rollout gets its own: no shared writes)."""
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.executescript(SCHEMA.read_text())
    return db


def run_query(db: sqlite3.Connection, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql`` (read-only: anything but one SELECT is refused).

    Raises:
        sqlite3.Error: the query is not a single SELECT, does not parse, or fails.
    """
    text = sql.strip().rstrip(";").strip()
    if not text.lower().startswith(("select", "with")) or ";" in text:
        raise sqlite3.DatabaseError("only a single SELECT statement is allowed")
    return db.execute(text).fetchmany(MAX_ROWS)


def result_sets_equal(got: list[tuple[object, ...]], gold: list[tuple[object, ...]]) -> bool:
    """Same rows as a multiset (order ignored, as Spider's execution match does); floats compared rounded."""

    def norm(rows: list[tuple[object, ...]]) -> Counter[tuple[object, ...]]:
        return Counter(tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows)

    return norm(got) == norm(gold)


def sql_reward(db: sqlite3.Connection, sql: str | None, gold_sql: str) -> float:
    """1.0 when ``sql`` returns the gold query's result set, else 0.0 (also for no query or a failing one)."""
    if not sql:
        return 0.0
    try:
        got = run_query(db, sql)
    except sqlite3.Error:
        return 0.0
    return 1.0 if result_sets_equal(got, run_query(db, gold_sql)) else 0.0

"""Span transactions: storing spans and rewards with their sequence numbers, and reading them back.

- ``sequence_id`` counts 0, 1, 2, ... per attempt in arrival order (within one ``add_spans`` call,
  in start-time order). Rollout-level spans (a rollout id, no attempt id) have their own counter
  per rollout and sort before the first attempt's spans; unattributed spans (no rollout id) share
  one store-wide counter.
- Ingest is idempotent: a span is stored once per (trace_id, span_id), however often it is sent.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy import bindparam, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from agentbolt.errors import BadInput, NotFound
from agentbolt.store.records import attempt_not_found, get_rollouts, json_text, rollouts_not_found
from agentbolt.store.schema import UNATTRIBUTED_SPANS, attempts, rollouts, sequences, spans
from agentbolt.types import AddSpansResult, Page, RolloutWithSpans, Span, SpanIn, SpanStatus

_INT64_MAX = 2**63 - 1

# A span counter is keyed by (rollout id, attempt id): (r, a) an attempt's, (r, None) a rollout's
# rollout-level spans, (None, None) the unattributed spans'.
_CounterKey = tuple[str | None, str | None]

# ---------------------------------------------------------------------------------------------
# Statements, built once: lock the span counters, store spans, save the counters.

_LOCK_ROLLOUT_COUNTERS = (
    sa.select(rollouts.c.rollout_id, rollouts.c.next_span_seq)
    .where(rollouts.c.rollout_id.in_(bindparam("ids", expanding=True)))
    .order_by(rollouts.c.rollout_id)
    .with_for_update()
)
_LOCK_ATTEMPT_COUNTERS = (
    sa.select(attempts.c.attempt_id, attempts.c.rollout_id, attempts.c.number, attempts.c.next_span_seq)
    .where(attempts.c.attempt_id.in_(bindparam("ids", expanding=True)))
    .order_by(attempts.c.attempt_id)
    .with_for_update()
)
_LOCK_UNATTRIBUTED_COUNTER = (
    sa.select(sequences.c.next_value).where(sequences.c.name == UNATTRIBUTED_SPANS).with_for_update()
)
_SET_ROLLOUT_COUNTER = (
    sa.update(rollouts).where(rollouts.c.rollout_id == bindparam("b_id")).values(next_span_seq=bindparam("b_next"))
)
_SET_ATTEMPT_COUNTER = (
    sa.update(attempts).where(attempts.c.attempt_id == bindparam("b_id")).values(next_span_seq=bindparam("b_next"))
)
_SET_UNATTRIBUTED_COUNTER = (
    sa.update(sequences).where(sequences.c.name == UNATTRIBUTED_SPANS).values(next_value=bindparam("b_next"))
)
# By dialect name: a span stored already is skipped by each backend's own INSERT ... ON CONFLICT.
_INSERT_SPANS = {
    name: insert(spans)
    .on_conflict_do_nothing(index_elements=["trace_id", "span_id"])
    .returning(spans.c.id, spans.c.trace_id, spans.c.span_id)
    for name, insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}
_RENUMBER_SPAN = sa.update(spans).where(spans.c.id == bindparam("b_id")).values(sequence_id=bindparam("b_seq"))
# Rollout-level spans (attempt number 0) first, then each attempt's in sequence order.
_SPAN_ORDER = (spans.c.attempt_number, spans.c.sequence_id, spans.c.id)


# ---------------------------------------------------------------------------------------------
# Span rows <-> Span


def span_from_row(row: Any) -> Span:
    """A ``spans`` row as a Span."""
    return Span(
        rollout_id=row.rollout_id,
        attempt_id=row.attempt_id,
        trace_id=row.trace_id,
        span_id=row.span_id,
        parent_id=row.parent_id,
        name=row.name,
        kind=row.kind,
        start_time_ns=row.start_time_ns,
        end_time_ns=row.end_time_ns,
        attributes=json.loads(row.attributes),
        events=json.loads(row.events),
        links=json.loads(row.links),
        status=SpanStatus(code=row.status_code, message=row.status_message),
        resource=json.loads(row.resource),
        scope=row.scope,
        sequence_id=row.sequence_id,
    )


def _span_values(span: SpanIn, attempt_number: int, sequence_id: int, resource: str) -> dict[str, Any]:
    """The ``spans`` row of an incoming span, its resource as JSON already; raises BadInput for a value that
    cannot be stored."""
    for field in ("start_time_ns", "end_time_ns"):
        if getattr(span, field) > _INT64_MAX:
            raise BadInput(
                f"span {span.span_id} (trace {span.trace_id}): {field} is larger than a signed 64-bit integer"
            )
    events = [{"name": e.name, "time_ns": e.time_ns, "attributes": e.attributes} for e in span.events]
    links = [{"trace_id": li.trace_id, "span_id": li.span_id, "attributes": li.attributes} for li in span.links]
    return {
        "rollout_id": span.rollout_id,
        "attempt_id": span.attempt_id,
        "attempt_number": attempt_number,
        "sequence_id": sequence_id,
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "kind": span.kind,
        "start_time_ns": span.start_time_ns,
        "end_time_ns": span.end_time_ns,
        "attributes": _span_json(span, "attributes", span.attributes),
        "events": _span_json(span, "events", events) if events else "[]",
        "links": _span_json(span, "links", links) if links else "[]",
        "status_code": span.status.code.value,
        "status_message": span.status.message,
        "resource": resource,
        "scope": span.scope,
    }


def _span_json(span: SpanIn, field: str, value: Any) -> str:
    """``value`` (the span's ``field``) as JSON text; raises BadInput naming the span and the field."""
    try:
        return json_text(value)
    except (TypeError, ValueError) as e:
        raise BadInput(f"span {span.span_id} (trace {span.trace_id}): {field} is not JSON-serialisable: {e}") from None


# ---------------------------------------------------------------------------------------------
# Transaction bodies


def add_spans(conn: Connection, spans_in: list[SpanIn]) -> AddSpansResult:
    """Store spans not stored yet, numbering them (see ``Store.add_spans``)."""
    batch: list[SpanIn] = []
    seen: set[tuple[str, str]] = set()
    for span in spans_in:
        key = (span.trace_id, span.span_id)
        if key not in seen:
            seen.add(key)
            batch.append(span)
    inserted = _insert_new_spans(conn, batch)
    return AddSpansResult(inserted=inserted, duplicates=len(spans_in) - inserted)


def add_reward(conn: Connection, span: SpanIn, rollout_id: str, final_value: float | None) -> AddSpansResult:
    """Store a reward span of ``rollout_id``; with ``final_value``, also make it the rollout's reward."""
    inserted = _insert_new_spans(conn, [span])
    if final_value is not None:
        conn.execute(sa.update(rollouts).where(rollouts.c.rollout_id == rollout_id).values(reward=final_value))
    return AddSpansResult(inserted=inserted, duplicates=1 - inserted)


def query_spans(
    conn: Connection, rollout_id: str | None, attempt_id: str | None, limit: int, offset: int
) -> Page[Span]:
    """One page of a rollout's (or one attempt's, or the unattributed) spans; see ``Store.query_spans``."""
    if rollout_id is None:
        condition: sa.ColumnElement[bool] = spans.c.rollout_id.is_(None)
    elif attempt_id is None:
        if conn.execute(sa.select(rollouts.c.seq).where(rollouts.c.rollout_id == rollout_id)).first() is None:
            raise NotFound(f"rollout {rollout_id} does not exist")
        condition = spans.c.rollout_id == rollout_id
    else:
        number = conn.execute(
            sa.select(attempts.c.number).where(attempts.c.attempt_id == attempt_id, attempts.c.rollout_id == rollout_id)
        ).scalar()
        if number is None:
            raise attempt_not_found(conn, rollout_id, attempt_id)
        condition = sa.and_(spans.c.rollout_id == rollout_id, spans.c.attempt_number == number)
    rows = conn.execute(sa.select(spans).where(condition).order_by(*_SPAN_ORDER).limit(limit).offset(offset)).all()
    total = conn.execute(sa.select(func.count()).select_from(spans).where(condition)).scalar_one()
    return Page[Span](items=[span_from_row(r) for r in rows], total=total, limit=limit, offset=offset)


def spans_of_rollouts(conn: Connection, rollout_ids: list[str]) -> dict[str, list[Span]]:
    """Every span of each rollout, in ``query_spans`` order, keyed in the order given. Raises NotFound."""
    known = set(conn.execute(sa.select(rollouts.c.rollout_id).where(rollouts.c.rollout_id.in_(rollout_ids))).scalars())
    if len(known) < len(set(rollout_ids)):
        raise rollouts_not_found(rollout_ids, known)
    return _spans_by_rollout(conn, rollout_ids)


def _spans_by_rollout(conn: Connection, rollout_ids: list[str]) -> dict[str, list[Span]]:
    """The span query of :func:`spans_of_rollouts`, for ids known to exist."""
    by_rollout: dict[str, list[Span]] = {rid: [] for rid in rollout_ids}
    rows = conn.execute(
        sa.select(spans).where(spans.c.rollout_id.in_(list(by_rollout))).order_by(spans.c.rollout_id, *_SPAN_ORDER)
    )
    for row in rows:
        by_rollout[row.rollout_id].append(span_from_row(row))
    return by_rollout


# ---------------------------------------------------------------------------------------------
# Numbering and storing


def _insert_new_spans(conn: Connection, batch: list[SpanIn]) -> int:
    """Number and insert the spans of ``batch`` (no repeats) not stored yet; returns how many were inserted."""
    rollout_level = sorted({s.rollout_id for s in batch if s.rollout_id is not None and s.attempt_id is None})
    attempt_ids = sorted({s.attempt_id for s in batch if s.attempt_id is not None})
    # Lock the counters first (rollouts, then attempts, then the store-wide one): a concurrent
    # add_spans for the same attempt waits here, then finds our spans stored when it inserts.
    next_seq: dict[_CounterKey, int] = {}
    numbers: dict[str, int] = {}
    if rollout_level:
        rows = conn.execute(_LOCK_ROLLOUT_COUNTERS, {"ids": rollout_level})
        next_seq.update({(r.rollout_id, None): r.next_span_seq for r in rows})
        for span in batch:
            if span.rollout_id is not None and span.attempt_id is None and (span.rollout_id, None) not in next_seq:
                raise NotFound(
                    f"span {span.span_id} names rollout {span.rollout_id}, which does not exist; "
                    "no span of this request was stored"
                )
    if attempt_ids:
        owner: dict[str, str] = {}
        for r in conn.execute(_LOCK_ATTEMPT_COUNTERS, {"ids": attempt_ids}):
            owner[r.attempt_id] = r.rollout_id
            numbers[r.attempt_id] = r.number
            next_seq[(r.rollout_id, r.attempt_id)] = r.next_span_seq
        for span in batch:
            if span.attempt_id is not None and owner.get(span.attempt_id) != span.rollout_id:
                raise _span_target_not_found(conn, span, owner.get(span.attempt_id))
    if any(s.rollout_id is None for s in batch):
        next_seq[(None, None)] = conn.execute(_LOCK_UNATTRIBUTED_COUNTER).scalar_one()

    # Numbered as if none were stored yet (a span sent again is rare: a retried request); the insert skips
    # the stored ones, and only then are the new ones numbered again, without the gaps those would leave.
    ordered = sorted(batch, key=lambda s: s.start_time_ns)
    first_seq = dict(next_seq)
    values: list[dict[str, Any]] = []
    resource: dict[str, Any] | None = None
    resource_json = ""
    for span in ordered:
        group = (span.rollout_id, span.attempt_id)
        seq = next_seq[group]
        next_seq[group] = seq + 1
        number = numbers[span.attempt_id] if span.attempt_id is not None else 0
        if span.resource != resource:  # the spans of one request mostly share their resource
            resource, resource_json = span.resource, _span_json(span, "resource", span.resource)
        values.append(_span_values(span, number, seq, resource_json))
    # Insert in key order, so two requests racing on the same spans never deadlock.
    values.sort(key=lambda v: (v["trace_id"], v["span_id"]))
    inserted = {(r.trace_id, r.span_id): r.id for r in conn.execute(_INSERT_SPANS[conn.dialect.name], values)}
    fresh = ordered
    if len(inserted) < len(ordered):
        fresh = [s for s in ordered if (s.trace_id, s.span_id) in inserted]
        next_seq = first_seq
        renumbered = []
        for span in fresh:
            group = (span.rollout_id, span.attempt_id)
            renumbered.append({"b_id": inserted[(span.trace_id, span.span_id)], "b_seq": next_seq[group]})
            next_seq[group] += 1
        if renumbered:
            conn.execute(_RENUMBER_SPAN, renumbered)
    _save_span_counters(conn, {(s.rollout_id, s.attempt_id) for s in fresh}, next_seq)
    return len(inserted)


def _save_span_counters(conn: Connection, used: set[_CounterKey], next_seq: dict[_CounterKey, int]) -> None:
    rollout_counters = [
        {"b_id": r, "b_next": next_seq[(r, None)]} for r in sorted(r for r, a in used if r is not None and a is None)
    ]
    attempt_counters = [
        {"b_id": a, "b_next": next_seq[(r, a)]} for r, a in sorted((r, a) for r, a in used if a is not None)
    ]
    if rollout_counters:
        conn.execute(_SET_ROLLOUT_COUNTER, rollout_counters)
    if attempt_counters:
        conn.execute(_SET_ATTEMPT_COUNTER, attempt_counters)
    if (None, None) in used:
        conn.execute(_SET_UNATTRIBUTED_COUNTER, {"b_next": next_seq[(None, None)]})


def _span_target_not_found(conn: Connection, span: SpanIn, owner: str | None) -> NotFound:
    where = f"span {span.span_id} names attempt {span.attempt_id} of rollout {span.rollout_id}"
    tail = "; no span of this request was stored"
    if owner is not None:
        return NotFound(f"{where}, but that attempt belongs to rollout {owner}{tail}")
    known = conn.execute(sa.select(rollouts.c.seq).where(rollouts.c.rollout_id == span.rollout_id)).first()
    if known is None:
        return NotFound(f"{where}, but rollout {span.rollout_id} does not exist{tail}")
    return NotFound(f"{where}, but attempt {span.attempt_id} does not exist{tail}")


def read_rollouts(conn: Connection, rollout_ids: list[str]) -> list[RolloutWithSpans]:
    """Rollouts with their attempts and spans, in the order given, read in one transaction. Raises NotFound."""
    found = get_rollouts(conn, rollout_ids, True)  # raises NotFound naming any unknown id
    spans_of = _spans_by_rollout(conn, rollout_ids)
    return [RolloutWithSpans(**dict(r), spans=spans_of[r.rollout_id]) for r in found]

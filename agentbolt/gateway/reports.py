"""The gateway's reports under ``/api``: a rollout's token-fidelity checks, and the gateway's counters."""

from __future__ import annotations

from fastapi import APIRouter, Request

from agentbolt import semconv
from agentbolt.gateway.gateway import gateway_of
from agentbolt.types import FidelityReport, GatewayStats

router = APIRouter(tags=["gateway"])

_PAGE = 1000  # spans read per query


@router.get("/api/rollouts/{rollout_id}/fidelity", response_model=FidelityReport)
async def rollout_fidelity(request: Request, rollout_id: str) -> FidelityReport:
    """Token-fidelity checks of a rollout's LLM calls, counted from its stored spans (see gateway/fidelity.py)."""
    gateway = gateway_of(request)
    await gateway.recorder.flush()
    checked, mismatched, offset = 0, [], 0
    while True:
        page = await gateway.store.query_spans(rollout_id, limit=_PAGE, offset=offset)
        for span in page.items:
            flag = span.attributes.get(semconv.LLM_FIDELITY_MISMATCH)
            if flag is not None:
                checked += 1
                if flag:
                    mismatched.append(span.span_id)
        offset += len(page.items)
        if not page.items or offset >= page.total:
            break
    refused = gateway.fidelity_refused.get(rollout_id, 0)
    return FidelityReport(
        rollout_id=rollout_id,
        checked=checked + refused,
        mismatches=len(mismatched) + refused,
        refused=refused,
        mismatched_span_ids=mismatched,
    )


@router.get("/api/gateway/stats", response_model=GatewayStats)
async def gateway_stats(request: Request) -> GatewayStats:
    """This server process's gateway counters since it started."""
    gateway = gateway_of(request)
    return GatewayStats(
        model=gateway.backend.model_name,
        model_version=gateway.backend.model_version,
        calls=gateway.calls,
        refused=gateway.refused,
        spans_recorded=gateway.recorder.recorded,
        spans_pending=gateway.recorder.pending,
        spans_dropped=gateway.recorder.dropped,
        span_durability=gateway.span_durability,
        fidelity_checked=gateway.fidelity.checked,
        fidelity_mismatches=gateway.fidelity.mismatches,
    )

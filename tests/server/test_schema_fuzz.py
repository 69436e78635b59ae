"""Schemathesis over every route of the server app: no 5xx, and every answer as the OpenAPI document says.

The app runs in-process (ASGI) on a real SQLite file, with the gateway on a scripted backend (real
tokenizer, no model: the fuzz is about the HTTP contract, not generation; without the train extra the
gateway routes are left out). Examples are bounded and derandomized, so a run is repeatable and takes
well under a minute. Each operation's examples run under hypothesis here rather than through
schemathesis's pytest plugin, whose lazy fixture loader fails on pytest 9 (``Function._nodeid``), and so
that every failure is collected into one report instead of stopping at the first.
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from agentbolt.server.app import create_app  # noqa: E402
from agentbolt.types import ServerConfig  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 25
# Long-polls would make the run wait for nothing: generated waits are cut to this.
MAX_WAIT_S = 0.05
_WAIT_FIELDS = ("wait_s", "timeout_s")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    from tests.gateway.live_gateway import ScriptedBackend

    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    config = ServerConfig(port=0, store_url=f"sqlite:///{db}", watchdog_interval_s=0.2)
    try:
        tokenizer = request.getfixturevalue("tokenizer")
    except pytest.skip.Exception:  # no train extra: the queue and trace routes only
        return create_app(config)
    return create_app(config, backend=ScriptedBackend(tokenizer, ["fuzzed reply"]))


@pytest.fixture(scope="module")
def api_schema(app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _cap_waits(body: Any) -> None:
    if isinstance(body, dict):
        for field in _WAIT_FIELDS:
            value = body.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_WAIT_S:
                body[field] = MAX_WAIT_S


def _fuzz(operation: Any, mode: GenerationMode, failures: list[str]) -> int:
    """Run ``operation``'s examples of one generation mode; each failure is recorded, not raised (no shrinking)."""
    seen: set[str] = set()
    ran = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        nonlocal ran
        ran += 1
        _cap_waits(case.body)
        try:
            case.call_and_validate(checks=CHECKS)
        # A check failed (FailureGroup), or the app raised (an unhandled error is a 500): keep the first of each kind.
        except (Exception, FailureGroup) as e:
            kind = ",".join(sorted(type(x).__name__ for x in getattr(e, "exceptions", [e])))
            if kind not in seen:
                seen.add(kind)
                failures.append(f"{operation.label} [{mode.value}] {e}\n  request: {case.body!r:.300}")

    try:
        run()
    except Unsatisfiable:  # nothing to negate (an operation without parameters or body)
        pass
    return ran


def test_every_route_answers_as_documented_and_never_5xx(api_schema: Any) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    ran = sum(_fuzz(op, mode, failures) for op in operations for mode in GenerationMode)
    print(f"schemathesis: {len(operations)} operations, {ran} examples, {len(failures)} failure(s)")
    assert not failures, "\n\n".join(failures)

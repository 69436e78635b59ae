"""POST /v1/traces fed by the official OpenTelemetry OTLP/HTTP *JSON* exporter (JavaScript).

Python's official exporter only speaks protobuf, so OTLP/JSON from a real SDK needs the JS one:
``@opentelemetry/exporter-trace-otlp-http`` sends ``Content-Type: application/json`` with hex ids.
The npm packages are installed once into ``<repo>/.agentbolt/npm-otel/<pins hash>/`` (gitignored)
and reused; the tests skip when node/npm are missing or the registry cannot be reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentbolt.server.background import BackgroundServer

# Mutually compatible pins: the 0.223.x exporter is built on the 2.12.x SDK, whose packages accept
# @opentelemetry/api >=1.3.0 <1.10.0 and Node ^18.19.0 || >=20.6.0. (The newer 0.3xx exporter and
# 3.x resources need Node >= 22.15 and api 1.10.)
NPM_PACKAGES = {
    "@opentelemetry/exporter-trace-otlp-http": "0.223.1",
    "@opentelemetry/sdk-trace-base": "2.12.1",
    "@opentelemetry/resources": "2.12.1",
    "@opentelemetry/api": "1.9.1",
}
MIN_NODE = (18, 19)

REPO = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPO / ".agentbolt" / "npm-otel"
_MARKER = "agentbolt-installed.json"
_NETWORK_ERRORS = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
    r"ERR_SOCKET_TIMEOUT|network|proxy|\b403\b|\b407\b|\b5\d\d\b",
    re.IGNORECASE,
)


@contextlib.contextmanager
def _install_lock(path: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """An exclusive lock between processes (pytest-xdist workers, concurrent runs)."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): the atomic rename in _npm_modules still keeps the cache whole
        yield
        return
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"timed out waiting for the npm install lock {path}")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _node_version(node: str) -> tuple[int, ...]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    match = re.match(r"v(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


@pytest.fixture(scope="module")
def node_modules() -> tuple[str, Path]:
    """``(node executable, node_modules dir)`` with the pinned official packages installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"needs node and npm on PATH for the official JS OTLP/JSON exporter (node={node}, npm={npm})")
    if _node_version(node) < MIN_NODE:
        pytest.skip(f"the pinned OpenTelemetry JS packages need Node >= {'.'.join(map(str, MIN_NODE))}")
    pins = sorted(f"{name}@{version}" for name, version in NPM_PACKAGES.items())
    target = CACHE_ROOT / hashlib.sha256(" ".join(pins).encode()).hexdigest()[:16]
    marker = target / _MARKER
    if marker.is_file():
        return node, target / "node_modules"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with _install_lock(CACHE_ROOT / ".install.lock"):
        if marker.is_file():  # another process installed it while we waited
            return node, target / "node_modules"
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=CACHE_ROOT))
        try:
            try:
                result = subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund", "--prefix", str(staging), *pins],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            except subprocess.TimeoutExpired:
                pytest.skip("npm install of the OpenTelemetry JS packages timed out (registry unreachable?)")
            if result.returncode != 0:
                output = (result.stdout + result.stderr)[-2000:]
                if _NETWORK_ERRORS.search(output):
                    pytest.skip(f"npm install failed, apparently for network reasons:\n{output}")
                pytest.fail(f"npm install {' '.join(pins)} failed (exit {result.returncode}):\n{output}")
            (staging / _MARKER).write_text(json.dumps({"packages": pins}))
            staging.chmod(0o755)  # mkdtemp made it private
            if target.exists() and not marker.is_file():  # left over by an interrupted older run
                shutil.rmtree(target)
            try:
                staging.rename(target)
            except OSError:
                if not marker.is_file():  # not merely another process winning the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return node, target / "node_modules"


# Arguments come as one JSON object in argv[2]. Prints one JSON line: the export results and what
# went over the wire (headers and body of each request, captured by wrapping http.request).
_EXPORT_SCRIPT = r"""
'use strict';
const http = require('http');
const cfg = JSON.parse(process.argv[2]);

const wire = [];
const originalRequest = http.request;
http.request = function (...args) {
  const req = originalRequest.apply(this, args);
  const chunks = [];
  const write = req.write;
  const end = req.end;
  req.write = function (chunk, ...rest) {
    if (chunk && typeof chunk !== 'function') chunks.push(Buffer.from(chunk));
    return write.call(this, chunk, ...rest);
  };
  req.end = function (chunk, ...rest) {
    if (chunk && typeof chunk !== 'function') chunks.push(Buffer.from(chunk));
    wire.push({ headers: req.getHeaders(), body: Buffer.concat(chunks).toString('utf8') });
    return end.call(this, chunk, ...rest);
  };
  return req;
};
require('module').syncBuiltinESMExports(); // the exporter loads http with import()

const { context, trace, SpanStatusCode } = require('@opentelemetry/api');
const { BasicTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');

const otlp = new OTLPTraceExporter({ url: cfg.url + '/v1/traces', timeoutMillis: 5000 });
const results = [];
const exporter = {  // records every export result, then hands it on to the processor
  export(spans, done) {
    otlp.export(spans, (result) => {
      const error = result.error;
      results.push({
        code: result.code,
        spans: spans.length,
        error: error ? { message: String(error.message), code: error.code, data: error.data } : null,
      });
      done(result);
    });
  },
  shutdown: () => otlp.shutdown(),
  forceFlush: () => otlp.forceFlush(),
};

const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'js-agent', ...cfg.resourceAttributes }),
  spanProcessors: [new BatchSpanProcessor(exporter, { scheduledDelayMillis: 60000 })],
});
const tracer = provider.getTracer('agentbolt-js-test', '1.0.0');

const parent = tracer.startSpan('invoke_agent js', { attributes: cfg.parentAttributes });
const child = tracer.startSpan(
  'execute_tool js',
  { attributes: cfg.childAttributes },
  trace.setSpan(context.active(), parent),
);
child.setAttributes({
  'tool.query': 'weather in Paris',
  'tool.count': 42,
  'tool.big': 1099511627776,
  'tool.negative': -7,
  'tool.score': 0.25,
  'tool.success': false,
  'tool.tags': ['x', 'y'],
  'tool.scores': [0.5, 1.5],
});
child.addEvent('retry', { attempt: 2, reason: 'timeout' });
child.setStatus({ code: SpanStatusCode.ERROR, message: 'no results' });
child.end();
parent.end();

(async () => {
  let flushError = null;
  try {
    await provider.forceFlush();
  } catch (e) {
    flushError = String(e && e.message ? e.message : e);
  }
  await provider.shutdown();
  const ok = flushError === null && results.length > 0 && results.every((r) => r.code === 0);
  process.stdout.write(JSON.stringify({ ok, flushError, results, wire }) + '\n');
  process.exit(ok ? 0 : 1);
})();
"""


def _run_exporter(
    node_modules: tuple[str, Path],
    tmp_path: Path,
    url: str,
    *,
    parent_attributes: dict[str, Any],
    child_attributes: dict[str, Any],
    resource_attributes: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    node, modules = node_modules
    script = tmp_path / "export.js"
    script.write_text(_EXPORT_SCRIPT)
    config = {
        "url": url,
        "parentAttributes": parent_attributes,
        "childAttributes": child_attributes,
        "resourceAttributes": resource_attributes or {},
    }
    # No OTEL_* settings from the caller's shell (endpoint, compression, headers...): the script's own win.
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["NODE_PATH"] = str(modules)
    proc = subprocess.run([node, str(script), json.dumps(config)], capture_output=True, text=True, timeout=60, env=env)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"node script printed nothing (exit {proc.returncode}):\n{proc.stderr}"
    return proc.returncode, json.loads(lines[-1])


def _claim(url: str) -> tuple[str, str]:
    httpx.post(f"{url}/api/rollouts", json={"input": 1}).raise_for_status()
    claim = httpx.post(f"{url}/api/dequeue", json={"worker_id": "w"})
    claim.raise_for_status()
    body = claim.json()
    return body["rollout"]["rollout_id"], body["attempt"]["attempt_id"]


def _stored(url: str, rollout_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/rollouts/{rollout_id}/spans")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _assert_sent_as_otlp_json(report: dict[str, Any], spans: int) -> dict[str, Any]:
    """What the exporter put on the wire: one OTLP/JSON request with hex ids."""
    assert len(report["wire"]) == 1, report["wire"]
    request = report["wire"][0]
    assert request["headers"]["content-type"] == "application/json"
    document = json.loads(request["body"])
    sent = [span for rs in document["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]]
    assert len(sent) == spans
    for span in sent:
        assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"]), span["traceId"]
        assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"]), span["spanId"]
    return document


def _check_stored(spans: list[dict[str, Any]], attempt_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    assert sorted(s["name"] for s in spans) == ["execute_tool js", "invoke_agent js"]
    assert {s["attempt_id"] for s in spans} == {attempt_id}
    parent = next(s for s in spans if s["name"] == "invoke_agent js")
    child = next(s for s in spans if s["name"] == "execute_tool js")
    assert parent["parent_id"] is None
    assert child["parent_id"] == parent["span_id"]
    assert child["trace_id"] == parent["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", child["trace_id"])

    attrs = child["attributes"]
    assert attrs["tool.query"] == "weather in Paris"
    for key, value in (("tool.count", 42), ("tool.big", 2**40), ("tool.negative", -7)):
        assert attrs[key] == value and type(attrs[key]) is int, (key, attrs[key])
    assert attrs["tool.score"] == 0.25 and type(attrs["tool.score"]) is float
    assert attrs["tool.success"] is False
    assert attrs["tool.tags"] == ["x", "y"]
    assert attrs["tool.scores"] == [0.5, 1.5] and all(type(v) is float for v in attrs["tool.scores"])

    assert len(child["events"]) == 1
    event = child["events"][0]
    assert event["name"] == "retry"
    assert event["attributes"] == {"attempt": 2, "reason": "timeout"}
    assert type(event["attributes"]["attempt"]) is int
    assert event["time_ns"] >= child["start_time_ns"] > 10**18  # nanoseconds since the epoch

    assert child["status"] == {"code": "ERROR", "message": "no results"}
    assert parent["status"]["code"] == "UNSET"
    assert child["kind"] == "INTERNAL"
    assert child["scope"] == "agentbolt-js-test"
    assert child["resource"]["service.name"] == "js-agent"
    assert child["end_time_ns"] >= child["start_time_ns"]
    return parent, child


def test_official_json_exporter_span_attributes_attribute_the_spans(
    server: BackgroundServer, node_modules: tuple[str, Path], tmp_path: Path
) -> None:
    rollout_id, attempt_id = _claim(server.url)
    ids = {"agentbolt.rollout_id": rollout_id, "agentbolt.attempt_id": attempt_id}
    code, report = _run_exporter(node_modules, tmp_path, server.url, parent_attributes=ids, child_attributes=ids)
    assert code == 0, report
    document = _assert_sent_as_otlp_json(report, spans=2)
    sent_attrs = {
        a["key"]: a["value"]
        for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]
        for a in span["attributes"]
    }
    assert "intValue" in sent_attrs["tool.count"] and "doubleValue" in sent_attrs["tool.score"]

    parent, child = _check_stored(_stored(server.url, rollout_id), attempt_id)
    for span in (parent, child):
        assert span["attributes"]["agentbolt.rollout_id"] == rollout_id
        assert span["attributes"]["agentbolt.attempt_id"] == attempt_id
        assert "agentbolt.rollout_id" not in span["resource"]


def test_official_json_exporter_resource_attributes_attribute_the_spans(
    server: BackgroundServer, node_modules: tuple[str, Path], tmp_path: Path
) -> None:
    rollout_id, attempt_id = _claim(server.url)
    ids = {"agentbolt.rollout_id": rollout_id, "agentbolt.attempt_id": attempt_id}
    code, report = _run_exporter(
        node_modules, tmp_path, server.url, parent_attributes={}, child_attributes={}, resource_attributes=ids
    )
    assert code == 0, report
    _assert_sent_as_otlp_json(report, spans=2)
    parent, child = _check_stored(_stored(server.url, rollout_id), attempt_id)
    for span in (parent, child):
        assert span["resource"]["agentbolt.rollout_id"] == rollout_id
        assert span["resource"]["agentbolt.attempt_id"] == attempt_id
        assert "agentbolt.rollout_id" not in span["attributes"]


def test_official_json_exporter_unknown_rollout_is_refused_and_nothing_stored(
    server: BackgroundServer, node_modules: tuple[str, Path], tmp_path: Path
) -> None:
    rollout_id, attempt_id = _claim(server.url)
    # One request: a valid parent and a child naming a rollout that does not exist.
    code, report = _run_exporter(
        node_modules,
        tmp_path,
        server.url,
        parent_attributes={"agentbolt.rollout_id": rollout_id, "agentbolt.attempt_id": attempt_id},
        child_attributes={"agentbolt.rollout_id": "ro-does-not-exist"},
    )
    assert code != 0, report
    assert report["ok"] is False
    _assert_sent_as_otlp_json(report, spans=2)
    assert [r["code"] for r in report["results"]] == [1]  # ExportResultCode.FAILED, not retried
    error = report["results"][0]["error"]
    assert error["code"] == 404, error
    assert "ro-does-not-exist" in error["data"]
    assert json.loads(error["data"])["code"] == 5  # google.rpc.Code NOT_FOUND, as JSON
    assert _stored(server.url, rollout_id) == []  # the whole request is refused
    assert httpx.get(f"{server.url}/api/rollouts/ro-does-not-exist/spans").status_code == 404

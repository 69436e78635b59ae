"""The agentbolt command line against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
from click.testing import CliRunner

from agentbolt.cli import main
from agentbolt.server.background import BackgroundServer
from tests.live import server  # noqa: F401  (fixture)

QUICKSTART = Path(__file__).parent.parent / "examples" / "quickstart"


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_has_help() -> None:
    for command in ([], ["serve"], ["worker"], ["enqueue"], ["rollouts"], ["rollouts", "list"], ["export"]):
        output = _invoke(*command, "--help")
        assert "Usage:" in output


def test_serve_refuses_a_public_interface_without_an_api_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentbolt.cli", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "without an API key" in result.stderr


def test_enqueue_run_list_spans_and_export(server: BackgroundServer, tmp_path: Path) -> None:  # noqa: F811
    url = server.url
    assert "enqueued 12 rollout(s)" in _invoke(
        "enqueue", str(QUICKSTART / "tasks.jsonl"), "--server", url, "--group-size", "2"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentbolt.cli",
            "worker",
            "examples.quickstart.agent:solve",
            "--server",
            url,
            "-n",
            "3",
            "--max-rollouts",
            "12",
        ],
        cwd=QUICKSTART.parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "12 succeeded" in result.stdout

    listing = _invoke("rollouts", "list", "--server", url, "--status", "succeeded")
    assert "of 12" in listing

    page = httpx.get(f"{url}/api/rollouts", params={"limit": 1, "offset": 6}).json()
    division = page["items"][0]["rollout_id"]
    tree = _invoke("rollouts", "spans", division, "--server", url)
    assert "execute_tool calculator" in tree
    assert "ERROR" in tree

    out = tmp_path / "export.jsonl"
    _invoke("export", "--server", url, "-o", str(out))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12
    assert all(r["status"] == "succeeded" and r["spans"] for r in records)
    rewards = sorted(r["reward"] for r in records)
    assert rewards == [0.0] * 4 + [1.0] * 8  # division by zero and the unparseable question score 0


def test_bad_tasks_file_is_a_usage_error(server: BackgroundServer, tmp_path: Path) -> None:  # noqa: F811
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"q": 1}\n{not json\n')
    result = CliRunner().invoke(main, ["enqueue", str(bad), "--server", server.url])
    assert result.exit_code == 2
    assert "tasks.jsonl:2 is not JSON" in result.output
    assert httpx.get(f"{server.url}/api/rollouts").json()["total"] == 0


def test_unreachable_server_is_a_one_line_error() -> None:
    result = CliRunner().invoke(main, ["rollouts", "list", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot reach the agentbolt server" in result.output

"""`agentbolt serve --tool-format`: the choice reaches the server's config and is reported at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agentbolt.cli import main


def _serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> tuple[str, Any]:
    """Run `agentbolt serve --model tiny ARGS` up to where uvicorn would start: (output, the server's config)."""
    pytest.importorskip("torch", reason="the tiny model is for the engine (train extra)")
    configs: list[Any] = []
    monkeypatch.setattr("agentbolt.server.create_app", lambda config, **kwargs: configs.append(config))
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: None)
    store = f"sqlite:///{tmp_path / 'serve.db'}"
    result = CliRunner().invoke(main, ["serve", "--model", "tiny", "--store", store, *args])
    assert result.exit_code == 0, result.output
    [config] = configs
    return result.output, config


def test_serve_reports_the_format_auto_picks_for_the_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    output, config = _serve(monkeypatch, tmp_path)

    assert config.tool_format == "auto"
    assert "tools for 'policy' in the pythonic format (SmolLM2 family)" in output


def test_serve_tool_format_overrides_the_family(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    output, config = _serve(monkeypatch, tmp_path, "--tool-format", "hermes")

    assert config.tool_format == "hermes"
    assert "tools for 'policy' in the hermes format (set by tool_format)" in output


def test_serve_refuses_an_unknown_tool_format() -> None:
    result = CliRunner().invoke(main, ["serve", "--model", "tiny", "--tool-format", "xml"])

    assert result.exit_code == 2 and "'xml' is not one of 'auto', 'hermes', 'pythonic'" in result.output

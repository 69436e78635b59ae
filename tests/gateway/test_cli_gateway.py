"""The gateway's command-line surface: `agentbolt model fetch-demo` and `agentbolt serve` model flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agentbolt.cli import main


def test_fetch_demo_prints_the_path_of_the_cached_gguf() -> None:
    pytest.importorskip("torch", reason="the demo model is for the engine (train extra)")
    result = CliRunner().invoke(main, ["model", "fetch-demo"])
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip())
    assert path.suffix == ".gguf" and path.is_file() and path.stat().st_size > 50_000_000


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--upstream", "http://127.0.0.1:9/v1"], "--tokenizer"),
        (["--model", "demo", "--upstream", "http://127.0.0.1:9/v1", "--tokenizer", "demo"], "not both"),
        (["--tokenizer", "demo"], "--upstream"),
        (["--model", "tiny", "--fixed-model", "reviewer"], "NAME=MODEL"),
        (["--model", "tiny", "--fixed-model", "policy=tiny"], "used twice"),
        (["--fixed-model", "reviewer=tiny"], "beside the policy"),
        (
            [
                *("--store", "postgresql+asyncpg://u@127.0.0.1:1/db", "--workers", "2", "--span-durability", "finish"),
                *("--upstream", "http://127.0.0.1:9/v1", "--tokenizer", "demo"),
            ],
            "--span-durability finish",
        ),
        (["--span-flush-interval", "0"], "--span-flush-interval"),
    ],
)
def test_serve_refuses_inconsistent_model_flags(args: list[str], complaint: str) -> None:
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2
    assert complaint in result.output

"""MetricsLog, the reward curve and the console line: what a user finds in the run folder after training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agentbolt.errors import BadInput
from agentbolt.trainer.metrics import (
    JSONL_NAME,
    TENSORBOARD_DIR,
    TRAIN_REWARD_MEAN,
    TRAIN_REWARD_STD,
    VAL_SCORE,
    MetricsLog,
    console_line,
    read_jsonl,
    write_reward_curve,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _steps(n: int) -> list[dict[str, float]]:
    rows = []
    for step in range(n):
        row = {TRAIN_REWARD_MEAN: 0.1 * step, TRAIN_REWARD_STD: 0.05, "clip_fraction": 0.01 * step}
        if step % 2 == 0:  # validation every other step
            row[VAL_SCORE] = 0.2 + 0.1 * step
        rows.append(row)
    return rows


def test_each_logged_step_is_one_parseable_jsonl_line_with_step_and_metrics(tmp_path: Path) -> None:
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for step, row in enumerate(_steps(3)):
            log.log(step, row)
    lines = (tmp_path / JSONL_NAME).read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[2][TRAIN_REWARD_MEAN] == pytest.approx(0.2)
    assert VAL_SCORE in records[0] and VAL_SCORE not in records[1]
    assert all(isinstance(r["time"], float) for r in records)


def test_history_keeps_every_step_in_memory(tmp_path: Path) -> None:
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for step, row in enumerate(_steps(4)):
            log.log(step, row)
        assert [r["step"] for r in log.history] == [0, 1, 2, 3]
        assert log.history[3]["clip_fraction"] == pytest.approx(0.03)


def test_non_finite_values_are_null_in_jsonl_and_nan_when_read_back(tmp_path: Path) -> None:
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.log(0, {"kl_ref": math.nan, "entropy": math.inf})
    raw = json.loads((tmp_path / JSONL_NAME).read_text())
    assert raw["kl_ref"] is None and raw["entropy"] is None
    (record,) = read_jsonl(tmp_path / JSONL_NAME)
    assert math.isnan(record["kl_ref"])


@pytest.mark.parametrize(
    ("step", "metrics"),
    [(0, {"reward/mean": "high"}), (0, {"step": 1.0}), (0, {"time": 1.0}), (0, {"ok": True})],
)
def test_bad_metrics_are_rejected_with_the_name(tmp_path: Path, step: int, metrics: dict) -> None:
    with MetricsLog(tmp_path, tensorboard=False) as log, pytest.raises(BadInput):
        log.log(step, metrics)


def test_a_step_entry_equal_to_the_logged_step_is_accepted(tmp_path: Path) -> None:
    with MetricsLog(tmp_path, tensorboard=False) as log:
        record = log.log(3, {"step": 3.0, "loss": 0.5})
    assert record["step"] == 3 and record["loss"] == 0.5


def test_a_step_before_the_last_one_is_rejected(tmp_path: Path) -> None:
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.log(5, {TRAIN_REWARD_MEAN: 0.5})
        with pytest.raises(BadInput, match="before the last"):
            log.log(4, {TRAIN_REWARD_MEAN: 0.5})


def test_resuming_keeps_steps_up_to_the_checkpoint_and_drops_later_ones(tmp_path: Path) -> None:
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for step, row in enumerate(_steps(5)):
            log.log(step, row)
    with MetricsLog(tmp_path, tensorboard=False, resume_step=2) as log:
        assert [r["step"] for r in log.history] == [0, 1, 2]
        log.log(3, {TRAIN_REWARD_MEAN: 0.9})
    assert [r["step"] for r in read_jsonl(tmp_path / JSONL_NAME)] == [0, 1, 2, 3]
    assert read_jsonl(tmp_path / JSONL_NAME)[3][TRAIN_REWARD_MEAN] == pytest.approx(0.9)


def test_a_fresh_log_replaces_an_old_file(tmp_path: Path) -> None:
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.log(0, {TRAIN_REWARD_MEAN: 0.1})
    with MetricsLog(tmp_path, tensorboard=False) as log:
        log.log(0, {TRAIN_REWARD_MEAN: 0.7})
    (record,) = read_jsonl(tmp_path / JSONL_NAME)
    assert record[TRAIN_REWARD_MEAN] == pytest.approx(0.7)


def test_a_line_cut_short_by_a_crash_is_skipped_when_reading(tmp_path: Path) -> None:
    path = tmp_path / JSONL_NAME
    path.write_text('{"step": 0, "reward/mean": 0.5}\n{"step": 1, "reward/me')
    assert [r["step"] for r in read_jsonl(path)] == [0]
    path.write_text('{"step": 0, "tr\n{"step": 1}\n')
    with pytest.raises(BadInput, match=":1"):
        read_jsonl(path)


def test_tensorboard_event_file_holds_the_logged_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLog(tmp_path) as log:
        for step, row in enumerate(_steps(3)):
            log.log(step, row)
    tb_dir = tmp_path / TENSORBOARD_DIR
    assert list(tb_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    rewards = events.Scalars(TRAIN_REWARD_MEAN)
    assert [e.step for e in rewards] == [0, 1, 2]
    assert rewards[2].value == pytest.approx(0.2)
    assert [e.step for e in events.Scalars(VAL_SCORE)] == [0, 2]


def test_reward_curve_is_a_valid_png(tmp_path: Path) -> None:
    history = [{"step": step, **row} for step, row in enumerate(_steps(6))]
    path = write_reward_curve(history, tmp_path / "plots" / "reward.png")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000  # a real image, not an empty canvas header
    from matplotlib.image import imread

    height, width = imread(path).shape[:2]
    assert (width, height) == (800, 450)


def test_reward_curve_draws_validation_only_history(tmp_path: Path) -> None:
    path = write_reward_curve([{"step": 0, VAL_SCORE: 0.3}, {"step": 5, VAL_SCORE: 0.6}], tmp_path / "val.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_reward_curve_of_records_without_steps_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="step"):
        write_reward_curve(_steps(2), tmp_path / "nostep.png")


def test_reward_curve_without_rewards_or_scores_says_so(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="nothing to plot"):
        write_reward_curve([{"step": 0, "clip_fraction": 0.1}], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_console_line_puts_reward_with_std_and_validation_first() -> None:
    line = console_line(
        {"step": 11, "zz/other": 3, TRAIN_REWARD_STD: 0.2214, VAL_SCORE: 0.38, TRAIN_REWARD_MEAN: 0.4111}, step=12
    )
    assert line == "step 12 | reward 0.411±0.221 | val 0.38 | zz/other 3"


def test_console_line_formats_tiny_and_large_numbers_readably() -> None:
    line = console_line({"kl_ref": 0.00012, "tokens_per_s": 1234.567, "a/count": 7.0}, step=3)
    assert line == "step 3 | kl 1.20e-04 | tok/s 1235 | a/count 7"


def test_console_line_shows_at_most_max_items() -> None:
    metrics = {f"m/{i}": float(i) for i in range(20)}
    assert console_line(metrics, max_items=4).count("|") == 3

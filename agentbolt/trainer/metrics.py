"""Where a training run's per-step metrics go: a JSONL file, TensorBoard, the console and a reward-curve PNG.

A step's metrics are one flat ``dict[str, float]`` (``reward/mean``, ``val/accuracy``, ``clip_fraction``...).
:class:`MetricsLog` appends each step to ``metrics.jsonl`` (one JSON object per line, with ``step`` and
``time``), writes the same scalars to TensorBoard and keeps the history in memory;
:func:`write_reward_curve` draws that history; :func:`console_line` prints one step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentbolt.errors import BadInput

# The names the reward curve and the console line look for: BatchReport.metrics() writes the train reward,
# the run's validation writes val/<name>.
TRAIN_REWARD_MEAN = "reward/mean"
TRAIN_REWARD_STD = "reward/std"
VAL_SCORE = "val/accuracy"

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Shown first, in this order, by console_line (with short labels); any other metric follows by name.
_CONSOLE_FIRST = (
    (TRAIN_REWARD_MEAN, "reward"),
    (VAL_SCORE, "val"),
    ("tools/use_rate", "tool use"),  # an agent that learns to act: calls its tools, well-formed
    ("tools/malformed_rate", "malformed"),
    ("val/tools/use_rate", "val tool use"),
    ("loss", "loss"),
    ("kl_ref", "kl"),
    ("clip_fraction", "clip"),
    ("entropy", "entropy"),
    ("tokens_per_s", "tok/s"),
)


class MetricsLog:
    """Records each training step's metrics to ``<run_dir>/metrics.jsonl`` and TensorBoard, and keeps them.

    Args:
        run_dir: folder of the run (created if missing); the JSONL file and the ``tensorboard/`` folder go there.
        tensorboard: also write TensorBoard event files (needs the ``tensorboard`` package).
        resume_step: None starts a fresh log (an existing JSONL file is replaced); a step number continues
            an earlier run that was checkpointed at that step: its records up to that step are kept (and
            loaded into :attr:`history`), later ones — written after the checkpoint — are dropped.

    Use as a context manager, or call :meth:`close` at the end so TensorBoard flushes its file.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / JSONL_NAME
        self.history: list[dict[str, float]] = []
        if resume_step is not None and self.jsonl_path.exists():
            self.history = [r for r in read_jsonl(self.jsonl_path) if r["step"] <= resume_step]
        # Rewrite the kept records so the file and the history agree from here on.
        with self.jsonl_path.open("w", encoding="utf-8") as f:
            for record in self.history:
                f.write(_json_line(record))
        self._file = self.jsonl_path.open("a", encoding="utf-8")
        self._writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: only runs that want TensorBoard need it

            # purge_step drops events a crashed run wrote after its checkpoint, as the JSONL does above.
            purge = resume_step + 1 if resume_step is not None else None
            self._writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """Record ``metrics`` of training ``step`` everywhere; returns the record kept in :attr:`history`.

        Non-finite values (NaN, inf) are kept as null in the JSONL file (JSON has no NaN) and as
        themselves in TensorBoard and the history, so a diverging run stays visible.

        A ``step`` entry in ``metrics`` (the trainer reports its own count) is accepted when it equals
        ``step``; the record's ``time`` is always the logging time.

        Raises:
            BadInput: a value that is not a number, a ``time`` entry, a ``step`` entry other than ``step``,
                or a step lower than the last one logged.
        """
        if self.history and step < self.history[-1]["step"]:
            raise BadInput(f"step {step} is before the last logged step {self.history[-1]['step']:g}")
        record: dict[str, float] = {"step": step, "time": time.time()}
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadInput(f"metric {name!r} must be a number, got {type(value).__name__}")
            if name == "step" and value != step:
                raise BadInput(f"metrics hold step {value:g} but are logged as step {step}")
            if name == "time":
                raise BadInput("metric name 'time' is reserved for the logging time")
            if name != "step":
                record[name] = float(value)
        self._file.write(_json_line(record))
        self._file.flush()  # a run killed mid-way keeps every step it finished
        if self._writer is not None:
            for name, value in record.items():
                if name not in ("step", "time"):
                    self._writer.add_scalar(name, value, global_step=step, walltime=record["time"])
            self._writer.flush()
        self.history.append(record)
        return record

    def close(self) -> None:
        """Flush and close the JSONL file and the TensorBoard writer."""
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | Path) -> list[dict[str, float]]:
    """The records of a ``metrics.jsonl`` file (null values come back as NaN).

    A last line cut short by a crash is skipped; any other unreadable line raises :class:`BadInput`.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records: list[dict[str, float]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise BadInput(f"{path}:{number} is not a JSON object: {exc}") from exc
        if not isinstance(raw, dict) or "step" not in raw:
            raise BadInput(f"{path}:{number} is not a metrics record (a JSON object with a step)")
        records.append({k: math.nan if v is None else float(v) for k, v in raw.items()})
    return records


def write_reward_curve(
    history: Sequence[Mapping[str, float]],
    path_png: str | Path,
    *,
    title: str = "agentbolt training",
) -> Path:
    """Draw the train reward mean (with a ± std band) and the validation score per step into a PNG.

    Steps without a value for a series (validation runs every few steps) are skipped for that
    series. Returns the path written.

    Raises:
        BadInput: a record without a ``step``, or a history with neither a train reward nor a validation score.
    """
    missing = [i for i, r in enumerate(history) if "step" not in r]
    if missing:
        raise BadInput(f"metrics records {missing[:5]} have no 'step': pass MetricsLog.history or read_jsonl()")
    import matplotlib

    matplotlib.use("Agg")  # no display on a training box
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(r["step"], r[key]) for r in history if key in r and math.isfinite(r[key])]
        return [p[0] for p in points], [p[1] for p in points]

    reward_steps, reward = series(TRAIN_REWARD_MEAN)
    val_steps, val = series(VAL_SCORE)
    if not reward and not val:
        raise BadInput(f"no {TRAIN_REWARD_MEAN!r} or {VAL_SCORE!r} in the metrics history: nothing to plot")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if reward:
            ax.plot(reward_steps, reward, label="train reward (mean)", color="tab:blue")
            std = {r["step"]: r[TRAIN_REWARD_STD] for r in history if math.isfinite(r.get(TRAIN_REWARD_STD, math.nan))}
            if std:
                band = [(s, m, std[s]) for s, m in zip(reward_steps, reward, strict=True) if s in std]
                ax.fill_between(
                    [b[0] for b in band],
                    [b[1] - b[2] for b in band],
                    [b[1] + b[2] for b in band],
                    color="tab:blue",
                    alpha=0.2,
                    label="train reward ± std",
                )
        if val:
            ax.plot(val_steps, val, label="validation score", color="tab:orange", marker="o")
        ax.set_xlabel("training step")
        ax.set_ylabel("reward / score")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.tight_layout()
        path = Path(path_png)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def console_line(metrics: Mapping[str, float], *, step: int | None = None, max_items: int = 10) -> str:
    """One short line for the console, e.g. ``step 12 | reward 0.41±0.22 | val 0.38 | kl 0.0012``.

    The main metrics come first with short labels (reward with its std), then the others by name,
    at most ``max_items`` of them in all. The step is shown when given; ``step`` and ``time`` entries of
    ``metrics`` are not shown.
    """
    parts = [] if step is None else [f"step {step}"]
    shown = {"step", "time", TRAIN_REWARD_STD}
    items: list[str] = []
    for key, label in _CONSOLE_FIRST:
        if key in metrics:
            text = _number(metrics[key])
            if key == TRAIN_REWARD_MEAN and TRAIN_REWARD_STD in metrics:
                text += "±" + _number(metrics[TRAIN_REWARD_STD])
            items.append(f"{label} {text}")
            shown.add(key)
    items += [f"{key} {_number(value)}" for key, value in sorted(metrics.items()) if key not in shown]
    return " | ".join(parts + items[:max_items])


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.4g}"


def _json_line(record: Mapping[str, float]) -> str:
    clean = {k: (v if math.isfinite(v) else None) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"

"""Tasks of the addition example: sums of two digits, drawn as TRL's anchor run draws them."""

from __future__ import annotations

import random
from typing import Any


def make_train_tasks(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` problems with ``a`` and ``b`` uniform in 1..9 (repeats allowed: there are only 81 pairs)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"addition/train/{seed}")
    return [{"a": rng.randint(1, 9), "b": rng.randint(1, 9)} for _ in range(n)]


def make_val_tasks(n: int = 100, samples: int = 2, seed: int = 1234) -> list[dict[str, Any]]:
    """The held-out set: ``n`` problems from ``random.Random(seed)``, each ``samples`` times (sampled at T=1).

    The problems are ``(rng.randint(1, 9), rng.randint(1, 9))`` in draw order, the set TRL's anchor run
    validates on; its accuracy is the mean over all ``n * samples`` replies.
    """
    if n < 0 or samples < 1:
        raise ValueError(f"need n >= 0 and samples >= 1, got n={n}, samples={samples}")
    rng = random.Random(seed)
    problems = [(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(n)]
    return [{"a": a, "b": b, "id": f"val-{i}-{s}"} for i, (a, b) in enumerate(problems) for s in range(samples)]

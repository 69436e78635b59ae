"""The addition example (the TRL comparison task): its reward and its tasks."""

from __future__ import annotations

import random

import pytest

from examples.addition.agent import reward_of
from examples.addition.tasks import make_train_tasks, make_val_tasks


@pytest.mark.parametrize(
    ("reply", "reward"),
    [("7", 1.0), ("3 + 4 = 7", 1.0), ("The answer is 7.", 1.0), ("7 or 8", 0.0), ("seven", 0.0), ("", 0.0)],
)
def test_reward_is_one_iff_the_last_integer_of_the_reply_is_the_sum(reply: str, reward: float) -> None:
    assert reward_of(reply, 7) == reward
    assert reward_of(None, 7) == 0.0


def test_val_tasks_are_trls_held_out_problems_each_sampled_twice() -> None:
    rng = random.Random(1234)
    problems = [(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(100)]
    tasks = make_val_tasks(100, samples=2, seed=1234)
    assert [(t["a"], t["b"]) for t in tasks] == [p for p in problems for _ in range(2)]
    assert len({t["id"] for t in tasks}) == 200


def test_train_tasks_are_digit_pairs_the_same_for_the_same_seed() -> None:
    tasks = make_train_tasks(500, seed=3)
    assert tasks == make_train_tasks(500, seed=3) != make_train_tasks(500, seed=4)
    assert {(t["a"], t["b"]) for t in tasks} <= {(a, b) for a in range(1, 10) for b in range(1, 10)}
    assert len({(t["a"], t["b"]) for t in tasks}) > 70  # uniform over the 81 pairs, not a handful
    with pytest.raises(ValueError):
        make_train_tasks(-1)

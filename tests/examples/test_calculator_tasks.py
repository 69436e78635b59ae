"""The calculator demo's task generator, its calculator tool and its answer parsing."""

from __future__ import annotations

import re

import pytest

from examples.calculator.agent import final_answer, reward_of, run_calculator
from examples.calculator.calculator import CalculatorError, evaluate
from examples.calculator.tasks import make_tasks, make_tool_tasks

# --- tasks -------------------------------------------------------------------------------------


def test_same_arguments_give_the_same_tasks() -> None:
    assert make_tasks("train", 50, seed=3) == make_tasks("train", 50, seed=3)


def test_different_seeds_give_different_tasks() -> None:
    first = {t["id"] for t in make_tasks("train", 50, seed=1)}
    second = {t["id"] for t in make_tasks("train", 50, seed=2)}
    assert len(first & second) < 10


def test_train_and_val_never_share_a_problem_whatever_the_seeds() -> None:
    train = {t["question"] for seed in range(5) for t in make_tasks("train", 200, seed=seed)}
    val = {t["question"] for seed in range(5) for t in make_tasks("val", 200, seed=seed)}
    assert train and val
    assert not train & val


def test_tasks_in_one_list_are_distinct() -> None:
    tasks = make_tasks("val", 300, seed=0, max_number=20)
    assert len({t["id"] for t in tasks}) == 300


@pytest.mark.parametrize("ops", ["+", "-", "*", "+-*"])
def test_every_answer_is_the_integer_result_of_its_question(ops: str) -> None:
    for task in make_tasks("train", 100, seed=7, ops=ops, max_number=30):
        numbers = [int(x) for x in re.findall(r"\d+", task["question"])]
        assert numbers == [task["a"], task["b"]]
        expected = {"+": task["a"] + task["b"], "-": task["a"] - task["b"], "*": task["a"] * task["b"]}[task["op"]]
        assert task["answer"] == expected
        assert isinstance(task["answer"], int) and task["answer"] >= 0
        assert task["op"] in ops


def test_expression_style_asks_the_bare_sum_with_the_same_answers() -> None:
    for task in make_tasks("val", 50, seed=1, style="expression", ops="+-*"):
        assert task["question"] == f"What is {task['a']} {task['op']} {task['b']}?"
        assert evaluate(f"{task['a']} {task['op']} {task['b']}") == task["answer"]


def test_operands_stay_within_the_asked_range() -> None:
    tasks = make_tasks("train", 200, seed=0, max_number=10, ops="+-")
    assert all(2 <= t["a"] <= 10 and 2 <= t["b"] <= 10 for t in tasks)
    assert {t["op"] for t in tasks} == {"+", "-"}


def test_asking_for_more_tasks_than_exist_fails_clearly() -> None:
    with pytest.raises(ValueError, match="distinct"):
        make_tasks("val", 5000, seed=0, max_number=3, ops="*", max_product_factor=2)


@pytest.mark.parametrize(
    "kwargs", [{"split": "test"}, {"ops": "/"}, {"ops": ""}, {"n": -1}, {"max_number": 1}, {"style": "poem"}]
)
def test_bad_arguments_are_rejected(kwargs: dict) -> None:
    args = {"split": "train", "n": 3, **kwargs}
    with pytest.raises(ValueError):
        make_tasks(**args)


# --- the calculator tool -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [("12 + 7", 19), ("15 - 11", 4), ("3 * (4 + 1)", 15), ("7 / 2", 3.5), ("8 / 2", 4), ("-3 + 10", 7), ("6x7", 42)],
)
def test_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    "expression",
    ["__import__('os').system('true')", "x", "2 ** 10", "9 ** 9 ** 9", "1 / 0", "len('abc')", "", "1 +", "1e400"],
)
def test_calculator_refuses_anything_but_plain_arithmetic(expression: str) -> None:
    with pytest.raises(CalculatorError):
        evaluate(expression)


def test_calculator_refuses_results_beyond_its_range() -> None:
    with pytest.raises(CalculatorError, match="range"):
        evaluate("999999999 * 999999999")


@pytest.mark.parametrize(("arguments", "result"), [('{"expression": "2 + 3"}', "5"), ('{"expression": 12}', "12")])
def test_tool_arguments_are_read_from_json(arguments: str, result: str) -> None:
    assert run_calculator(arguments) == result


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]", '{"expr": "2 + 3"}', '{"expression": true}'])
def test_bad_tool_arguments_raise_a_calculator_error(arguments: str) -> None:
    with pytest.raises(CalculatorError):
        run_calculator(arguments)


# --- answers and reward ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("14 + 14 = 28.\n\nAnswer: 28", 28),
        ("Answer: 28. I checked 3 times.", 28),  # the Answer: wins over later numbers
        ("answer is **12**", 12),
        ("So Mia has 7 + 5 = 12 apples", 12),  # no Answer: the last integer
        ("Total: 1,200", 1200),
        ("It is -4", -4),
        ("no numbers here", None),
        ("", None),
        (None, None),
    ],
)
def test_final_answer_is_parsed_from_the_reply(text: str | None, answer: int | None) -> None:
    assert final_answer(text) == answer


def test_reward_is_one_only_for_the_right_answer() -> None:
    assert reward_of("Answer: 19", 19) == 1.0
    assert reward_of("Answer: 18", 19) == 0.0
    assert reward_of("<tool_call>{broken", 19) == 0.0
    assert reward_of(None, 19) == 0.0


def test_tool_tasks_are_deterministic_disjoint_and_need_the_tool() -> None:
    train = make_tool_tasks("train", 300, seed=0)
    assert train == make_tool_tasks("train", 300, seed=0)
    val = make_tool_tasks("val", 100, seed=0, temperature=1.0)
    assert not {t["question"] for t in train} & {t["question"] for t in val}
    assert {t["kind"] for t in train} == {"product", "long_product", "sum3"}
    for task in train + val:
        expression = task["question"].removeprefix("What is ").removesuffix("?")
        assert evaluate(expression) == task["answer"]
        assert task["answer"] >= 121  # nothing a 135M model does in its head: 11 * 11 is the smallest product
    assert all(t["temperature"] == 1.0 for t in val)


@pytest.mark.parametrize("kwargs", [{"split": "test"}, {"n": -1}, {"kinds": ["division"]}, {"kinds": []}])
def test_bad_tool_task_arguments_are_rejected(kwargs: dict) -> None:
    args = {"split": "train", "n": 3, **kwargs}
    with pytest.raises(ValueError):
        make_tool_tasks(**args)

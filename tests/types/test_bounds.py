"""The bounds policy of agentbolt.types.base, as properties: what reaches the store is what it can hold."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import TypeAdapter, ValidationError  # noqa: E402

from agentbolt.types import (  # noqa: E402
    INT32_MAX,
    INT64_MAX,
    FiniteFloat,
    FiniteJSON,
    Nanos,
    QueryOffset,
    RewardCreate,
    RolloutCreate,
    StoreInt,
    non_finite_path,
)

_store_int = TypeAdapter(StoreInt)
_nanos = TypeAdapter(Nanos)
_offset = TypeAdapter(QueryOffset)
_finite = TypeAdapter(FiniteFloat)
_json = TypeAdapter(FiniteJSON)

_big_ints = st.one_of(st.integers(), st.integers(min_value=2**31 - 2, max_value=2**64 + 2), st.sampled_from([-1, 0]))
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=3), children, max_size=4)
    ),
    max_leaves=20,
)


def _accepts(adapter: TypeAdapter[Any], value: Any) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


@given(_big_ints)
def test_store_int_accepts_exactly_what_an_integer_column_holds(n: int) -> None:
    assert _accepts(_store_int, n) == (0 <= n <= INT32_MAX)
    assert _accepts(_store_int, json.loads(json.dumps(n))) == (0 <= n <= INT32_MAX)


@given(_big_ints)
def test_nanos_and_offsets_accept_exactly_what_a_bigint_column_holds(n: int) -> None:
    assert _accepts(_nanos, n) == (0 <= n <= INT64_MAX)
    assert _accepts(_offset, n) == (0 <= n <= INT64_MAX)
    assert _accepts(_offset, str(n)) == (0 <= n <= INT64_MAX)  # a query parameter arrives as text


@pytest.mark.parametrize("value", [True, False, 1.0, "1"])
def test_store_int_refuses_booleans_floats_and_strings(value: object) -> None:
    assert not _accepts(_store_int, value)
    with pytest.raises(ValidationError):
        RolloutCreate.model_validate_json(json.dumps({"input": 1, "model_version": value}))


@given(st.floats())
def test_finite_float_accepts_exactly_the_finite_numbers(x: float) -> None:
    assert _accepts(_finite, x) == math.isfinite(x)
    assert _accepts(TypeAdapter(RewardCreate), {"value": x}) == math.isfinite(x)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def _at(value: Any, path: str) -> Any:
    if path == "(value)":
        return value
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


@given(_json_values)
def test_finite_json_refuses_a_value_iff_it_holds_nan_or_infinity_and_names_where(value: Any) -> None:
    assert _accepts(_json, value) == (not _has_non_finite(value))
    path = non_finite_path(value)
    assert (path is not None) == _has_non_finite(value)
    if path is not None:
        assert not math.isfinite(_at(value, path))


@given(_json_values)
def test_an_accepted_task_input_reads_back_unchanged(value: Any) -> None:
    try:
        created = RolloutCreate(input=value)
    except ValidationError:
        assert _has_non_finite(value)
        return
    assert json.loads(created.model_dump_json())["input"] == value  # nothing became null


def test_deeply_nested_input_is_walked_without_recursion() -> None:
    deep: Any = float("nan")
    for _ in range(50_000):
        deep = [deep]
    assert non_finite_path(deep) == ".".join(["0"] * 50_000)

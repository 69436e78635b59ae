"""The framework-independent parts of agentbolt.integrations (no framework needed)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from agentbolt.integrations import AGENT_HEADER, agent_headers, require, traced_tool


def test_agent_headers_name_the_agent_and_refuse_names_that_cannot_travel_in_a_header() -> None:
    assert agent_headers("writer") == {AGENT_HEADER: "writer"}
    assert agent_headers(None) == {}
    for bad in ["", "  ", "wri\nter", "schreibér"]:
        with pytest.raises(ValueError, match="agent name"):
            agent_headers(bad)


def test_a_missing_framework_names_the_extra_to_install() -> None:
    with pytest.raises(ImportError, match=r"pip install 'agentbolt\[crewai\]'"):
        require("agentbolt_no_such_framework", "crewai")


def test_traced_tool_keeps_the_signature_frameworks_read_and_reraises_failures() -> None:
    @traced_tool
    def add(a: int, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    @traced_tool(name="divide")
    async def div(a: float, b: float) -> float:
        return a / b

    assert list(inspect.signature(add).parameters) == ["a", "b"]
    assert inspect.signature(add) == inspect.signature(add.__wrapped__)  # type: ignore[attr-defined]
    assert add.__doc__ == "Add two numbers." and add.__name__ == "add"
    assert add(1) == 3
    assert inspect.iscoroutinefunction(div)
    assert asyncio.run(div(6, 3)) == 2
    with pytest.raises(ZeroDivisionError):
        asyncio.run(div(1, 0))

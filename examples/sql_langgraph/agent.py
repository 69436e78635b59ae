"""A SQL agent in LangGraph: write → execute → check → rewrite, until the checker accepts or turns run out.

Two agents share the policy model: the *writer* (writes and rewrites the query) and the *checker* (reviews the
result). Each has its own ``ChatOpenAI`` naming it, so training can select the writer alone
(``rl.adapter.agents: [writer]``): the checker's calls still appear in the traces but never in transitions.

Run one task by hand against a server: see README.md.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, TypedDict

from langgraph.graph import END, StateGraph

import agentbolt
from agentbolt.integrations import langchain as ab_langchain
from examples.sql_langgraph.reward import open_database, run_query, sql_reward

MAX_TURNS = 3  # write + up to two rewrites
MAX_TOKENS = 256  # per writer reply
CHECK_MAX_TOKENS = 64
MAX_RESULT_CHARS = 1000

WRITER_PROMPT = (
    "You write one SQLite query that answers the user's question over this database:\n\n{schema}\n\n"
    "Reply with the query only, in a ```sql code block."
)
CHECKER_PROMPT = (
    "You check whether an SQL query answers a question. Reply with the single word CORRECT when it does; "
    "otherwise say briefly what is wrong."
)


class SqlState(TypedDict, total=False):
    question: str
    sql: str | None
    result: str
    feedback: str
    turns: int
    accepted: bool


def extract_sql(text: str | None) -> str | None:
    """The query in a model reply: a ```sql block, else the first SELECT/WITH statement, else None."""
    if not text:
        return None
    fenced = re.search(r"```(?:sql|sqlite)?\s*(.*?)```", text, re.DOTALL | re.IGNORECASE)
    if fenced and fenced.group(1).strip():
        return fenced.group(1).strip()
    bare = re.search(r"\b(select|with)\b.*", text, re.DOTALL | re.IGNORECASE)
    return bare.group(0).strip().split("\n\n")[0] if bare else None


def schema_text(db: sqlite3.Connection) -> str:
    """The tables' CREATE statements (no data): what the writer needs, in few tokens."""
    rows = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
    return "\n".join(" ".join(sql.split()) + ";" for (sql,) in rows)


def build_graph(llm: agentbolt.LLM, db: sqlite3.Connection, temperature: float = 1.0) -> Any:
    """The LangGraph state graph of one rollout (its models point at this rollout's gateway URL); the writer
    samples at ``temperature``."""
    writer = ab_langchain.chat_model(llm, agent="writer", max_tokens=MAX_TOKENS, temperature=temperature)
    checker = ab_langchain.chat_model(llm, agent="checker", max_tokens=CHECK_MAX_TOKENS, temperature=0.0)
    system = WRITER_PROMPT.format(schema=schema_text(db))

    def write(state: SqlState) -> SqlState:
        with agentbolt.agent("writer"):
            reply = writer.invoke([("system", system), ("user", state["question"])])
        return {"sql": extract_sql(_text(reply.content)), "turns": state.get("turns", 0) + 1}

    def execute(state: SqlState) -> SqlState:
        sql = state.get("sql")
        with agentbolt.tool_call("execute_sql", {"sql": sql}) as call:
            if not sql:
                call.fail("the writer gave no SQL query")
                return {"result": "ERROR: no SQL query found in the reply"}
            try:
                rows = run_query(db, sql)
            except sqlite3.Error as exc:
                call.fail(str(exc))
                return {"result": f"ERROR: {exc}"}
            result = repr(rows)[:MAX_RESULT_CHARS]
            call.set_result(result)
            return {"result": result}

    def check(state: SqlState) -> SqlState:
        prompt = f"Question: {state['question']}\nQuery: {state.get('sql')}\nResult: {state['result']}"
        with agentbolt.agent("checker"):
            reply = checker.invoke([("system", CHECKER_PROMPT), ("user", prompt)])
        text = _text(reply.content)
        return {"feedback": text, "accepted": text.strip().upper().startswith("CORRECT")}

    def rewrite(state: SqlState) -> SqlState:
        prompt = (
            f"{state['question']}\n\nYour previous query:\n```sql\n{state.get('sql')}\n```\n"
            f"Result: {state['result']}\nReviewer: {state['feedback']}\nWrite a corrected query."
        )
        with agentbolt.agent("writer"):
            reply = writer.invoke([("system", system), ("user", prompt)])
        return {"sql": extract_sql(_text(reply.content)) or state.get("sql"), "turns": state.get("turns", 0) + 1}

    def after_check(state: SqlState) -> str:
        return END if state.get("accepted") or state.get("turns", 0) >= MAX_TURNS else "rewrite"

    graph = StateGraph(SqlState)
    graph.add_node("write", write)
    graph.add_node("execute", execute)
    graph.add_node("check", check)
    graph.add_node("rewrite", rewrite)
    graph.set_entry_point("write")
    graph.add_edge("write", "execute")
    graph.add_edge("execute", "check")
    graph.add_conditional_edges("check", after_check)
    graph.add_edge("rewrite", "execute")
    return graph.compile()


@agentbolt.rollout
def sql_agent(task: dict[str, Any], llm: agentbolt.LLM) -> float:
    """One rollout: answer ``task["question"]``; reward 1.0 when the final query's result set matches the gold's.

    ``task["temperature"]`` (optional, default 1.0) is the writer's sampling temperature (0 in validation).
    """
    db = open_database()
    try:
        graph = build_graph(llm, db, float(task.get("temperature", 1.0)))
        final = graph.invoke(
            {"question": task["question"], "turns": 0},
            config={"callbacks": ab_langchain.callbacks(), "recursion_limit": 4 * MAX_TURNS + 4},
        )
        return sql_reward(db, final.get("sql"), task["gold_sql"])
    finally:
        db.close()


def _text(content: Any) -> str:
    """A message's text (LangChain content may be a list of parts)."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content or [])

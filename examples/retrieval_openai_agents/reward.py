"""Reward of the retrieval agent: token F1 of the answer against the gold answer, plus a small format term."""

from __future__ import annotations

import re
from collections import Counter

_TOKEN = re.compile(r"[a-z0-9]+")
_ARTICLES = frozenset({"a", "an", "the"})
ANSWER_PREFIX = "Answer:"
FORMAT_WEIGHT = 0.1


def normalise(text: str) -> list[str]:
    """Lower-case tokens without punctuation or articles (SQuAD-style)."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _ARTICLES]


def f1(prediction: str, gold: str) -> float:
    """Token-level F1 between ``prediction`` and ``gold`` (0.0 when either is empty)."""
    pred, ref = normalise(prediction), normalise(gold)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def extract_answer(output: str | None) -> tuple[str, bool]:
    """(answer text, well formatted): the text after the last ``Answer:`` on a single short line."""
    if not output:
        return "", False
    if ANSWER_PREFIX not in output:
        return output.strip(), False
    answer = output.rsplit(ANSWER_PREFIX, 1)[1].strip()
    return answer, bool(answer) and "\n" not in answer and len(answer.split()) <= 12


def answer_reward(output: str | None, gold: str) -> dict[str, float]:
    """Reward dimensions: ``f1`` of the answer, ``format`` (1.0 for one short ``Answer:`` line), ``total``."""
    answer, well_formatted = extract_answer(output)
    score, fmt = f1(answer, gold), 1.0 if well_formatted else 0.0
    return {"total": (1 - FORMAT_WEIGHT) * score + FORMAT_WEIGHT * fmt, "f1": score, "format": fmt}

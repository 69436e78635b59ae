"""A local retriever over the example's small corpus: bag-of-words overlap, no index service, no network."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

CORPUS = Path(__file__).with_name("corpus.jsonl")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an and the of in on at to is was which who what how into for by with from".split())


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


@cache
def documents() -> tuple[dict[str, str], ...]:
    return tuple(json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip())


def search(query: str, k: int = 2) -> list[dict[str, str]]:
    """The ``k`` documents sharing the most words with ``query`` (none when nothing overlaps).

    Raises:
        ValueError: an empty query.
    """
    terms = set(words(query))
    if not terms:
        raise ValueError("the query has no searchable words")
    scored = [(len(terms & set(words(d["title"] + " " + d["text"]))), i) for i, d in enumerate(documents())]
    best = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))[:k]
    return [documents()[i] for _, i in best]

"""Between token ids and text: chat prompts, decoding, per-token strings and bytes, stop strings.

Decoding keeps special tokens and never "cleans up" spaces, so decoding is the exact inverse the
gateway relies on: the text returned for a choice is ``decode(response ids)`` minus a trailing
end-of-turn token, cut at a stop string when one occurred.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # sentencepiece byte-fallback tokens


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenText:
    """Text views of one tokenizer's ids, with per-id results cached (they are asked for per token).

    Args:
        tokenizer: a transformers tokenizer (fast or slow).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._fast = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: skips Python overhead
        self._bytes: dict[int, bytes] = {}
        self._special = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Prompt token ids of ``messages`` rendered by the tokenizer's chat template, ready for the reply."""
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return self.encode(text, special_tokens=False)

    def encode(self, text: str, *, special_tokens: bool) -> list[int]:
        """Token ids of ``text``; ``special_tokens`` adds the tokenizer's BOS/EOS as it is configured to."""
        if self._fast is not None:
            ids: list[int] = self._fast.encode(text, add_special_tokens=special_tokens).ids
            return ids
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=special_tokens)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens included, spaces untouched."""
        if self._fast is not None:
            text: str = self._fast.decode(list(ids), skip_special_tokens=False)
            return text
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a piece of a UTF-8 character for some tokens)."""
        cached = self._bytes.get(token_id)
        if cached is not None:
            return cached
        text = self.decode([token_id])
        raw = text.encode()
        if "\ufffd" in text and token_id not in self._special:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            alphabet = _byte_level_alphabet()
            match = _BYTE_TOKEN.match(piece or "")
            if match:
                raw = bytes([int(match.group(1), 16)])
            elif piece and all(c in alphabet for c in piece):
                raw = bytes(alphabet[c] for c in piece)
        if len(self._bytes) < 1_000_000:
            self._bytes[token_id] = raw
        return raw

    def token_str(self, token_id: int) -> str:
        """A token as a string for logprobs (invalid UTF-8 pieces shown with replacement characters)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """One text piece per token whose concatenation is exactly ``decode(ids)``.

        A token that ends inside a multi-byte character gets ``""``; its text comes with the token
        that completes the character (incremental detokenization over a short window).
        """
        full = self.decode(ids)
        out: list[str] = []
        prefix_at, read_at = 0, 0
        for i in range(1, len(ids) + 1):
            before = self.decode(ids[prefix_at:read_at]) if read_at > prefix_at else ""
            now = self.decode(ids[prefix_at:i])
            if len(now) > len(before) and not now.endswith("\ufffd"):
                out.append(now[len(before) :])
                prefix_at, read_at = read_at, i
            else:
                out.append("")
        if "".join(out) != full:  # a tokenizer whose decoding is not prefix-stable: keep the text exact
            out = [full] + [""] * (len(ids) - 1) if ids else []
        return out


@dataclass(frozen=True)
class ResponseText:
    """The text of one generated response, and how many of its tokens the text is made of.

    ``token_ids``: the response ids to record (cut after the token that completed a stop string);
    ``text``: what the client gets; ``text_tokens``: how many leading ids stand for ``text`` (all but a
    trailing end-of-turn token; with a stop string, the tokens wholly before it); ``stopped``: a stop
    string ended the response; ``end_of_turn``: the last id is an end-of-turn token (not part of the text).
    """

    token_ids: list[int]
    text: str
    text_tokens: int
    stopped: bool
    end_of_turn: bool = False


def response_text(text_of: TokenText, ids: list[int], end_ids: frozenset[int], stops: Sequence[str]) -> ResponseText:
    """Decode a response, honouring stop strings.

    Stop strings are matched in the decoded text. The response ends at the token that completes the
    earliest match: later tokens are dropped (as if the engine had stopped there: a sampled prefix is
    exactly what a stopped engine would have produced) and the text is cut before the stop string.
    """
    end_of_turn = bool(ids) and ids[-1] in end_ids
    body = ids[:-1] if end_of_turn else ids
    text = text_of.decode(body)
    if not stops:
        return ResponseText(ids, text, len(body), False, end_of_turn)
    hits = [(pos, s) for s in stops if (pos := text.find(s)) >= 0]
    if not hits:
        return ResponseText(ids, text, len(body), False, end_of_turn)
    pos, stop = min(hits)
    end = pos + len(stop)
    # Fewest tokens whose text holds the stop string (decoded length grows with the token count).
    lo, hi = 1, len(body)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(text_of.decode(body[:mid]).rstrip("\ufffd")) >= end:
            hi = mid
        else:
            lo = mid + 1
    kept = body[:lo]
    # Tokens wholly before the stop string: the ones the returned text is made of.
    whole = lo - 1
    while whole > 0 and len(text_of.decode(kept[:whole])) > pos:
        whole -= 1
    return ResponseText(kept, text[:pos], whole, True)

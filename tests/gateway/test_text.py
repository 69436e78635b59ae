"""Between token ids and text: per-token text pieces and stop strings (gateway/text.py)."""

from __future__ import annotations

from typing import Any

import pytest

from agentbolt.gateway.text import TokenText, response_text


def test_pieces_join_to_the_decoded_text_even_inside_multibyte_characters(tokenizer: Any) -> None:
    text = TokenText(tokenizer)
    ids = text.encode("Café 😀 naïve 東京!", special_tokens=False)
    pieces = text.pieces(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text.decode(ids)
    assert "" in pieces  # the emoji spans several byte-level tokens: all but the last carry no text
    assert b"".join(text.token_bytes(i) for i in ids).decode() == text.decode(ids)


def test_stop_string_ends_the_response_at_the_token_that_completed_it(tokenizer: Any) -> None:
    text = TokenText(tokenizer)
    ids = text.encode("One two. Three four.", special_tokens=False)
    cut = response_text(text, [*ids, tokenizer.eos_token_id], frozenset({tokenizer.eos_token_id}), ["Three", "four"])
    assert cut.stopped and cut.text == "One two. "
    assert text.decode(cut.token_ids).endswith("Three")
    assert text.decode(cut.token_ids[: cut.text_tokens]) == "One two."  # the tokens wholly before the stop
    plain = response_text(text, [*ids, tokenizer.eos_token_id], frozenset({tokenizer.eos_token_id}), [])
    assert (plain.text, plain.text_tokens, plain.end_of_turn) == ("One two. Three four.", len(ids), True)


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_token_pieces(tokenizer: Any, n: int) -> None:
    text = TokenText(tokenizer)
    ids = text.encode("Hi", special_tokens=False)[:n]
    assert "".join(text.pieces(ids)) == text.decode(ids)

"""Token fidelity: does an agent's next prompt hold, token for token, what the model saw and said before?

RL trains on each call's exact ids; a trainer that joins an attempt's turns into one sequence needs the
next prompt to start with the previous prompt and response ids. Re-rendering the conversation as text
can break that (BPE merges across the turn boundary, a template that rewrites earlier turns, an agent
that edits the history). The check, per attempt:

* The gateway remembers each attempt's recent calls: the request messages, the prompt ids, and per
  choice the assistant message it returned with the ids that message's text is made of.
* A new call *extends* a remembered call when its messages start with that call's messages followed by
  one of its returned assistant messages (content equal; tool calls equal by name and parsed
  arguments). The longest such call is the one compared.
* Then the new prompt ids must start with ``previous prompt ids + response ids[:text_tokens]``.
  ``text_tokens`` leaves out a trailing end-of-turn token, which the template writes back as its own
  turn terminator (so a template that ends turns with a different token still passes), and, when a
  stop string ended the reply, the tokens from the stop string on, which the returned text lacks.
* A call that extends nothing is not checked. A mismatch is flagged on the call's spans
  (``agentbolt.llm.fidelity_mismatch``) and counted, or refused with 409 in strict mode.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MessageKey = tuple[Any, ...]


def message_key(message: Mapping[str, Any]) -> MessageKey:
    """What makes two chat messages the same turn (developer counts as system; None content as "")."""
    role = message.get("role")
    calls = tuple(
        (c["function"]["name"], _canonical_arguments(c["function"].get("arguments", "")))
        for c in message.get("tool_calls") or ()
    )
    return (
        "system" if role == "developer" else role,
        message.get("content") or "",
        calls,
        message.get("tool_call_id"),
    )


def _canonical_arguments(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except ValueError:
        return arguments


@dataclass(frozen=True)
class Turn:
    """One remembered call: its messages (as keys), prompt ids, and per choice (reply key, reply ids)."""

    messages: tuple[MessageKey, ...]
    prompt_ids: Sequence[int]
    replies: tuple[tuple[MessageKey, Sequence[int]], ...]


class FidelityTracker:
    """Remembers recent calls per attempt and checks new calls against them.

    Args:
        max_attempts: attempts remembered (least recently used forgotten first).
        turns_per_attempt: calls remembered per attempt (several agents may share one attempt).
    """

    def __init__(self, max_attempts: int = 4096, turns_per_attempt: int = 16) -> None:
        self.max_attempts = max_attempts
        self.turns_per_attempt = turns_per_attempt
        self.checked = 0
        self.mismatches = 0
        self._turns: OrderedDict[str, list[Turn]] = OrderedDict()

    def check(self, attempt_id: str, messages: Sequence[MessageKey], prompt_ids: Sequence[int]) -> bool | None:
        """None when the call extends no remembered call; else whether its prompt ids mismatch."""
        turns = self._turns.get(attempt_id)
        if not turns:
            return None
        best: tuple[Turn, Sequence[int]] | None = None
        for turn in turns:
            n = len(turn.messages)
            if len(messages) <= n or (best is not None and n <= len(best[0].messages)):
                continue
            if tuple(messages[:n]) != turn.messages:
                continue
            for reply, ids in turn.replies:
                if reply == messages[n]:
                    best = (turn, ids)
                    break
        if best is None:
            return None
        turn, reply_ids = best
        expected_len = len(turn.prompt_ids) + len(reply_ids)
        mismatch = not (
            len(prompt_ids) >= expected_len
            and list(prompt_ids[: len(turn.prompt_ids)]) == list(turn.prompt_ids)
            and list(prompt_ids[len(turn.prompt_ids) : expected_len]) == list(reply_ids)
        )
        self.checked += 1
        self.mismatches += mismatch
        return mismatch

    def remember(self, attempt_id: str, turn: Turn) -> None:
        """Remember ``turn`` as the attempt's latest call."""
        turns = self._turns.get(attempt_id)
        if turns is None:
            turns = self._turns[attempt_id] = []
            if len(self._turns) > self.max_attempts:
                self._turns.popitem(last=False)
        else:
            self._turns.move_to_end(attempt_id)
        turns.append(turn)
        if len(turns) > self.turns_per_attempt:
            del turns[0]

    def forget(self, attempt_id: str) -> None:
        """Drop what is remembered of ``attempt_id`` (it finished)."""
        self._turns.pop(attempt_id, None)

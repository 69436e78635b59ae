"""agentbolt's samples as VeRL's ``DataProto``, checked with VeRL's own classes and its padding-free conversion."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("verl", reason="needs agentbolt[verl]: bash scripts/setup.sh dev,train,verl")
torch = pytest.importorskip("torch", reason="needs the train extra")

from verl import DataProto  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding  # noqa: E402

from agentbolt.errors import BadInput  # noqa: E402
from agentbolt.trainer.loss import token_weights  # noqa: E402
from agentbolt.trainer.verl.batch import loss_agg_mode, pad_rows, samples_to_dataproto  # noqa: E402
from agentbolt.types import Sample  # noqa: E402

PAD = 7


def sample(rollout: str, prompt: list[int], response: list[int], advantage: float, **extra: Any) -> Sample:
    return Sample(
        rollout_id=rollout,
        attempt_id=f"{rollout}-a",
        transition_index=extra.pop("transition_index", 0),
        prompt_token_ids=prompt,
        response_token_ids=response,
        old_logprobs=[-0.1 * (k + 1) for k in range(len(response))],
        advantage=advantage,
        return_value=advantage,
        **extra,
    )


@pytest.fixture
def samples() -> list[Sample]:
    return [
        sample("r1", [11, 12, 13], [21, 22], 1.5, group_id="g1", agent_name="planner"),
        # the same rollout's second call: its own row, its prompt extending the first call's
        sample("r1", [11, 12, 13, 21, 22, 14], [23], 1.5, group_id="g1", agent_name="planner", transition_index=1),
        sample("r2", [15], [24, 25, 26, 27], -0.5, group_id="g1", agent_name="coder"),
        sample("r3", [16, 17], [28, 29, 30], 0.25),  # no group (REINFORCE++): its own uid
    ]


def test_rows_are_left_padded_prompts_and_right_padded_responses(samples: list[Sample]) -> None:
    data = samples_to_dataproto(samples, PAD)
    assert isinstance(data, DataProto) and len(data) == 4
    b = data.batch
    assert b["prompts"].shape == (4, 6) and b["responses"].shape == (4, 4)
    assert b["input_ids"].shape == b["attention_mask"].shape == b["position_ids"].shape == (4, 10)
    for key in ("response_mask", "rollout_log_probs", "old_log_probs", "advantages"):
        assert b[key].shape == (4, 4), key
    assert b["prompts"][0].tolist() == [PAD, PAD, PAD, 11, 12, 13]
    assert b["responses"][0].tolist() == [21, 22, PAD, PAD]
    assert b["input_ids"][2].tolist() == [PAD] * 5 + [15, 24, 25, 26, 27]
    assert b["attention_mask"][0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    assert b["response_mask"][0].tolist() == [1, 1, 0, 0]
    assert b["response_mask"][2].tolist() == [1, 1, 1, 1]
    # positions count real tokens only: 0 under the left padding, then 0, 1, 2, ... from the first prompt token
    assert b["position_ids"][0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 4, 4]
    assert b["position_ids"][2].tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
    # the response the attention mask marks is exactly the response tokens, each at the index it had
    for i, s in enumerate(samples):
        n = len(s.response_token_ids)
        assert b["responses"][i][b["response_mask"][i].bool()].tolist() == s.response_token_ids
        assert b["attention_mask"][i, 6:].sum() == n


def test_logprobs_and_advantages_sit_on_response_tokens_only(samples: list[Sample]) -> None:
    data = samples_to_dataproto(samples, PAD)
    b = data.batch
    for i, s in enumerate(samples):
        n = len(s.response_token_ids)
        assert b["rollout_log_probs"][i, :n].tolist() == pytest.approx(s.old_logprobs)
        assert b["rollout_log_probs"][i, n:].abs().sum() == 0
        # agentbolt's advantage (one per transition) on every response token, nothing on padding
        assert b["advantages"][i, :n].tolist() == [s.advantage] * n
        assert b["advantages"][i, n:].abs().sum() == 0
    assert torch.equal(b["old_log_probs"], b["rollout_log_probs"])  # bypass: behaviour logprobs are pi_old
    assert "old_log_probs" not in samples_to_dataproto(samples, PAD, recompute_old_logprobs=True).batch.keys()
    # nothing VeRL's compute_advantage reads is there: advantages cannot be recomputed from this batch
    assert not {"token_level_rewards", "token_level_scores", "values", "returns"} & set(b.keys())


def test_groups_rollouts_and_multi_turn_rows_are_named(samples: list[Sample]) -> None:
    data = samples_to_dataproto(samples, PAD)
    nt = data.non_tensor_batch
    assert nt["uid"].tolist() == ["g1", "g1", "g1", "rollout:r3"]
    assert nt["rollout_id"].tolist() == ["r1", "r1", "r2", "r3"]
    assert nt["transition_index"].tolist() == [0, 1, 0, 0]
    assert nt["agent_name"].tolist() == ["planner", "planner", "coder", None]
    assert data.meta_info["temperature"] == 1.0
    assert data.meta_info["global_token_num"] == [5, 7, 5, 5]


def test_token_ids_round_trip_through_verls_padding_free_layout(samples: list[Sample]) -> None:
    """DataProto -> TensorDict -> VeRL's no-padding layout gives back every row's prompt + response ids, and
    VeRL's re-padding puts per-token values back on the response tokens they belong to."""
    data = samples_to_dataproto(samples, PAD)
    td = left_right_2_no_padding(data.to_tensordict())
    ids, positions = td["input_ids"], td["position_ids"]
    assert ids.is_nested
    for i, s in enumerate(samples):
        assert ids[i].tolist() == [*s.prompt_token_ids, *s.response_token_ids]
        assert positions[i].tolist() == list(range(len(s.prompt_token_ids) + len(s.response_token_ids)))
    # a model output over the packed tokens (token t's value at position t-1, as logits predict the next token)
    packed = ids.values().float()
    shifted = torch.roll(packed, shifts=-1)
    responses = no_padding_2_padding(shifted, td)  # (B, R)
    mask = data.batch["response_mask"]
    assert torch.equal(responses * mask, data.batch["responses"].float() * mask)


def test_mixed_temperatures_go_per_row(samples: list[Sample]) -> None:
    mixed = [s.model_copy(update={"temperature": t}) for s, t in zip(samples, [1.0, 0.7, 0.7, 1.2], strict=True)]
    data = samples_to_dataproto(mixed, PAD)
    assert "temperature" not in data.meta_info
    assert data.batch["temperature"].tolist() == pytest.approx([1.0, 0.7, 0.7, 1.2])


def test_token_weights_are_agentbolts(samples: list[Sample]) -> None:
    data = samples_to_dataproto(samples, PAD, aggregation="rollout_mean")
    weights = data.batch["token_weights"]
    expected = token_weights(samples, "rollout_mean")
    for i, w in enumerate(expected):
        assert weights[i, : len(w)].tolist() == pytest.approx(w)
        assert weights[i, len(w) :].abs().sum() == 0
    assert float(weights.sum()) == pytest.approx(1.0)
    # every rollout weighs a third, whatever its number of calls and tokens
    per_rollout: dict[str, float] = {}
    for s, row in zip(samples, weights, strict=True):
        per_rollout[s.rollout_id] = per_rollout.get(s.rollout_id, 0.0) + float(row.sum())
    assert per_rollout == pytest.approx({"r1": 1 / 3, "r2": 1 / 3, "r3": 1 / 3})


def test_padding_rows_are_masked_copies(samples: list[Sample]) -> None:
    data, added = pad_rows(samples_to_dataproto(samples, PAD, aggregation="token_mean"), 3)
    assert (len(data), added) == (6, 2)
    b = data.batch
    assert b["response_mask"][4:].sum() == 0 and b["advantages"][4:].abs().sum() == 0
    assert b["token_weights"][4:].abs().sum() == 0
    assert torch.equal(b["input_ids"][4:], b["input_ids"][:2])  # real tokens, so the forward stays well-formed
    same, none = pad_rows(samples_to_dataproto(samples, PAD), 2)
    assert (len(same), none) == (4, 0)


def test_loss_aggregations_map_to_verls_where_it_has_one() -> None:
    assert loss_agg_mode("token_mean") == "token-mean"
    assert loss_agg_mode("seq_mean") == "seq-mean-token-mean"
    assert loss_agg_mode("rollout_mean") is None
    with pytest.raises(BadInput):
        loss_agg_mode("sum")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"response_token_ids": []}, "empty prompt or response"),
        ({"prompt_token_ids": []}, "empty prompt or response"),
        ({"old_logprobs": [-0.1]}, "old_logprobs for 2 response tokens"),
        ({"advantage": float("nan")}, "non-finite"),
    ],
)
def test_unusable_samples_are_refused(samples: list[Sample], change: dict[str, Any], words: str) -> None:
    bad = [samples[0].model_copy(update=change), *samples[1:]]
    with pytest.raises(BadInput, match=words):
        samples_to_dataproto(bad, PAD)
    with pytest.raises(BadInput, match="empty"):
        samples_to_dataproto([], PAD)

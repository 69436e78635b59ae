"""VeRL's own actor update (``ActorRolloutRefWorker.update_actor``: its FSDP2 engine, micro-batching, loss and AdamW)
run on the CPU on the tiny model, from batches agentbolt built, against agentbolt's own objective."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("verl", reason="needs agentbolt[verl]: bash scripts/setup.sh dev,train,verl")
torch = pytest.importorskip("torch", reason="needs the train extra")

from agentbolt.trainer.verl.batch import (  # noqa: E402
    logprob_tensordict,
    pad_rows,
    response_logprobs,
    samples_to_dataproto,
    update_tensordict,
)
from agentbolt.types import LossConfig, Sample  # noqa: E402
from tests.trainer.verl.helpers import load_weights, make_samples, reference_update, start_actor  # noqa: E402
from tests.trainer.verl.helpers import response_logprobs as plain_logprobs  # noqa: E402

pytestmark = pytest.mark.usefixtures("cpu_process")

# (group, rollout, prompt length, response length, advantage): two GRPO groups; r1 and r3 make two calls each
ROWS = [
    ("g1", "r1", 6, 4, 1.0),
    ("g1", "r1", 3, 5, 1.0),
    ("g1", "r2", 9, 3, -1.0),
    ("g2", "r3", 4, 6, 0.5),
    ("g2", "r3", 2, 2, 0.5),
    ("g2", "r4", 7, 4, -0.5),
]
LR = 1e-3


def verl_update(
    worker: Any, samples: list[Sample], loss: LossConfig, *, mini_batches: int = 1, ref: Any = None
) -> dict[str, Any]:
    """One ``update_actor`` call on the batch agentbolt's converter builds (with ``ref`` as ``ref_log_prob``, (B, R));
    VeRL's metrics (lists per mini-batch)."""
    from verl.utils import tensordict_utils as tu

    weights = loss.aggregation if loss.aggregation == "rollout_mean" else None
    data = samples_to_dataproto(samples, 0, aggregation=weights)
    if ref is not None:
        data.batch["ref_log_prob"] = ref
    data, _ = pad_rows(data, mini_batches)
    td = update_tensordict(data, rows=len(samples), mini_batches=mini_batches, epochs=1, seed=0, shuffle=False)
    return dict(tu.get(worker.update_actor(td), "metrics"))


def trained_model(worker: Any, like: Any) -> Any:
    """The actor's weights as VeRL exports them for its rollout weight sync (``get_per_tensor_param``)."""
    named, _peft = worker.actor.engine.get_per_tensor_param()
    return load_weights(like, named)


def sequence_logprob(model: Any, sample: Sample) -> float:
    return sum(plain_logprobs(model, sample.prompt_token_ids, sample.response_token_ids, sample.temperature))


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "rollout_mean"])
def test_verl_update_matches_agentbolts_objective(tiny: tuple[Any, Any, Any], aggregation: str) -> None:
    _, model, model_dir = tiny
    loss = LossConfig(aggregation=aggregation)  # type: ignore[arg-type]
    samples = make_samples(model, ROWS)
    worker = start_actor(model_dir, loss, lr=LR)

    metrics = verl_update(worker, samples, loss)
    reference, reference_loss = reference_update(model, samples, loss, lr=LR)
    trained = trained_model(worker, model)

    # on-policy, so ratio 1: the loss is -sum(weight * advantage) under either implementation
    assert metrics["loss"][0] == pytest.approx(reference_loss, abs=1e-5)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in metrics["grad_norm"])
    changed = 0
    for sample in samples:
        before = sequence_logprob(model, sample)
        after_verl, after_ref = sequence_logprob(trained, sample), sequence_logprob(reference, sample)
        # the direction: a positive advantage makes its response likelier, a negative one less likely
        assert (after_verl - before) * sample.advantage > 0, (sample.rollout_id, before, after_verl)
        # and the size: VeRL's step is agentbolt's step
        assert after_verl == pytest.approx(after_ref, abs=1e-3)  # changes are 1-15 nats
        changed += abs(after_verl - before) > 1e-3
    assert changed == len(samples)


def test_verl_logprobs_are_agentbolts_at_each_rows_temperature(tiny: tuple[Any, Any, Any]) -> None:
    """VeRL's ``compute_log_prob`` scores each row at the temperature it was sampled at, as the gateway's logprobs
    are: one shared temperature (meta_info) and mixed ones (a per-row tensor)."""
    _, model, model_dir = tiny
    worker = start_actor(model_dir, LossConfig())
    for temperatures in ([0.7] * len(ROWS), [1.0, 0.5, 1.3, 0.7, 1.0, 0.9]):
        samples = make_samples(model, ROWS, temperatures=temperatures)
        data = samples_to_dataproto(samples, 0)
        td = logprob_tensordict(data)
        logprobs = response_logprobs(worker.compute_log_prob(td), td)  # (B, R)
        for i, sample in enumerate(samples):
            n = len(sample.response_token_ids)
            assert logprobs[i, :n].tolist() == pytest.approx(sample.old_logprobs, abs=1e-4)
            assert logprobs[i, n:].abs().sum() == 0


def test_padding_rows_carry_no_loss(tiny: tuple[Any, Any, Any]) -> None:
    """Rows added to fill whole mini-batches change nothing: the same update as without them."""
    _, model, model_dir = tiny
    loss = LossConfig(aggregation="token_mean")
    samples = make_samples(model, ROWS[:5])
    padded_worker = start_actor(model_dir, loss, lr=LR)
    metrics = verl_update(padded_worker, samples, loss, mini_batches=2)  # 5 rows -> 6: one copy, masked
    assert len(metrics["grad_norm"]) == 2  # two optimizer steps
    reference, _ = reference_update(model, samples[:3], loss, lr=LR)  # mini-batch 1: rows 0-2 alone
    first = start_actor(model_dir, loss, lr=LR)
    verl_update(first, samples[:3], loss)
    assert sequence_logprob(trained_model(first, model), samples[0]) == pytest.approx(
        sequence_logprob(reference, samples[0]), abs=2e-3
    )


@pytest.mark.parametrize("aggregation", ["token_mean", "rollout_mean"])
def test_kl_to_the_reference_is_agentbolts_k3(tiny: tuple[Any, Any, Any], aggregation: str) -> None:
    """With a KL term, VeRL's update (its ``low_var_kl`` in ``ppo_loss``, or agentbolt's loss for rollout_mean) reads
    the batch's ``ref_log_prob`` and steps as agentbolt's k3 penalty does. The reference log-probs come from a
    second model here: VeRL's reference worker cannot run on the CPU (see agentbolt.trainer.verl.trainer)."""
    import copy

    _, model, model_dir = tiny
    loss = LossConfig(aggregation=aggregation, kl_coef=0.5)  # type: ignore[arg-type]
    samples = make_samples(model, ROWS)
    # a reference near the policy: VeRL's low_var_kl clamps each token's k3 at 10, agentbolt's does not, so the two
    # agree only below that (two unrelated random models differ by more)
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    ref = [plain_logprobs(other, s.prompt_token_ids, s.response_token_ids) for s in samples]
    ref_tensor = torch.zeros((len(samples), max(len(r) for r in ref)))
    for i, r in enumerate(ref):
        ref_tensor[i, : len(r)] = torch.tensor(r)
    worker = start_actor(model_dir, loss, lr=LR)

    metrics = verl_update(worker, samples, loss, ref=ref_tensor)
    reference, reference_loss = reference_update(model, samples, loss, lr=LR, ref_logprobs=ref)
    trained = trained_model(worker, model)

    assert metrics["loss"][0] == pytest.approx(reference_loss, abs=1e-4)
    kl = metrics.get("kl_loss", metrics.get("actor/kl_ref"))
    assert kl is not None and kl[0] > 0.01, kl
    for sample in samples:
        assert sequence_logprob(trained, sample) == pytest.approx(sequence_logprob(reference, sample), abs=1e-3)

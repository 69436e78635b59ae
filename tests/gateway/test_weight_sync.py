"""Trained weights into vLLM replicas over vLLM's HTTP API, and the version stamped only once they serve them.

Against :class:`tests.gateway.fake_vllm.FakeVllm`, a local server with vLLM 0.33's weight-update routes that
really loads what it is pointed at: the test compares the replica's tensors with the trainer's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the trainer needs the train extra: bash scripts/setup.sh dev,train")

from agentbolt.engine import tiny_random_model  # noqa: E402
from agentbolt.errors import BadInput  # noqa: E402
from agentbolt.gateway.upstream import UpstreamBackend  # noqa: E402
from agentbolt.gateway.weight_sync import VllmControl, VllmWeightSync, WeightSyncError  # noqa: E402
from agentbolt.trainer.trainer import Trainer  # noqa: E402
from agentbolt.types import GenerationRequest, LoraSettings, LossConfig, TrainConfig, TrainerConfig  # noqa: E402
from tests.gateway.fake_vllm import FakeVllm  # noqa: E402
from tests.trainer.test_trainer import ADVANTAGES, SHAPES, make_samples  # noqa: E402


@pytest.fixture
def replicas() -> Any:
    with FakeVllm(name="a") as a, FakeVllm(name="b") as b:
        yield [a, b]


def call(backend: UpstreamBackend, **kwargs: Any) -> Any:
    async def run() -> Any:
        try:
            return await backend.generate(GenerationRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=4, **kwargs))
        finally:
            await backend.aclose()

    return asyncio.run(run())


def test_disk_sync_reloads_every_replica_between_pause_and_resume_then_stamps_the_version(
    tokenizer: Any, replicas: list[FakeVllm], tmp_path: Path
) -> None:
    backend = UpstreamBackend([r.url for r in replicas], tokenizer, "policy", upstream_model="base")
    sync = VllmWeightSync(backend, "disk", tmp_path / "weights")
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, TrainerConfig(lr=1e-2), LossConfig())
    trainer.serve_with(sync)
    assert [r.control for r in replicas] == [[], []]  # full weights: the replicas started from the same model
    samples = make_samples(trainer.model, len(tokenizer), SHAPES, ADVANTAGES)

    for step in (1, 2, 3):
        trainer.step(samples)
        assert backend.model_version == step == trainer.model_version

    expected = trainer.engine_state_dict()
    for replica in replicas:
        routes = [(route, query) for route, query, _ in replica.control]
        assert routes[:4] == [
            ("/pause", "mode=wait"),
            ("/collective_rpc", ""),
            ("/update_weight_version", ""),
            ("/resume", ""),
        ]
        assert not replica.paused
        rpc = replica.control[1][2]
        assert rpc["method"] == "reload_weights" and rpc["kwargs"]["weights_path"].endswith("v000001")
        assert replica.weight_version == "3"
        assert set(replica.weights) <= set(expected) and "model.embed_tokens.weight" in replica.weights
        for name, tensor in replica.weights.items():  # what the replica loaded is the trainer's newest weights
            assert torch.equal(tensor, expected[name]), name
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["v000002", "v000003"]  # older ones pruned
    assert call(backend, temperature=1.0).model_version == 3
    sync.close()


def test_lora_sync_loads_the_starting_adapter_then_each_new_one_in_place(
    tokenizer: Any, replicas: list[FakeVllm], tmp_path: Path
) -> None:
    from peft import get_peft_model_state_dict

    backend = UpstreamBackend([replicas[0].url], tokenizer, "policy", upstream_model="agentbolt-policy")
    sync = VllmWeightSync(backend, "lora", tmp_path, lora_name="agentbolt-policy")
    config = TrainerConfig(lr=5e-2, lora=LoraSettings(r=4, alpha=8))
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, config, LossConfig())
    trainer.serve_with(sync)  # the replica has no adapter yet: version 0's goes now
    replica = replicas[0]
    assert replica.adapter_paths["agentbolt-policy"].endswith("v000000")

    trainer.step(make_samples(trainer.model, len(tokenizer), SHAPES, ADVANTAGES))

    loads = [body for route, _, body in replica.control if route == "/v1/load_lora_adapter"]
    assert [b["load_inplace"] for b in loads] == [True, True]
    one_update = ["/pause", "/v1/load_lora_adapter", "/update_weight_version", "/resume"]
    assert [route for route, _, _ in replica.control] == one_update * 2
    assert replica.adapter_paths["agentbolt-policy"].endswith("v000001")
    ours = get_peft_model_state_dict(trainer.model)
    theirs = replica.adapters["agentbolt-policy"]
    assert set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k].cpu()) for k in ours)
    assert backend.model_version == 1
    assert replica.requests == []  # no completion was sent while loading
    assert call(backend, temperature=1.0).model_version == 1
    assert replica.requests[-1]["model"] == "agentbolt-policy"  # the gateway asks for the adapter
    sync.close()


def test_a_replica_that_fails_the_reload_leaves_the_old_version_stamped_and_is_resumed(
    tokenizer: Any, replicas: list[FakeVllm], tmp_path: Path
) -> None:
    replica = replicas[0]
    replica.refuse = "/collective_rpc"
    backend = UpstreamBackend([replica.url], tokenizer, "policy")
    sync = VllmWeightSync(backend, "disk", tmp_path)
    trainer = Trainer(tiny_random_model(tokenizer), tokenizer, TrainerConfig(lr=1e-2), LossConfig())
    trainer.serve_with(sync)

    with pytest.raises(WeightSyncError, match="collective_rpc answered 400"):
        trainer.step(make_samples(trainer.model, len(tokenizer), SHAPES, ADVANTAGES))

    assert backend.model_version == 0 and trainer.model_version == 0
    assert not replica.paused and replica.control[-1][0] == "/resume"
    sync.close()


def test_lora_sync_needs_the_backend_to_ask_for_the_adapter(tokenizer: Any, tmp_path: Path) -> None:
    backend = UpstreamBackend(["http://127.0.0.1:9/v1"], tokenizer, "policy", upstream_model="base")
    with pytest.raises(BadInput, match="adapter's name"):
        VllmWeightSync(backend, "lora", tmp_path, lora_name="agentbolt-policy")


def test_the_nccl_control_plane_speaks_vllms_routes_and_bodies(replicas: list[FakeVllm], tmp_path: Path) -> None:
    replica = replicas[0]
    replica.world_size = 4
    control = VllmControl(replica.url)
    init = {"master_address": "10.0.0.1", "master_port": 29600, "rank_offset": 1, "world_size": 5}
    update = {"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2, 3]]}
    assert control.world_size() == 4
    control.init_weight_transfer_engine(init)
    control.start_weight_update()
    control.update_weights(update)
    control.finish_weight_update("7")
    control.close()
    assert [(route, body) for route, _, body in replica.control[1:]] == [
        ("/init_weight_transfer_engine", {"init_info": init}),
        ("/start_weight_update", None),
        ("/update_weights", {"update_info": update}),
        ("/finish_weight_update", {"weight_version": "7"}),
    ]


def test_nccl_sync_says_what_it_needs_where_vllm_is_not_installed(
    tokenizer: Any, replicas: list[FakeVllm], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here: the NCCL path needs a GPU, not exercised by the suite")
    except ImportError:
        pass
    backend = UpstreamBackend([replicas[0].url], tokenizer, "policy")
    sync = VllmWeightSync(backend, "nccl", tmp_path)
    with pytest.raises(BadInput, match=r"needs vllm >= 0\.28"):
        sync.attach_nccl(tiny_random_model(tokenizer), "127.0.0.1", 29600)
    sync.close()


@pytest.mark.parametrize(
    ("mode", "temperature", "top_p", "usable"),
    [
        ("raw", 1.0, 1.0, True),
        ("raw", 1.0, 0.9, True),  # raw is log_softmax(logits): the pre-truncation distribution at T=1
        ("raw", 0.7, 1.0, False),
        ("raw", 0.0, 1.0, True),
        ("processed", 0.7, 1.0, True),
        ("processed", 0.7, 0.9, False),  # processed is after top-p masking: not the trainer's distribution
        ("processed", 0.0, 1.0, False),
    ],
)
def test_logprobs_are_passed_on_only_where_the_replicas_mode_makes_them_right(
    tokenizer: Any, replicas: list[FakeVllm], mode: Any, temperature: float, top_p: float, usable: bool
) -> None:
    backend = UpstreamBackend([replicas[0].url], tokenizer, "policy", logprobs_mode=mode)
    result = call(backend, temperature=temperature, top_p=top_p)
    assert bool(result.logprobs) == usable
    assert backend.stats()["unusable_logprobs"] == (0 if usable else 1)


def test_a_vllm_engine_config_needs_its_replicas_and_lora_needs_an_adapter() -> None:
    base = {"agent": "m:f", "train_tasks": {"file": "t.jsonl"}}
    with pytest.raises(ValueError, match=r"needs engine\.vllm"):
        TrainConfig.model_validate({**base, "engine": {"backend": "vllm"}})
    with pytest.raises(ValueError, match=r"needs trainer\.lora"):
        TrainConfig.model_validate(
            {**base, "engine": {"backend": "vllm", "vllm": {"urls": ["http://h:8000/v1"], "weight_sync": "lora"}}}
        )
    with pytest.raises(ValueError, match=r"nccl sends full weights"):  # it would send the PEFT model's names
        TrainConfig.model_validate(
            {
                **base,
                "engine": {"backend": "vllm", "vllm": {"urls": ["http://h:8000/v1"], "weight_sync": "nccl"}},
                "trainer": {"lora": {}},
            }
        )
    ok = TrainConfig.model_validate({**base, "engine": {"backend": "vllm", "vllm": {"urls": ["http://h:8000/v1"]}}})
    assert ok.engine.vllm is not None and ok.engine.vllm.weight_sync == "disk"


def test_a_train_config_on_vllm_builds_the_trainer_its_replicas_and_their_weight_sync(
    replicas: list[FakeVllm], tmp_path: Path
) -> None:
    from agentbolt.train.policy import build_policy

    config = TrainConfig.model_validate(
        {
            "agent": "m:f",
            "model": "tiny",
            "train_tasks": {"file": "t.jsonl"},
            "trainer": {"lora": {"r": 4, "alpha": 8}},
            "engine": {"backend": "vllm", "vllm": {"urls": [r.url for r in replicas], "weight_sync": "lora"}},
        }
    )
    policy = build_policy(config, tmp_path)
    try:
        backend: Any = policy.backend
        assert backend.upstream_model == "agentbolt-policy" and backend.urls == [r.url for r in replicas]
        assert backend.logprobs_mode == "processed"
        assert all(r.adapter_paths["agentbolt-policy"].startswith(str(tmp_path / "weights")) for r in replicas)
        assert "2 vLLM replica(s), weights by lora" in policy.description
    finally:
        policy.close()


def test_agentbolt_serve_tells_the_upstream_backend_its_logprobs_mode(tokenizer: Any) -> None:
    from agentbolt.gateway.backend import backend_from_config
    from agentbolt.types import ServerConfig

    config = ServerConfig(upstream_urls=["http://127.0.0.1:9/v1"], model="demo", upstream_logprobs_mode="processed")
    backend: Any = backend_from_config(config)
    assert backend.logprobs_mode == "processed"
    assert backend_from_config(config.model_copy(update={"upstream_logprobs_mode": "raw"})).logprobs_mode == "raw"  # type: ignore[union-attr]


def test_a_call_answered_503_while_the_replicas_are_paused_is_sent_again_and_stamped_with_the_new_version(
    tokenizer: Any, replicas: list[FakeVllm]
) -> None:
    replica = replicas[0]
    backend = UpstreamBackend([replica.url], tokenizer, "policy")
    replica.paused = True  # answers 503, as vLLM does between /pause and /resume

    async def run() -> Any:
        try:
            call = asyncio.create_task(
                backend.generate(GenerationRequest(prompt_token_ids=[1, 2, 3], max_new_tokens=4, temperature=1.0))
            )
            await asyncio.sleep(0.3)
            assert not call.done()
            backend.set_model_version(4)  # the weight sync: new weights in, version stamped, then the resume
            replica.paused = False
            return await call
        finally:
            await backend.aclose()

    result = asyncio.run(run())
    assert result.model_version == 4
    assert backend.stats()["busy_retries"] >= 2
    assert len(replica.requests) == 1  # the 503s are not kept as requests by the fake; one real completion


def test_a_replica_busy_for_longer_than_the_wait_fails_the_call(tokenizer: Any, replicas: list[FakeVllm]) -> None:
    from agentbolt.gateway.upstream import UpstreamError

    replicas[0].paused = True
    backend = UpstreamBackend([replicas[0].url], tokenizer, "policy", busy_wait_s=0.2)
    with pytest.raises(UpstreamError, match="HTTP 503"):
        call(backend, temperature=1.0)

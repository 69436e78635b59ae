"""A CPU platform for VeRL 0.9, so its real actor update (FSDP2 over gloo) runs on a machine without a GPU.

For tests and CPU smoke runs only: training a real model belongs on VeRL's CUDA platform. VeRL 0.9 ships platforms for
NVIDIA, Ascend and ROCm and, finding none, falls back to ``cuda`` (``verl/plugin/platform/platform_manager.py``,
``_detect_platform_name``), so every tensor would be sent to a GPU that is not there. VeRL's documented extension
point for other hardware is a platform class registered with ``PlatformRegistry.register`` and chosen with
``VERL_PLATFORM``; this module is that class, loaded in every Ray worker through ``VERL_USE_EXTERNAL_MODULES``
(``verl/__init__.py`` imports the modules it names). :data:`CPU_ENV` is the whole switch set:

* ``VERL_PLATFORM=cpu``: this platform (device ``cpu``, collective backend ``gloo``, Ray resource ``CPU``);
* ``VERL_ENGINE_DEVICE=cuda``: VeRL's FSDP engine is registered for ``cuda``/``npu`` only
  (``verl/workers/engine/fsdp/transformer_impl.py``, ``@EngineRegistry.register``); this override of the engine
  lookup (``EngineRegistry.get_engine_cls``) picks it while every tensor stays on the CPU;
* ``VERL_USE_EXTERNAL_MODULES``: this module, so each worker process registers the platform before VeRL asks for one.

Two more switches are VeRL config, set by :func:`agentbolt.trainer.verl.config.cpu_overrides`: sdpa attention
(VeRL's model config defaults to ``flash_attention_2``) and ``use_remove_padding: false`` (its packed path needs
flash-attn's varlen kernels). One step has no switch: VeRL's workers open their process group with the backend string
``cpu:gloo,{device}:{nccl backend}`` (``verl/utils/distributed.py``, ``initialize_global_process_group_ray``), which
on this platform reads ``cpu:gloo,cpu:gloo`` and torch refuses it ("Duplicate device type cpu"); VeRL skips the call
when a group is already open, so :func:`open_process_group` opens a plain gloo group first
(:class:`agentbolt.trainer.verl.workers.GlooActorRolloutRefWorker` calls it in each worker).
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM = "cpu"
CPU_ENV: dict[str, str] = {
    "VERL_PLATFORM": PLATFORM,
    "VERL_ENGINE_DEVICE": "cuda",
    "VERL_USE_EXTERNAL_MODULES": __name__,
}
"""Environment of every process (driver and Ray workers) that runs VeRL on this platform."""


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _device_module() -> types.ModuleType:
    """``torch.cpu`` plus what VeRL asks of a device module that ``torch.cpu`` lacks (memory figures read 0)."""
    module = types.ModuleType("agentbolt_verl_cpu_device")
    for name in ("Event", "Stream", "StreamContext", "current_stream", "device_count", "is_available", "stream"):
        setattr(module, name, getattr(torch.cpu, name))
    module.current_device = lambda: "cpu"  # type: ignore[attr-defined]  # a device torch accepts in .to()
    module.set_device = _nothing  # type: ignore[attr-defined]
    module.synchronize = _nothing  # type: ignore[attr-defined]
    module.empty_cache = _nothing  # type: ignore[attr-defined]
    module.ipc_collect = _nothing  # type: ignore[attr-defined]
    module.set_per_process_memory_fraction = _nothing  # type: ignore[attr-defined]
    module.reset_peak_memory_stats = _nothing  # type: ignore[attr-defined]
    for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
        setattr(module, name, _zero)
    module.mem_get_info = lambda *args, **kwargs: (0, 0)  # type: ignore[attr-defined]
    module.get_rng_state = torch.get_rng_state  # type: ignore[attr-defined]
    module.set_rng_state = torch.set_rng_state  # type: ignore[attr-defined]
    module.manual_seed = torch.manual_seed  # type: ignore[attr-defined]
    module.manual_seed_all = torch.manual_seed  # type: ignore[attr-defined]
    module.get_device_name = lambda *args, **kwargs: "CPU"  # type: ignore[attr-defined]  # VeRL's FLOPs table key
    return module


_DEVICE = _device_module()


@PlatformRegistry.register(platform=PLATFORM)
class CPUPlatform(PlatformBase):
    """VeRL's platform interface on the CPU: gloo collectives, Ray ``CPU`` resources, no IPC, no profiler."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return _DEVICE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return True

    def current_device(self) -> Any:
        return "cpu"  # VeRL passes this to Module.to(device=...): an index would mean an accelerator

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # read by VeRL's worker set-up; nothing is visible, nothing is set

    @contextlib.contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_cpus": num_gpus}

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def open_process_group() -> None:
    """Open this process's gloo process group from the ``RANK``/``WORLD_SIZE``/``MASTER_*`` variables VeRL's worker
    group sets, unless one is open (see the module docstring: VeRL's own call cannot open one on the CPU)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(
            backend="gloo", rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1))
        )

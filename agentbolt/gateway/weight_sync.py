"""Trained weights into running ``vllm serve`` replicas, through vLLM's own HTTP API; then the new version stamped.

:class:`VllmWeightSync` is the embedded trainer's weight sink (``engine.backend: vllm`` in a train config) for
the :class:`~agentbolt.gateway.upstream.UpstreamBackend` that forwards the gateway's calls to the replicas.
After each update it pauses every replica (``POST /pause?mode=wait``: requests in flight finish on the old
weights; new ones are answered 503, which the backend sends again), loads the new weights into each, calls
the backend's ``set_model_version`` and only then resumes them (``POST /resume``), so every call is stamped
with the version of the weights that answered it. The pause routes need ``VLLM_SERVER_DEV_MODE=1`` (vLLM
>= 0.16). The weights travel one of three ways, each one vLLM documents (the routes are vLLM's; the
versions the first release that has them):

- ``lora`` — the trainer writes its PEFT adapter to ``weights_dir/v{version}`` and each replica loads it in
  place under one adapter name: ``POST /v1/load_lora_adapter {"lora_name", "lora_path", "load_inplace": true}``
  (vLLM >= 0.15; the server runs with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``). The gateway
  asks the replicas for that adapter name (``"model": lora_name``). Each version goes to a new directory:
  vLLM warns that reloading changed weights from the same path keeps stale prefix-cache blocks.
- ``disk`` — full weights as safetensors in ``weights_dir/v{version}`` (a filesystem the replicas see), then on
  each replica ``POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": ...}}``
  (vLLM >= 0.16).
- ``nccl`` — vLLM's native weight transfer (vLLM >= 0.28 on both sides; the server runs with
  ``--weight-transfer-config '{"backend": "nccl"}'`` and ``VLLM_SERVER_DEV_MODE=1``): vLLM's own trainer-side
  engine (``WeightTransferTrainerFactory.trainer_init`` with a ``ModuleSource`` over the trainer's model)
  broadcasts the tensors GPU to GPU, driving the replica through :class:`VllmControl`, which speaks the
  control-plane routes ``/init_weight_transfer_engine``, ``/start_weight_update``, ``/update_weights``,
  ``/finish_weight_update``. Needs ``vllm`` installed beside the trainer and CUDA; one replica per sync group.

The routes and their bodies follow vLLM 0.33's sources (``vllm/entrypoints/rl/online/api_router.py``,
``vllm/entrypoints/serve/lora/protocol.py``). Supported: vLLM 0.16 to 0.33 for ``disk`` and ``lora`` (the
pause routes), 0.28 to 0.33 for ``nccl``. Each replica is also told the version (``POST
/update_weight_version``, vLLM >= 0.27; skipped where the route is missing).
"""

from __future__ import annotations

import concurrent.futures
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx

from agentbolt.errors import AgentboltError, BadInput
from agentbolt.gateway.upstream import UpstreamBackend

log = logging.getLogger(__name__)

SyncMethod = Literal["lora", "disk", "nccl"]
KEEP_VERSIONS = 2  # weight directories kept on disk: the one served and the one before (a replica may lag)


class WeightSyncError(AgentboltError):
    """A replica refused or failed a weight update (the message names the replica, route and answer)."""

    http_status = 502
    code = "weight_sync_failed"


class VllmControl:
    """The control routes of one ``vllm serve`` process (its root URL, without ``/v1``).

    Its weight-transfer methods have the names and arguments of vLLM's ``VLLMWeightSyncClient`` protocol, so
    vLLM's trainer-side transfer engine can drive a replica through it.

    Args:
        url: the replica's URL as the gateway uses it (``http://host:8000/v1``) or its root.
        api_key: sent as ``Authorization: Bearer ...``.
        timeout_s: longest wait for one answer (a reload of a large model takes a while).
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 600.0) -> None:
        root = url.rstrip("/")
        self.root = root[: -len("/v1")] if root.endswith("/v1") else root
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.root, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: Any = None, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            answer = self._client.post(path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise WeightSyncError(f"vLLM at {self.root}: POST {path} failed: {type(exc).__name__}: {exc}") from exc
        if answer.status_code >= 400:
            raise WeightSyncError(
                f"vLLM at {self.root}: POST {path} answered {answer.status_code}: {answer.text[:500]}"
                + (" (is VLLM_SERVER_DEV_MODE=1 set?)" if answer.status_code == 404 else "")
            )
        return answer

    # --- serving -------------------------------------------------------------------------------------

    def pause(self, mode: Literal["abort", "wait", "keep"] = "wait") -> None:
        """Stop taking new work; ``wait``: requests in flight finish first (vLLM >= 0.16)."""
        self._post("/pause", params={"mode": mode})

    def resume(self) -> None:
        self._post("/resume")

    def reload_weights(self, weights_path: str) -> None:
        """Load the safetensors files in ``weights_path`` in place (vLLM >= 0.16, ``collective_rpc``)."""
        self._post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": weights_path}})

    def update_weight_version(self, version: int) -> bool:
        """Tell vLLM the weights' version (vLLM >= 0.27); False when the replica has no such route."""
        try:
            self._post("/update_weight_version", {"new_version": str(version)})
        except WeightSyncError as exc:
            if " answered 404" in str(exc):
                return False
            raise
        return True

    def world_size(self) -> int:
        """The replica's worker count across tensor and data parallelism (``GET /get_world_size``, vLLM >= 0.16)."""
        try:
            answer = self._client.get("/get_world_size")
            answer.raise_for_status()
            return int(answer.json()["world_size"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise WeightSyncError(f"vLLM at {self.root}: GET /get_world_size failed: {exc}") from exc

    def load_lora_adapter(self, name: str, path: str) -> None:
        """Load (or reload in place) the adapter ``name`` from ``path`` (vLLM >= 0.15)."""
        self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path, "load_inplace": True})

    # --- vLLM's VLLMWeightSyncClient protocol (driven by vLLM's trainer-side engine) -------------------

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._post("/init_weight_transfer_engine", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self._post("/start_weight_update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self._post("/update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._post("/finish_weight_update", {"weight_version": weight_version} if weight_version is not None else None)

    def shutdown_weight_transfer_engine(self) -> None:
        self._post("/shutdown_weight_transfer_engine")


class VllmWeightSync:
    """Sends each new version of the trainer's weights to the upstream replicas (see the module docstring).

    A weight sink for :class:`~agentbolt.trainer.trainer.Trainer`: ``update_weights`` for full weights
    (``disk``), ``update_adapter`` for a LoRA adapter (``lora``); ``nccl`` is set up by :meth:`attach_nccl`.

    Args:
        backend: the gateway's backend for the replicas; its model version advances once all have the weights.
        method: ``lora``, ``disk`` or ``nccl``.
        weights_dir: where ``lora`` and ``disk`` write each version (the replicas must read the same path).
        lora_name: the adapter's name on the replicas (``lora``); the backend must ask for this model name.
        api_key: the replicas' API key.
        timeout_s: longest wait for one replica's answer.

    Raises:
        BadInput: ``lora`` without a ``lora_name``, or a backend asking the replicas for another model.
    """

    def __init__(
        self,
        backend: UpstreamBackend,
        method: SyncMethod,
        weights_dir: str | Path,
        *,
        lora_name: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        if method == "lora" and (not lora_name or backend.upstream_model != lora_name):
            raise BadInput(
                f"LoRA weight sync needs the adapter's name, and the backend must ask the replicas for it "
                f"(lora_name {lora_name!r}, backend's upstream model {backend.upstream_model!r})"
            )
        self.backend, self.method, self.lora_name = backend, method, lora_name
        self.weights_dir = Path(weights_dir)
        self.replicas = [VllmControl(url, api_key=api_key, timeout_s=timeout_s) for url in backend.urls]
        self._nccl: Any | None = None  # vLLM's trainer-side transfer engine (nccl)
        self.pushes = 0

    @property
    def model_version(self) -> int:
        return self.backend.model_version

    def close(self) -> None:
        if self._nccl is not None:
            self._nccl.shutdown()
        for replica in self.replicas:
            replica.close()

    # --- the sink --------------------------------------------------------------------------------------

    def update_weights(self, state_dict: Mapping[str, Any], version: int) -> concurrent.futures.Future[int]:
        """Full weights (plain model names) to every replica as ``version`` (``disk``; ``nccl`` sends the
        trainer's module itself and ignores ``state_dict``). The future is already resolved on return.

        Raises:
            WeightSyncError: a replica refused or failed the update (the backend keeps the old version).
            BadInput: the method takes adapters, not full weights.
        """
        if self.method == "lora":
            raise BadInput("this weight sync loads LoRA adapters: the trainer must send update_adapter()")
        if self.method == "nccl":
            sender = self._nccl
            if sender is None:
                raise BadInput("nccl weight sync was not attached to the trainer's model (attach_nccl)")
            return self._paused(version, lambda replica: sender.send_weights())
        target = self._version_dir(version)
        _write_safetensors(state_dict, target / "model.safetensors")
        done = self._paused(version, lambda replica: replica.reload_weights(str(target)))
        self._prune()
        return done

    def update_adapter(self, write: Callable[[Path], None], version: int) -> concurrent.futures.Future[int]:
        """The trainer's LoRA adapter to every replica as ``version``: ``write(directory)`` saves it (PEFT layout).

        Raises:
            WeightSyncError: a replica refused or failed to load it.
            BadInput: the method takes full weights.
        """
        if self.method != "lora":
            raise BadInput(f"this weight sync sends full weights ({self.method}): use update_weights()")
        target = self._version_dir(version)
        write(target)
        done = self._paused(version, lambda replica: replica.load_lora_adapter(str(self.lora_name), str(target)))
        self._prune()
        return done

    @property
    def takes_adapters(self) -> bool:
        """True: the trainer sends its LoRA adapter (``update_adapter``), not merged full weights."""
        return self.method == "lora"

    # --- nccl ------------------------------------------------------------------------------------------

    def attach_nccl(self, module: Any, master_address: str, master_port: int) -> None:
        """Open vLLM's NCCL weight transfer from ``module`` (the trainer's model, on CUDA) to the one replica.

        Runs only where ``vllm`` is installed beside the trainer and CUDA is available: not exercised by the
        test suite (no GPU); the control-plane routes it drives are (:class:`VllmControl`).

        Raises:
            BadInput: more than one replica (each sync group is one replica), or vllm is not installed.
        """
        if len(self.replicas) != 1:
            raise BadInput("nccl weight sync drives one replica per trainer; give engine.vllm.urls one URL")
        try:
            from vllm.distributed.weight_transfer.base import ModuleSource
            from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo
        except ImportError as exc:
            raise BadInput(f"nccl weight sync needs vllm >= 0.28 installed beside the trainer: {exc}") from exc
        replica = self.replicas[0]
        world_size = 1 + replica.world_size()
        info = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port, world_size=world_size)
        self._nccl = WeightTransferTrainerFactory.trainer_init(info, client=replica, source=ModuleSource(module))

    # --- helpers ---------------------------------------------------------------------------------------

    def _paused(self, version: int, load: Callable[[VllmControl], None]) -> concurrent.futures.Future[int]:
        """``load`` the new weights into every replica while all are paused, then stamp ``version``, then resume.

        Every replica drains first (``/pause?mode=wait``: requests in flight finish on the old weights), so no call
        runs on a mix; calls arriving meanwhile are answered 503 and sent again by the backend, after the resume,
        stamped with the new version. A replica that fails leaves the old version stamped; all are resumed.
        """
        paused: list[VllmControl] = []
        try:
            for replica in self.replicas:
                replica.pause("wait")
                paused.append(replica)
            for replica in self.replicas:
                load(replica)
                replica.update_weight_version(version)
            served = self._served(version)
        finally:
            for replica in paused:
                replica.resume()
        return served

    def _served(self, version: int) -> concurrent.futures.Future[int]:
        self.backend.set_model_version(version)
        self.pushes += 1
        log.info("vLLM replicas (%d) now serve model version %d (%s)", len(self.replicas), version, self.method)
        done: concurrent.futures.Future[int] = concurrent.futures.Future()
        done.set_result(version)
        return done

    def _version_dir(self, version: int) -> Path:
        target = self.weights_dir / f"v{version:06d}"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        return target

    def _prune(self) -> None:
        kept = sorted(self.weights_dir.glob("v[0-9]*"))
        for old in kept[:-KEEP_VERSIONS]:
            shutil.rmtree(old, ignore_errors=True)


def _write_safetensors(state_dict: Mapping[str, Any], path: Path) -> None:
    """Write full weights as one safetensors file (contiguous CPU copies; tied tensors written once each)."""
    from safetensors.torch import save_file

    tensors = {}
    seen: set[int] = set()
    for name, tensor in state_dict.items():
        if tensor.data_ptr() in seen:  # a tied weight (lm_head = embed_tokens): vLLM ties it again on load
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().to("cpu").contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})

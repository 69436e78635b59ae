"""A fake ``vllm serve`` for the weight-sync tests: the fake upstream plus vLLM's weight-update routes.

It speaks the routes :mod:`agentbolt.gateway.weight_sync` uses, with the bodies vLLM 0.33 takes
(``vllm/entrypoints/rl/online/api_router.py``, ``vllm/entrypoints/serve/lora/protocol.py``): ``POST /pause``
(query ``mode``), ``/resume``, ``/collective_rpc`` (``reload_weights`` with ``weights_path``),
``/update_weight_version``, ``/v1/load_lora_adapter``, the NCCL control plane (``/init_weight_transfer_engine``,
``/start_weight_update``, ``/update_weights``, ``/finish_weight_update``) and ``GET /get_world_size``.
It really reads what it is pointed at: ``reload_weights`` loads the safetensors files of the directory
(``weights``), ``load_lora_adapter`` the adapter's (``adapters``), so a test compares them with the
trainer's. Every control call is kept in ``control`` as (route, query, body) in order; a completion while
paused answers 503 as vLLM does in ``wait`` mode. ``refuse`` makes one route answer 400.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.gateway.fake_upstream import FakeUpstream, _error


@dataclass
class FakeVllm(FakeUpstream):
    control: list[tuple[str, str, Any]] = field(default_factory=list)
    weights: dict[str, Any] = field(default_factory=dict)  # name -> tensor, from the last reload_weights
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)  # lora_name -> its tensors
    adapter_paths: dict[str, str] = field(default_factory=dict)
    weight_version: str | None = None
    paused: bool = False
    refuse: str | None = None  # a route answered 400
    world_size: int = 1

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
        if path.startswith("/v1/completions") or path in ("/v1/chat/completions", "/v1/models"):
            if self.paused and method == "POST":
                return 503, _error("paused for a weight update"), []
            return super()._answer(method, path, body)
        parsed = json.loads(body) if body else None
        self.control.append((path, self.last_query, parsed))
        if path == self.refuse:
            return 400, _error(f"{path} refused by the test"), []
        if method == "GET" and path == "/get_world_size":
            return 200, json.dumps({"world_size": self.world_size}).encode(), []
        if method != "POST":
            return 404, _error(f"no route {method} {path}"), []
        try:
            answer = self._control(path, parsed)
        except ValueError as exc:  # vLLM's InvalidUserInput
            return 400, _error(str(exc)), []
        if answer is None:
            return 404, _error(f"no route {method} {path}"), []
        return 200, json.dumps(answer).encode(), []

    def _control(self, path: str, body: Any) -> dict[str, Any] | None:
        from safetensors.torch import load_file

        if path == "/pause":
            self.paused = True
            return {"status": "paused"}
        if path == "/resume":
            self.paused = False
            return {"status": "resumed"}
        if path == "/collective_rpc" and body["method"] == "reload_weights":
            directory = Path(body["kwargs"]["weights_path"])
            self.weights = {}
            for file in sorted(directory.glob("*.safetensors")):
                self.weights.update(load_file(str(file)))
            return {"results": [None]}
        if path == "/update_weight_version":
            self.weight_version = body["new_version"]
            return {"success": True, "new_version": self.weight_version}
        if path == "/v1/load_lora_adapter":
            name, where = body["lora_name"], Path(body["lora_path"])
            if name in self.adapters and not body.get("load_inplace"):
                raise ValueError(f"The lora adapter '{name}' has already been loaded.")
            self.adapters[name] = load_file(str(where / "adapter_model.safetensors"))
            self.adapter_paths[name] = str(where)
            return {"message": f"Success: LoRA adapter '{name}' added successfully."}
        if path in ("/init_weight_transfer_engine", "/start_weight_update", "/update_weights", "/finish_weight_update"):
            return {"message": "ok"}
        return None

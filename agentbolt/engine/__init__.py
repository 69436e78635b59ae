"""The embedded inference engine: the policy model served with dynamic batching and weight hot-swap.

Needs the ``train`` extra (PyTorch, transformers). Importing this package imports torch. The model-file
names re-exported here live in :mod:`agentbolt.models` (shared with the trainer).
"""

from agentbolt.engine.engine import Engine, EngineClosed
from agentbolt.models import (
    ModelUnavailable,
    demo_model_path,
    load_tokenizer,
    load_tokenizer_and_model,
    save_checkpoint,
    tiny_random_model,
)

__all__ = [
    "Engine",
    "EngineClosed",
    "ModelUnavailable",
    "demo_model_path",
    "load_tokenizer",
    "load_tokenizer_and_model",
    "save_checkpoint",
    "tiny_random_model",
]

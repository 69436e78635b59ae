"""The engine tests need PyTorch (the ``train`` extra); the ``tokenizer`` fixture is in tests/conftest.py."""

import pytest

pytest.importorskip("torch", reason="the engine needs the train extra: bash scripts/setup.sh dev,train")

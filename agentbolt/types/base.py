"""The base of every agentbolt wire and storage model, and the aliases the others share."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

JSONValue = Any
"""Any JSON-serialisable value (a task's input, an attribute value)."""

RolloutMode = Literal["train", "val", "test"]



POLICY_MODEL = "policy"
"""The model name the gateway serves the policy as, unless told otherwise (``--served-model``)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

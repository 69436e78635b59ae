"""What the OTLP decoders share: enum names, invalid ids, and a decoded span's attribution and validation.

The rules are in the docstring of :mod:`agentbolt.server.otlp`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agentbolt.errors import BadInput
from agentbolt.semconv import ATTEMPT_ID, ROLLOUT_ID
from agentbolt.types import SpanIn

# Indexed by the protobuf enum value.
KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
KIND_NAMES = {f"SPAN_KIND_{kind}": value for value, kind in enumerate(KINDS)}
STATUS_CODES = ("UNSET", "OK", "ERROR")
STATUS_NAMES = {f"STATUS_CODE_{code}": value for value, code in enumerate(STATUS_CODES)}

ZERO_TRACE_ID = bytes(16)  # all-zero ids are invalid (OpenTelemetry's rule)
ZERO_SPAN_ID = bytes(8)


def attributed_span(raw: dict[str, Any], index: int, name: str) -> SpanIn:
    """Attribute a decoded span to its rollout/attempt and validate it as a :class:`SpanIn`."""
    attributes, resource = raw["attributes"], raw["resource"]
    rollout_id = attributes.get(ROLLOUT_ID)
    if rollout_id is None:
        rollout_id = resource.get(ROLLOUT_ID)
    attempt_id = attributes.get(ATTEMPT_ID)
    if attempt_id is None:
        attempt_id = resource.get(ATTEMPT_ID)
    where = f"span {index} ({name!r})"
    if rollout_id is None:
        if attempt_id is not None:
            raise BadInput(
                f"{where} has {ATTEMPT_ID} but no {ROLLOUT_ID}: set {ROLLOUT_ID} on the span or on its resource too"
            )
        raise BadInput(
            f"{where} has no {ROLLOUT_ID}: set the attribute {ROLLOUT_ID!r} on the span or on its "
            "resource (agentbolt's client does this for you)"
        )
    for key, value in ((ROLLOUT_ID, rollout_id), (ATTEMPT_ID, attempt_id)):
        if value is not None and (not isinstance(value, str) or not value):
            raise BadInput(f"{where}: {key} must be a non-empty string, got {value!r}")
    raw["rollout_id"] = rollout_id
    raw["attempt_id"] = attempt_id
    try:
        return SpanIn.model_validate(raw)
    except ValidationError as e:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'span'}: {error['msg']}"
            for error in e.errors(include_url=False)[:5]
        ]
        raise BadInput(f"{where} is invalid: {'; '.join(problems)}") from None

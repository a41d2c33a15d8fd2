"""agentapi's OpenAPI document, as a validator for what the fakes (and the sidecar) see.

The document lives outside the repository, in `../shared/protocol/` beside the checkout;
it is read from there and never copied in. Where it is absent (a fresh clone elsewhere)
`SPEC_AVAILABLE` is False and `SPEC_UNAVAILABLE_REASON` says why, for `pytest.skip`.

Schemas are validated with jsonschema (Draft 2020-12); `$ref`s into
`#/components/schemas` resolve through a `referencing` registry holding the whole
document. OpenAPI 3.0's `nullable` is translated to a JSON Schema `null` type, and
`format: date-time` is checked (RFC 3339) rather than ignored.

The document is agentapi v0.12.1's. `version="0.11"` validates against v0.11.8's instead,
derived from it by the only differences between the two documents: v0.11.8 has no
`transport` in `StatusResponseBody` (nor the `Transport` schema) and no `agent_error`
event (nor `ErrorBody` and `ErrorLevel`).
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = [
    "SPEC_AVAILABLE",
    "SPEC_PATH",
    "SPEC_UNAVAILABLE_REASON",
    "VERSIONS",
    "ValidationError",
    "component_validator",
    "load_spec",
    "response_validator",
    "validate_component",
    "validate_response",
    "validate_sse_event",
]

PROTOCOL_DIR: Final = Path(__file__).absolute().parents[3] / "shared" / "protocol"
SPEC_PATH: Final = PROTOCOL_DIR / "agentapi-openapi.json"
_SPEC_URI: Final = "urn:agentapi:openapi"


def _availability() -> tuple[bool, str]:
    if not SPEC_PATH.is_file():
        return False, f"agentapi OpenAPI document not found at {SPEC_PATH} (../shared/protocol)"
    try:
        json.loads(SPEC_PATH.read_bytes())
    except (OSError, ValueError) as exc:
        return False, f"agentapi OpenAPI document at {SPEC_PATH} is unreadable: {exc}"
    return True, ""


SPEC_AVAILABLE, SPEC_UNAVAILABLE_REASON = _availability()


VERSIONS: Final = ("0.11", "0.12")


@functools.cache
def load_spec(version: str = "0.12") -> dict[str, Any]:
    """The OpenAPI document of agentapi `version` with `nullable` rewritten for JSON Schema."""
    if version not in VERSIONS:
        raise ValueError(f"version {version!r} is not one of {VERSIONS}")
    if not SPEC_AVAILABLE:
        raise FileNotFoundError(SPEC_UNAVAILABLE_REASON)
    spec: dict[str, Any] = _translate_nullable(json.loads(SPEC_PATH.read_bytes()))
    if version == "0.11":
        _as_v0_11(spec)
    return spec


def _as_v0_11(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("Transport", "ErrorBody", "ErrorLevel"):
        del schemas[name]
    status = schemas["StatusResponseBody"]
    del status["properties"]["transport"]
    status["required"].remove("transport")
    stream = spec["paths"]["/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    items = stream["schema"]["items"]
    items["oneOf"] = [
        event
        for event in items["oneOf"]
        if event["properties"]["event"].get("const") != "agent_error"
    ]
    spec["info"]["version"] = "0.11.8"


def _translate_nullable(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _translate_nullable(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_translate_nullable(v) for v in node]
    return node


_DATE_TIME: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})\Z"
)
_FORMATS = FormatChecker(formats=())


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # format applies to strings only
    if _DATE_TIME.match(value) is None:
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    return True


def _is_int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


_FORMATS.checks("date-time", raises=ValueError)(_is_date_time)
_FORMATS.checks("int64")(_is_int64)


@functools.cache
def _registry(version: str) -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(
        load_spec(version), default_specification=DRAFT202012
    )
    registry: Registry[Any] = Registry().with_resource(_SPEC_URI, resource)
    return registry


def _validator_for(pointer: str, version: str) -> Validator:
    return Draft202012Validator(
        {"$ref": f"{_SPEC_URI}#{pointer}"}, registry=_registry(version), format_checker=_FORMATS
    )


@functools.cache
def component_validator(name: str, version: str = "0.12") -> Validator:
    """A validator for `#/components/schemas/<name>`."""
    if name not in load_spec(version)["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in agentapi {version}'s document")
    return _validator_for(f"/components/schemas/{name}", version)


def validate_component(name: str, instance: object, version: str = "0.12") -> None:
    """Raise ValidationError unless `instance` matches the named component schema."""
    component_validator(name, version).validate(instance)


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


@functools.cache
def response_validator(
    path: str, method: str, status: int, version: str = "0.12"
) -> tuple[str, Validator]:
    """(content type, validator) the document declares for this response; a status it
    does not list falls back to `default` (huma's problem+json errors)."""
    responses = load_spec(version)["paths"][path][method.lower()]["responses"]
    key = str(status) if str(status) in responses else "default"
    content = responses[key]["content"]
    (content_type,) = content
    segments = ["", "paths", _escape(path), method.lower(), "responses", key, "content"]
    pointer = "/".join([*segments, _escape(content_type), "schema"])
    return content_type, _validator_for(pointer, version)


def validate_response(
    path: str,
    method: str,
    status: int,
    content_type: str,
    body: object,
    version: str = "0.12",
) -> None:
    """Check a decoded JSON response body and its media type against the document."""
    expected_type, validator = response_validator(path, method, status, version)
    if content_type != expected_type:
        raise ValidationError(
            f"{method.upper()} {path} {status}: content type {content_type!r}, "
            f"document says {expected_type!r}"
        )
    validator.validate(body)


@functools.cache
def _sse_validator(version: str) -> Validator:
    # The document describes the stream as an array of event objects; one item is one event.
    return _validator_for(
        "/paths/~1events/get/responses/200/content/text~1event-stream/schema/items", version
    )


def validate_sse_event(
    event: str, data: object, event_id: int | None = None, version: str = "0.12"
) -> None:
    """Check one SSE event (its name and decoded data) against the `/events` schema."""
    instance: dict[str, Any] = {"event": event, "data": data}
    if event_id is not None:
        instance["id"] = event_id
    _sse_validator(version).validate(instance)

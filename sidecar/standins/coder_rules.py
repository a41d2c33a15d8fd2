"""The rules of the Coder stand-in: coderd's limits, how it decodes and validates the
bodies the sidecar sends, how it reads a stored snapshot back, and the records the
stand-in keeps of what it saw and accepted.

* A log snapshot body is read through a 65,536-byte limit (Go's `http.MaxBytesReader`),
  must be a JSON object with a non-null `messages` array, and its items must decode as Go
  would decode them into coderd's typed message struct (`decode_snapshot`).
* Reading the snapshot back (`GET .../logs`): role `user` → type `input`, `agent` →
  `output`, any other role fails the whole read (`log_entry`).
* An app-status body: `app_slug`, `state`, `message`, `uri`, each a string or absent
  (`decode_app_status`); the state one of `APP_STATES`, the message at most 160 bytes.
* Errors are coderd's JSON `{"message": ..., "detail": ...}` (`coder_error`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

from aiohttp import web

__all__ = [
    "APP_STATES",
    "APP_STATUS_MESSAGE_MAX_BYTES",
    "RECORDED_HEADERS",
    "SNAPSHOT_BODY_LIMIT",
    "TOKEN_HEADER",
    "AppStatus",
    "FaultKind",
    "RecordedRequest",
    "StoredSnapshot",
    "coder_error",
    "decode_app_status",
    "decode_snapshot",
    "is_rfc3339",
    "log_entry",
    "read_limited",
    "refuse_snapshot_query",
    "refuse_token",
]

SNAPSHOT_BODY_LIMIT: Final = 65_536
APP_STATUS_MESSAGE_MAX_BYTES: Final = 160
APP_STATES: Final = frozenset(("working", "idle", "complete", "failure"))
TOKEN_HEADER: Final = "Coder-Session-Token"  # noqa: S105 (a header name)
RECORDED_HEADERS: Final = (
    TOKEN_HEADER,
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Accept",
    "User-Agent",
)

# The shape Go's time.Parse(time.RFC3339, ...) reads; ranges are checked in is_rfc3339.
_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.,][0-9]+)?(?:Z|[+-]([0-9]{2}):([0-9]{2}))\Z"
)

FaultKind = Literal["fail", "redirect", "hang", "close", "answer"]


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake saw it. `status` is None while it is being handled and
    stays None for a held or dropped request (`fault` says which)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    status: int | None = None
    fault: FaultKind | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    task_id: UUID
    body: bytes
    payload: dict[str, Any]
    at: datetime  # the server's timestamp (snapshot_at)


@dataclass(frozen=True, slots=True)
class AppStatus:
    app_slug: str
    state: str
    message: str
    uri: str
    at: float  # time.monotonic() when accepted


async def read_limited(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """Read at most limit+1 bytes, like Go's http.MaxBytesReader; True when over."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), size > limit


def coder_error(status: int, message: str, detail: str = "") -> web.Response:
    body: dict[str, Any] = {"message": message}
    if detail:
        body["detail"] = detail
    return web.json_response(body, status=status)


def refuse_token(token: str | None, valid_tokens: Collection[str]) -> web.Response | None:
    """coderd's agent-token check (401), or None when `token` is one of `valid_tokens`."""
    if token is None:
        return coder_error(
            401,
            "Workspace agent not authorized.",
            f'Header "{TOKEN_HEADER}" must be provided.',
        )
    try:
        UUID(token)
    except ValueError:
        return coder_error(401, "Workspace agent not authorized.", "Token is not a UUID.")
    if token not in valid_tokens:
        return coder_error(
            401, "Workspace agent not authorized.", "Agent token is invalid or expired."
        )
    return None


def refuse_snapshot_query(query: Sequence[tuple[str, str]]) -> web.Response | None:
    """The snapshot POST's query (every pair, in order), strict: exactly one `format` (a
    repeated one is refused too), and that `agentapi` (400); None when it passes."""
    keys = [key for key, _ in query]
    if keys != ["format"]:
        return coder_error(
            400,
            "Query parameters have invalid values.",
            f"expected exactly one query parameter, format; got {keys}",
        )
    value = query[0][1]
    if value != "agentapi":
        return coder_error(
            400,
            "Query parameters have invalid values.",
            f'format "{value}" is not supported, use "agentapi"',
        )
    return None


def is_rfc3339(text: str) -> bool:
    """Whether coderd takes `text` as a message time. It decodes it with Go's
    time.Time.UnmarshalJSON, whose "strict" RFC 3339 checks are disabled (go.dev/issue/54580),
    so Go's lax time.Parse(time.RFC3339, ...) decides: ASCII digits, 4-digit year 0000-9999,
    month 01-12, a 2-digit day that exists in that month (leap years: year 0 is one), an hour
    of one or two digits 0-23, minute and second 00-59 (no leap second), a fraction after `.`
    or `,` of any length, then `Z` or ±hh:mm with hh <= 24 and mm <= 60. It then re-encodes
    the payload, and Time.MarshalJSON refuses an offset of 24 hours or more (coderd answers
    that with a 500; this fake refuses it with the decode's 400)."""
    match = _RFC3339.match(text)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zone_h, zone_m = (int(g) if g is not None else 0 for g in match.groups()[6:])
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return False
    try:
        # The Gregorian calendar repeats every 400 years: this also covers year 0.
        datetime(2000 + year % 400, month, day)
    except ValueError:
        return False
    return zone_h <= 24 and zone_m <= 60 and zone_h * 60 + zone_m < 24 * 60


# Field types as Go's encoding/json would enforce them for coderd's typed message struct:
# absent or null fields decode to zero values, a wrong JSON type fails the decode.
_MESSAGE_FIELDS: Final[dict[str, Callable[[object], bool]]] = {
    "id": lambda v: type(v) is int,
    "content": lambda v: isinstance(v, str),
    "role": lambda v: isinstance(v, str),
    "time": lambda v: isinstance(v, str) and is_rfc3339(v),
}


def decode_snapshot(body: bytes) -> dict[str, Any] | str:
    """The parsed payload, or why coderd would reject it."""
    payload = _json_object(body)
    if isinstance(payload, str):
        return payload
    messages = payload.get("messages")
    if messages is None:
        return 'body must have a non-null "messages" array'
    if not isinstance(messages, list):
        return '"messages" must be an array'
    for index, item in enumerate(messages):
        if item is None:
            continue
        if not isinstance(item, dict):
            return f"messages[{index}] must be an object"
        for name, valid in _MESSAGE_FIELDS.items():
            value = item.get(name)
            if value is not None and not valid(value):
                return f"messages[{index}].{name} has an invalid value"
    return payload


def log_entry(item: object) -> dict[str, Any] | str:
    """A stored message as GET .../logs shows it, or why the whole read fails."""
    if not isinstance(item, dict):
        return "snapshot message is not an object"
    types = {"user": "input", "agent": "output"}
    role = item.get("role")
    if role not in types:
        return f"unsupported message role {role!r}"
    return {
        "id": item.get("id") or 0,
        "content": item.get("content") or "",
        "time": item.get("time") or "0001-01-01T00:00:00Z",
        "type": types[role],
    }


def decode_app_status(body: bytes, too_large: bool) -> dict[str, str] | str:
    if too_large:
        return "request body too large"
    payload = _json_object(body)
    if isinstance(payload, str):
        return payload
    fields: dict[str, str] = {}
    for name in ("app_slug", "state", "message", "uri"):
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} must be a string"
        fields[name] = value or ""
    return fields


def _json_object(body: bytes) -> dict[str, Any] | str:
    """`body` as a JSON object, or why it is none."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"body is not valid JSON: {exc}"
    if not isinstance(payload, dict):
        return "body must be a JSON object"
    return payload

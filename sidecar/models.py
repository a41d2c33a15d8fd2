"""Wire models for agentapi (messages, events, state file) and Coder, with validation.

Everything that enters from agentapi passes through here; invalid input becomes an
`Invalid` value naming the reason, never an exception, so a reader loop can count it and
carry on.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, Literal, NamedTuple, TypeAlias, TypeGuard

Role: TypeAlias = Literal["user", "agent"]

# RFC 3339 date-time as Go's time.RFC3339Nano writes it (agentapi) and Coder parses it:
# ASCII digits only, upper-case T and Z, fields in range. Anything Go would refuse here
# would make the server's read-back of the whole snapshot fail.
_RFC3339 = re.compile(
    r"(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):([0-5]\d):([0-5]\d|60)"
    r"(?:\.\d{1,9})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)\Z",
    re.ASCII,
)
_INT64_MAX: Final = 2**63 - 1


class AgentStatus(enum.StrEnum):
    RUNNING = "running"
    STABLE = "stable"


class ErrorLevel(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Message(NamedTuple):
    """One conversation message, in the form Coder's snapshot expects (`content`).

    A NamedTuple rather than a frozen dataclass: one is built per streamed update, and
    it is the cheapest immutable record Python has."""

    id: int
    role: Role
    content: str
    time: str

    def as_json_obj(self) -> dict[str, Any]:
        return {"id": self.id, "content": self.content, "role": self.role, "time": self.time}


@dataclass(frozen=True, slots=True)
class Invalid:
    """Input that was dropped; `reason` is a short stable key used in logs and metrics."""

    reason: str
    detail: str = ""


# --- events produced by the sources, applied by the mirror ---------------------------


@dataclass(frozen=True, slots=True)
class ReplayStarted:
    """A (re)connect to /events: the messages that follow until the first status replace
    the mirror's history."""


class MessageUpdate(NamedTuple):
    message: Message


@dataclass(frozen=True, slots=True)
class StatusChange:
    status: AgentStatus


@dataclass(frozen=True, slots=True)
class AgentError:
    level: ErrorLevel
    message: str
    time: str


@dataclass(frozen=True, slots=True)
class Conversation:
    """A whole conversation read at once (/messages poll or the state file)."""

    messages: tuple[Message, ...]
    status: AgentStatus | None


@dataclass(frozen=True, slots=True)
class StateFileRead:
    """agentapi's state file as read: its conversation, and its mtime (wall-clock seconds),
    which says how current that conversation was."""

    conversation: Conversation
    mtime: float


Event: TypeAlias = ReplayStarted | MessageUpdate | StatusChange | AgentError | Conversation


# --- validation ------------------------------------------------------------------------


_last_valid_time: str | None = None


def _valid_time(time: object) -> TypeGuard[str]:
    # A streamed message keeps its time while its content grows many times a second:
    # the last time that passed is remembered so the pattern runs once per message.
    global _last_valid_time
    if time is not None and time == _last_valid_time:
        return True
    if isinstance(time, str) and _RFC3339.match(time) is not None:
        _last_valid_time = time
        return True
    return False


def time_ns(stamp: str) -> int | None:
    """An RFC 3339 time (as validated by sidecar.models) as integer nanoseconds since the
    epoch, exact to the nanosecond agentapi writes; None for an impossible date. Strings
    do not compare: Go drops trailing zeros ("…:05Z" vs "…:05.1Z") and offsets differ."""
    try:
        day = date(int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])).toordinal()
        hour, minute, second = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
    except ValueError:
        return None
    rest = stamp[19:]
    fraction = 0
    if rest.startswith("."):
        digits = len(rest) - len(rest[1:].lstrip("0123456789"))
        fraction = int(rest[1:digits].ljust(9, "0"))
        rest = rest[digits:]
    offset = 0
    if rest[:1] in ("+", "-"):
        offset = (int(rest[1:3]) * 60 + int(rest[4:6])) * 60 * (1 if rest[0] == "+" else -1)
    seconds = day * 86_400 + hour * 3600 + minute * 60 + second - offset
    return seconds * 1_000_000_000 + fraction


def validate_message(obj: object, content_field: str) -> Message | Invalid:
    """Validate one agentapi message object; `content_field` is `message` for SSE and the
    state file, `content` for GET /messages."""
    if not isinstance(obj, dict):
        return Invalid("shape", f"message is {type(obj).__name__}, not an object")
    mid = obj.get("id")
    if type(mid) is not int or not 0 <= mid <= _INT64_MAX:
        return Invalid("id", f"id {mid!r} is not a non-negative integer")
    role = obj.get("role")
    if role != "user" and role != "agent":
        return Invalid("role", f"role {str(role)[:40]!r} is not user or agent")
    content = obj.get(content_field)
    if not isinstance(content, str):
        return Invalid("content", f"{content_field} is missing or not a string")
    time = obj.get("time")
    if not _valid_time(time):
        return Invalid("time", f"time {str(time)[:40]!r} is not RFC 3339")
    return Message(mid, role, content, time)


def _loads(data: str | bytes) -> object | Invalid:
    try:
        obj: object = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return Invalid("json", str(exc)[:120])
    return obj


def parse_sse_event(event_type: str, data: str) -> Event | Invalid | None:
    """Turn one SSE frame into an Event; None for event types we do not use
    (screen_update and future ones)."""
    if event_type == "message_update":
        obj = _loads(data)
        if isinstance(obj, Invalid):
            return obj
        msg = validate_message(obj, "message")
        return msg if isinstance(msg, Invalid) else MessageUpdate(msg)
    if event_type == "status_change":
        obj = _loads(data)
        if isinstance(obj, Invalid):
            return obj
        status = _status_of(obj)
        return status if isinstance(status, Invalid) else StatusChange(status)
    if event_type == "agent_error":
        obj = _loads(data)
        if isinstance(obj, Invalid):
            return obj
        return _agent_error(obj)
    return None


def _status_of(obj: object) -> AgentStatus | Invalid:
    if not isinstance(obj, dict):
        return Invalid("shape", "status body is not an object")
    try:
        return AgentStatus(str(obj.get("status")))
    except ValueError:
        return Invalid("status", f"status {str(obj.get('status'))[:40]!r} is unknown")


def _agent_error(obj: object) -> AgentError | Invalid:
    if not isinstance(obj, dict):
        return Invalid("shape", "agent_error body is not an object")
    message, time = obj.get("message"), obj.get("time")
    try:
        level = ErrorLevel(str(obj.get("level")))
    except ValueError:
        return Invalid("level", f"level {str(obj.get('level'))[:40]!r} is unknown")
    if not isinstance(message, str):
        return Invalid("content", "agent_error message is not a string")
    if not isinstance(time, str) or _RFC3339.match(time) is None:
        return Invalid("time", f"time {str(time)[:40]!r} is not RFC 3339")
    return AgentError(level=level, message=message, time=time)


def parse_status_body(body: str | bytes) -> AgentStatus | Invalid:
    """GET /status response body."""
    obj = _loads(body)
    return obj if isinstance(obj, Invalid) else _status_of(obj)


def parse_messages(
    items: Sequence[object], content_field: str
) -> tuple[list[Message], list[Invalid]]:
    good: list[Message] = []
    bad: list[Invalid] = []
    for item in items:
        msg = validate_message(item, content_field)
        (bad if isinstance(msg, Invalid) else good).append(msg)  # type: ignore[arg-type]
    return good, bad


def parse_messages_body(body: str | bytes) -> tuple[list[Message], list[Invalid]] | Invalid:
    """GET /messages response body."""
    obj = _loads(body)
    if isinstance(obj, Invalid):
        return obj
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        return Invalid("shape", "body has no messages array")
    return parse_messages(obj["messages"], "content")


STATE_FILE_VERSIONS: Final = frozenset((1,))


def parse_state_file(body: str | bytes) -> tuple[list[Message], list[Invalid]] | Invalid:
    """agentapi's --state-file: {"version", "messages": [{"id","message","role","time"}], ...}."""
    obj = _loads(body)
    if isinstance(obj, Invalid):
        return obj
    if not isinstance(obj, dict):
        return Invalid("shape", "state file is not a JSON object")
    version = obj.get("version")
    if type(version) is not int or version not in STATE_FILE_VERSIONS:
        return Invalid("version", f"state file version {str(version)[:20]!r} is not supported")
    if not isinstance(obj.get("messages"), list):
        return Invalid("shape", "state file has no messages array")
    return parse_messages(obj["messages"], "message")


# --- Coder -----------------------------------------------------------------------------


class AppState(enum.StrEnum):
    WORKING = "working"
    IDLE = "idle"
    COMPLETE = "complete"
    FAILURE = "failure"


APP_STATUS_MESSAGE_MAX_BYTES: Final = 160
SNAPSHOT_MAX_BYTES: Final = 65_536

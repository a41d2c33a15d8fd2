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
from typing import Any, Final, Literal, NamedTuple, TypeAlias, TypeGuard

Role: TypeAlias = Literal["user", "agent"]

# A message time exactly as Coder takes it. coderd decodes the snapshot's `time` fields
# with Go's time.Time.UnmarshalJSON, then re-encodes the payload with json.Marshal
# (coderd/aitasks.go); a time either step refuses fails the whole upload. From Go's
# src/time (the same in every release since 1.20):
#
# * UnmarshalJSON takes the bytes between the quotes (no JSON unescaping) to
#   parseStrictRFC3339 (format_rfc3339.go): the fast parseRFC3339, else
#   Parse(RFC3339, ...). The "strict" checks after that are disabled (`case true:
#   return t, nil`, go.dev/issue/54580), so the lax layout parser (format.go, parse)
#   decides: a 4-digit year 0000-9999; month 01-12; a 2-digit day valid for the month,
#   leap years included (daysIn/isLeap, year 0 is leap); hour of ONE or two digits, 0-23;
#   minute and second 00-59 (no leap second); an optional fraction: `.` or `,` then any
#   number of digits (cut to 9); then `Z`, or a sign, 2 digits, `:`, 2 digits with hour
#   <= 24 and minute <= 60; nothing after. ASCII digits and upper-case T/Z only.
# * MarshalJSON (appendStrictRFC3339) refuses an offset of 24 h or more ("timezone hour
#   outside of range [0,23]"), which coderd answers with 500: offsets stop at +23:59,
#   and 23:60 (= 24 h) is out too; 00:60 through 22:60 (a whole hour) are fine.
#
# One regular expression holds all of it, the calendar included (years divisible by 4,
# except centuries not divisible by 400), so a miss costs a single match.
_LEAP_YEAR: Final = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
_GO_TIME: Final = re.compile(
    r"""
    (?:
        [0-9]{4}-
        (?:
            (?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])   # day 01-28: every month
          | (?:0[13-9]|1[0-2])-(?:29|30)                 # 29 and 30: not February
          | (?:0[13578]|1[02])-31                        # 31: the long months
        )
      | """
    + _LEAP_YEAR
    + r"""-02-29                                         # February 29: leap years
    )
    T(?:[01]?[0-9]|2[0-3])                               # hour: one or two digits
    :[0-5][0-9]:[0-5][0-9]                               # minute, second
    (?:[.,][0-9]+)?                                      # fraction: any length
    (?:Z|[+-](?:(?:[01][0-9]|2[0-2]):(?:[0-5][0-9]|60)|23:[0-5][0-9]))
    \Z
    """,
    re.VERBOSE,
)
# The fields of a time _GO_TIME accepted, for time_ns.
_TIME_FIELDS: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.,]([0-9]+))?(?:Z|([+-])([0-9]{2}):([0-9]{2}))\Z"
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
    # Characters cut from the start of `content`, of which only the tail is kept (the
    # mirror keeps no more of a message than a snapshot can carry).
    cut: int = 0

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
    """agentapi's state file as read: its conversation, and how long before the read it
    was written (seconds, by its mtime), which says how current that conversation was.
    An age, not a time: the reader places it on its own monotonic clock."""

    conversation: Conversation
    age: float


Event: TypeAlias = ReplayStarted | MessageUpdate | StatusChange | AgentError | Conversation


# --- validation ------------------------------------------------------------------------


_last_valid_time: str | None = None
# Go reads a fraction of any length, but agentapi writes at most 35 characters: a longer
# time is no agentapi's, and one of 64 KiB would leave a snapshot no room at all.
_TIME_MAX_CHARS: Final = 64


def _valid_time(time: object) -> TypeGuard[str]:
    """True when Coder takes `time` (see _GO_TIME)."""
    # A streamed message keeps its time while its content grows many times a second:
    # the last time that passed is remembered so the pattern runs once per message.
    global _last_valid_time
    if time is not None and time == _last_valid_time:
        return True
    if isinstance(time, str) and len(time) <= _TIME_MAX_CHARS and _GO_TIME.match(time):
        _last_valid_time = time
        return True
    return False


_DAYS_BEFORE_MONTH: Final = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_UNIX_EPOCH_DAYS: Final = 719_528  # days from 0000-01-01 to 1970-01-01


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date; year 0 included (Python's
    datetime stops at year 1, Go's time does not)."""
    before = year - 1  # whole years before this one, counted from year 0 (a leap year)
    days = 365 * year + before // 4 - before // 100 + before // 400 + 1
    days += _DAYS_BEFORE_MONTH[month] + day - 1
    if month > 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        days += 1
    return days - _UNIX_EPOCH_DAYS


def time_ns(stamp: str) -> int | None:
    """A time Coder takes (as validated by sidecar.models) as integer nanoseconds since
    the epoch: the instant Go decodes (fraction cut to 9 digits, the offset subtracted),
    exact for every year 0000-9999; None for anything else. Strings do not compare: Go
    drops trailing zeros ("…:05Z" vs "…:05.1Z") and offsets differ."""
    fields = _TIME_FIELDS.match(stamp)
    if fields is None or not _valid_time(stamp):
        return None
    year, month, day, hour, minute, second, fraction, sign, zone_h, zone_m = fields.groups()
    seconds = (
        _days_since_epoch(int(year), int(month), int(day)) * 86_400
        + int(hour) * 3600
        + int(minute) * 60
        + int(second)
    )
    if sign is not None:
        offset = (int(zone_h) * 60 + int(zone_m)) * 60
        seconds -= offset if sign == "+" else -offset
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


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
    if not _valid_time(time):
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
        if isinstance(msg, Invalid):
            bad.append(msg)
        else:
            good.append(msg)
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
# No snapshot carries more of a message than this many characters (each is one byte at
# least): what is before them may be cut, counted in `Message.cut`.
CONTENT_MAX_CHARS: Final = SNAPSHOT_MAX_BYTES


def tail_of(message: Message) -> Message:
    """`message` with no more than CONTENT_MAX_CHARS of its content, the newest kept."""
    extra = len(message.content) - CONTENT_MAX_CHARS
    if extra <= 0:
        return message
    return message._replace(content=message.content[extra:], cut=message.cut + extra)

"""Message times: the sidecar takes exactly the times Coder takes (SPEC §2).

coderd decodes a snapshot's `time` fields with Go's time.Time.UnmarshalJSON and then
re-encodes the payload with json.Marshal (coderd/aitasks.go); one time either step refuses
fails the whole upload. The rules below were read in Go's src/time:

* UnmarshalJSON (time.go) hands the bytes between the quotes, not unescaped, to
  parseStrictRFC3339 (format_rfc3339.go): the fast parseRFC3339, else
  Parse(RFC3339, ...). Its extra "strict" checks are disabled (`case true: return t, nil`,
  go.dev/issue/54580, rolled back before Go 1.20 shipped), so the layout parser `parse`
  (format.go) decides, field by field of "2006-01-02T15:04:05Z07:00":
  - "2006": 4 bytes, the first an ASCII digit, all digits (atoi): 0000-9999.
  - "01", "02", "04", "05": exactly two digits (getnum fixed); month 1-12, minute and
    second 0-59 (no leap second: `60 <= sec` is out of range).
  - "15": one or two digits (getnum not fixed), 0-23.
  - literals `-`, `T`, `:` match byte for byte (skip): no lower-case `t`, no space.
  - after the seconds, `.` or `,` followed by a digit starts a fraction of any length;
    parseNanoseconds keeps the first 9 digits (truncated, not rounded).
  - "Z07:00": `Z` (upper case), or sign, 2 digits, `:`, 2 digits; hour <= 24 and
    minute <= 60 ("some people do write offsets of 24 hours or 60 minutes").
  - nothing may follow ("extra text").
  - then the day must exist: `day < 1 || day > daysIn(month, year)`, with isLeap(year)
    = year%4 == 0 && (year%100 != 0 || year%400 == 0); year 0 is a leap year.
* MarshalJSON (appendStrictRFC3339) refuses an offset of 24 hours or more ("timezone
  hour outside of range [0,23]"), and coderd answers that with 500.

The reference below implements these rules on its own (byte by byte, like Go, with
Python's calendar for the days of a month) and the validator must agree with it.
"""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.models import (
    AgentError,
    Invalid,
    Message,
    parse_messages_body,
    parse_sse_event,
    parse_state_file,
    time_ns,
    validate_message,
)
from sidecar.standins.coder_rules import is_rfc3339 as fake_coder_takes

# --- the reference -------------------------------------------------------------------------


class GoTime(NamedTuple):
    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    nanos: int
    offset_minutes: int  # east of UTC


def _is_digit(data: bytes, i: int) -> bool:
    return i < len(data) and 0x30 <= data[i] <= 0x39


def go_parse(text: str) -> GoTime | None:
    """What coderd makes of `text` as a message time, or None when it fails the upload."""
    data = text.encode("utf-8", "surrogatepass")  # Go reads bytes
    i = 0

    def number(width: int) -> int | None:
        nonlocal i
        if not all(_is_digit(data, i + k) for k in range(width)):
            return None
        value = int(data[i : i + width].decode())
        i += width
        return value

    def literal(char: bytes) -> bool:
        nonlocal i
        if data[i : i + 1] != char:
            return False
        i += 1
        return True

    year = number(4)
    if year is None or not literal(b"-"):
        return None
    month = number(2)
    if month is None or not 1 <= month <= 12 or not literal(b"-"):
        return None
    day = number(2)
    if day is None or not literal(b"T"):
        return None
    hour = number(2) if _is_digit(data, i + 1) else number(1)  # "15": one or two digits
    if hour is None or hour >= 24 or not literal(b":"):
        return None
    minute = number(2)
    if minute is None or minute >= 60 or not literal(b":"):
        return None
    second = number(2)
    if second is None or second >= 60:
        return None
    nanos = 0
    if data[i : i + 1] in (b".", b",") and _is_digit(data, i + 1):
        end = i + 1
        while _is_digit(data, end):
            end += 1
        nanos = int(data[i + 1 : end][:9].decode().ljust(9, "0"))
        i = end
    offset = 0
    if data[i : i + 1] == b"Z":
        i += 1
    else:
        zone = data[i : i + 6]
        if len(zone) < 6 or zone[3:4] != b":" or zone[:1] not in (b"+", b"-"):
            return None
        if not all(_is_digit(zone, k) for k in (1, 2, 4, 5)):
            return None
        zone_h, zone_m = int(zone[1:3].decode()), int(zone[4:6].decode())
        if zone_h > 24 or zone_m > 60:  # the decode's range check
            return None
        offset = (zone_h * 60 + zone_m) * (1 if zone[:1] == b"+" else -1)
        i += 6
    if i != len(data):  # extra text
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if abs(offset) >= 24 * 60:  # MarshalJSON on the way into the database
        return None
    return GoTime(year, month, day, hour, minute, second, nanos, offset)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAYS_PER_400_YEARS = 146_097


def go_unix_nano(t: GoTime) -> int:
    """Go's UnixNano of a parsed time, through Python's datetime (which has no year 0:
    the calendar repeats every 400 years, so year 0 is computed as year 400)."""
    shift = 400 if t.year == 0 else 0
    zone = timezone(timedelta(minutes=t.offset_minutes))
    moment = datetime(t.year + shift, t.month, t.day, t.hour, t.minute, t.second, tzinfo=zone)
    delta = moment - _EPOCH - timedelta(days=_DAYS_PER_400_YEARS * shift // 400)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + t.nanos


def accepted(text: object) -> bool:
    result = validate_message({"id": 1, "role": "agent", "message": "x", "time": text}, "message")
    if isinstance(result, Message):
        assert result.time == text  # never rewritten: Coder gets what agentapi wrote
        return True
    assert result.reason == "time", result
    return False


# --- examples ------------------------------------------------------------------------------

GOOD: list[tuple[str, str]] = [
    ("2025-06-01T10:00:00Z", "plain UTC"),
    ("2024-02-29T10:00:00Z", "Feb 29: 2024 is divisible by 4 (isLeap)"),
    ("2000-02-29T10:00:00Z", "Feb 29: 2000 is a century divisible by 400"),
    ("0000-02-29T00:00:00Z", "Feb 29: year 0 is divisible by 400"),
    ("0000-01-01T00:00:00Z", "year 0000 is inside [0,9999]"),
    ("9999-12-31T23:59:59.999999999Z", "the last time Go writes with 4 year digits"),
    ("2025-04-30T10:00:00Z", "April has 30 days (daysIn)"),
    ("2025-01-31T10:00:00Z", "January has 31 days"),
    ("2025-12-31T23:59:59Z", "hour 23, minute 59, second 59: the maxima"),
    ("2025-06-01T10:00:00.5Z", "a 1-digit fraction"),
    ("2025-06-01T10:00:00.123456789Z", "a 9-digit fraction (RFC3339Nano)"),
    ("2025-06-01T10:00:00.1234567890Z", "a 10-digit fraction: parseNanoseconds keeps 9"),
    ("2025-06-01T10:00:00.000000000000000000001Z", "any fraction length"),
    ("2025-06-01T10:00:00,5Z", "`,` as the fraction separator (commaOrPeriod)"),
    ("2025-06-01T7:00:00Z", "a 1-digit hour: stdHour is getnum(value, false)"),
    ("2025-06-01T10:00:00+23:59", "the largest offset MarshalJSON writes back"),
    ("2025-06-01T10:00:00-23:59", "the largest negative offset"),
    ("2025-06-01T10:00:00-00:00", "-00:00 is offset 0"),
    ("2025-06-01T10:00:00+00:00", "+00:00 is offset 0"),
    ("2025-06-01T10:00:00+05:60", "offset minute 60 passes the decode (mm > 60 fails)"),
    ("2025-06-01T10:00:00.5+05:30", "fraction and offset"),
]

BAD: list[tuple[object, str]] = [
    ("2025-02-30T10:00:00Z", "Feb 30 does not exist (daysIn)"),
    ("2023-02-29T10:00:00Z", "Feb 29: 2023 is not a leap year"),
    ("1900-02-29T10:00:00Z", "Feb 29: 1900 is a century not divisible by 400"),
    ("2100-02-29T10:00:00Z", "Feb 29: 2100 is a century not divisible by 400"),
    ("2025-04-31T10:00:00Z", "April has 30 days"),
    ("2025-06-31T10:00:00Z", "June has 30 days"),
    ("2025-09-31T10:00:00Z", "September has 30 days"),
    ("2025-11-31T10:00:00Z", "November has 30 days"),
    ("2025-01-32T10:00:00Z", "no month has 32 days"),
    ("2025-06-00T10:00:00Z", "day 00: `day < 1`"),
    ("2025-00-10T10:00:00Z", "month 00 is out of range"),
    ("2025-13-10T10:00:00Z", "month 13 is out of range"),
    ("2025-06-01T24:00:00Z", "hour 24: `24 <= hour` is out of range"),
    ("2025-06-01T10:60:00Z", "minute 60 is out of range"),
    ("2025-06-01T10:00:60Z", "second 60: no leap second (`60 <= sec`)"),
    ("2025-06-01T10:00:00", "no zone: Z07:00 needs Z or an offset"),
    ("2025-06-01T10:00:00z", "lower-case z: only `Z` means UTC"),
    ("2025-06-01t10:00:00Z", "lower-case t: literals match byte for byte"),
    ("2025-06-01 10:00:00Z", "a space for T"),
    ("2025-06-01T10:00:00+24:00", "offset 24 h: decodes, but MarshalJSON refuses it (500)"),
    ("2025-06-01T10:00:00-24:00", "offset -24 h: likewise"),
    ("2025-06-01T10:00:00+23:60", "offset 23:60 is 24 h: MarshalJSON refuses it"),
    ("2025-06-01T10:00:00+25:00", "offset hour 25: `hr > 24` is out of range"),
    ("2025-06-01T10:00:00+05:61", "offset minute 61: `mm > 60` is out of range"),
    ("2025-06-01T10:00:00+0530", "offset without colon: Z07:00 needs value[3] == ':'"),
    ("2025-06-01T10:00:00+05", "a 2-digit offset: Z07:00 needs 6 bytes"),
    ("2025-06-01T10:00:00+05:30:00", "offset seconds are extra text"),
    ("2025-06-01T10:00:00Z+01:00", "text after Z"),
    (" 2025-06-01T10:00:00Z", "a leading space: the year's first byte must be a digit"),
    ("2025-06-01T10:00:00Z ", "a trailing space is extra text"),
    ("2025-06-01T10:00:00Z\n", "a trailing newline is extra text"),
    ("２０２５-06-01T10:00:00Z", "full-width digits are not ASCII digits"),
    ("2025-06-01T1０:00:00Z", "one full-width digit"),
    ("10000-06-01T10:00:00Z", "a 5-digit year: after 4 digits `-` must follow"),
    ("-2025-06-01T10:00:00Z", "a negative year"),
    ("+2025-06-01T10:00:00Z", "a signed year"),
    ("225-06-01T10:00:00Z", "a 3-digit year"),
    ("2025-6-01T10:00:00Z", "a 1-digit month: `01` needs two digits"),
    ("2025-06-1T10:00:00Z", "a 1-digit day: `02` needs two digits"),
    ("2025-06-01T10:0:00Z", "a 1-digit minute"),
    ("2025-06-01T10:00:0Z", "a 1-digit second"),
    ("2025-06-01T010:00:00Z", "a 3-digit hour"),
    ("2025-06-01T10:00:00.Z", "a fraction separator without a digit"),
    ("2025-06-01T10:00:00,Z", "a comma without a digit"),
    ("2025-06-01T10:00:00.5.5Z", "two fractions"),
    ("2025-06-01T10:00Z", "no seconds"),
    ("2025-06-01", "a date alone"),
    ("", "empty"),
    (None, "null: a message needs a time"),
    (1748772000, "a number"),
]


@pytest.mark.parametrize(("time", "rule"), GOOD, ids=[rule for _, rule in GOOD])
def test_go_accepts(time: str, rule: str) -> None:
    parsed = go_parse(time)
    assert parsed is not None, f"the reference disagrees: {rule}"
    assert accepted(time), rule
    assert time_ns(time) == go_unix_nano(parsed), rule
    assert fake_coder_takes(time), f"the fake Coder refuses it: {rule}"


@pytest.mark.parametrize(("time", "rule"), BAD, ids=[rule for _, rule in BAD])
def test_go_refuses(time: object, rule: str) -> None:
    if isinstance(time, str):
        assert go_parse(time) is None, f"the reference disagrees: {rule}"
        assert time_ns(time) is None, rule
        assert not fake_coder_takes(time), f"the fake Coder takes it: {rule}"
    assert not accepted(time), rule


@pytest.mark.parametrize(
    ("earlier", "later", "gap_ns"),
    [
        ("2025-06-01T10:00:00+01:00", "2025-06-01T10:00:00Z", 3600 * 10**9),
        ("2025-06-01T10:00:00Z", "2025-06-01T10:00:00-00:30", 1800 * 10**9),
        ("2025-06-01T09:00:00Z", "2025-06-01T10:00:00+01:00", 0),
        ("2025-06-01T10:00:00+05:60", "2025-06-01T10:00:00+06:00", 0),  # 5:60 is 6:00
        ("2025-06-01T07:00:00Z", "2025-06-01T7:00:00Z", 0),
        ("2025-06-01T10:00:00.5Z", "2025-06-01T10:00:00,5Z", 0),
        ("2025-06-01T10:00:00.1Z", "2025-06-01T10:00:00.100000000Z", 0),
        # truncated to nanoseconds, not rounded: the tenth digit is ignored
        ("2025-06-01T10:00:00.1234567899Z", "2025-06-01T10:00:00.123456789Z", 0),
        ("2025-06-01T10:00:00.999999999Z", "2025-06-01T10:00:01Z", 1),
        ("0000-02-28T00:00:00Z", "0000-03-01T00:00:00Z", 2 * 86_400 * 10**9),  # leap year
        ("2023-02-28T00:00:00Z", "2023-03-01T00:00:00Z", 86_400 * 10**9),
        ("0000-12-31T23:59:59Z", "0001-01-01T00:00:00Z", 10**9),
        ("2025-12-31T23:00:00-01:00", "2026-01-01T00:00:00.000000001Z", 1),
    ],
)
def test_time_ns_orders_like_go(earlier: str, later: str, gap_ns: int) -> None:
    a, b = time_ns(earlier), time_ns(later)
    assert a is not None
    assert b is not None
    assert b - a == gap_ns


def test_time_ns_fixed_points() -> None:
    assert time_ns("1970-01-01T00:00:00Z") == 0
    # Go: time.Time{}.Unix() == -62135596800 (January 1, year 1, 00:00:00 UTC)
    assert time_ns("0001-01-01T00:00:00Z") == -62_135_596_800 * 10**9
    assert time_ns("2025-06-01T10:00:00.123456789+02:00") == 1_748_764_800_123_456_789


# --- properties against the reference ------------------------------------------------------

_LEAP_EDGES = (0, 4, 100, 400, 1600, 1900, 2000, 2023, 2024, 2100, 2400, 9996, 9999)
_WIDE_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")


@st.composite
def near_times(draw: st.DrawFn) -> str:
    """Times built from fields, mostly in range and sometimes just outside it, in the
    widths Go reads and sometimes in others."""

    def field(value: int, width: int) -> str:
        text = f"{value:0{width}d}"
        choice = draw(st.integers(0, 19))
        if choice == 0:
            return str(value)  # unpadded
        if choice == 1:
            return "0" + text  # one digit too many
        if choice == 2:
            return text.translate(_WIDE_DIGITS)
        return text

    year = draw(
        st.one_of(st.sampled_from(_LEAP_EDGES), st.integers(0, 9999), st.integers(0, 12000))
    )
    month = draw(st.integers(0, 13))
    day = draw(st.one_of(st.integers(27, 32), st.integers(0, 32)))
    hour = draw(st.integers(0, 25))
    minute = draw(st.integers(0, 61))
    second = draw(st.integers(0, 61))
    date_sep = draw(st.sampled_from("TTTTTTTTt "))
    fraction = draw(
        st.one_of(
            st.just(""),
            st.builds(
                lambda sep, digits: sep + digits,
                st.sampled_from(".,.."),
                st.text("0123456789", min_size=0, max_size=12),
            ),
        )
    )
    zone = draw(
        st.one_of(
            st.sampled_from(["Z", "Z", "z", "", "+00:00", "-00:00"]),
            st.builds(
                lambda sign, h, m, colon: f"{sign}{h:02d}{colon}{m:02d}",
                st.sampled_from("+-"),
                st.integers(0, 25),
                st.integers(0, 61),
                st.sampled_from([":", ":", ":", ""]),
            ),
            st.builds(lambda sign, h: f"{sign}{h:02d}", st.sampled_from("+-"), st.integers(0, 24)),
        )
    )
    hour_text = f"{hour:02d}" if draw(st.booleans()) else str(hour)
    stamp = (
        f"{field(year, 4)}-{field(month, 2)}-{field(day, 2)}{date_sep}"
        f"{hour_text}:{field(minute, 2)}:{field(second, 2)}{fraction}{zone}"
    )
    edge = draw(st.integers(0, 29))
    if edge == 0:
        stamp = " " + stamp
    elif edge == 1:
        stamp += draw(st.sampled_from([" ", "\n", "Z", "0", ":00"]))
    return stamp


@st.composite
def mutated_times(draw: st.DrawFn) -> str:
    """A valid time with one byte replaced, inserted or removed."""
    base = draw(st.sampled_from([time for time, _ in GOOD]))
    at = draw(st.integers(0, len(base)))
    char = draw(st.sampled_from("0123456789-:TZtz.,+ 9０"))
    how = draw(st.integers(0, 2))
    if how == 0:
        return base[:at] + char + base[at + 1 :]
    if how == 1:
        return base[:at] + char + base[at:]
    return base[:at] + base[at + 1 :]


@settings(max_examples=1500, deadline=None)
@given(st.one_of(near_times(), mutated_times(), st.text(max_size=40)))
@example("2025-02-30T10:00:00Z")
@example("2024-02-29T23:59:59.9999999999-23:59")
@example("0000-01-01T0:00:00,0+22:60")
def test_validator_agrees_with_go(stamp: str) -> None:
    want = go_parse(stamp)
    assert accepted(stamp) is (want is not None)
    assert fake_coder_takes(stamp) is (want is not None)
    ns = time_ns(stamp)  # never raises, whatever the input
    if want is None:
        assert ns is None
    else:
        assert ns == go_unix_nano(want)


@settings(max_examples=500, deadline=None)
@given(near_times(), near_times())
def test_time_ns_orders_accepted_times_as_instants(a: str, b: str) -> None:
    ta, tb = go_parse(a), go_parse(b)
    if ta is None or tb is None:
        return
    na, nb = time_ns(a), time_ns(b)
    assert na is not None
    assert nb is not None
    assert (na < nb) is (go_unix_nano(ta) < go_unix_nano(tb))
    assert (na == nb) is (go_unix_nano(ta) == go_unix_nano(tb))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([time for time, _ in GOOD if time.endswith("Z")]), st.integers(1, 23))
def test_an_eastern_offset_is_earlier_than_the_same_clock_in_utc(utc: str, hours: int) -> None:
    east = f"{utc[:-1]}+{hours:02d}:00"
    west = f"{utc[:-1]}-{hours:02d}:00"
    base, e, w = time_ns(utc), time_ns(east), time_ns(west)
    assert base is not None
    assert e is not None
    assert w is not None
    assert base - e == hours * 3600 * 10**9 == w - base


# --- the same rule on every path into the sidecar -------------------------------------------

_BAD_TIMES = ["2025-02-30T10:00:00Z", "2025-06-01T24:00:00Z", "2025-06-01T10:00:60Z"]
_GOOD_TIME = "2025-06-01T10:00:00Z"


@pytest.mark.parametrize("bad", _BAD_TIMES)
def test_message_update_with_a_time_coder_refuses_is_invalid(bad: str) -> None:
    body = {"id": 3, "role": "agent", "message": "hello", "time": bad}
    # also right after a valid time was cached
    assert not isinstance(validate_message({**body, "time": _GOOD_TIME}, "message"), Invalid)
    result = parse_sse_event("message_update", json.dumps(body))
    assert isinstance(result, Invalid)
    assert result.reason == "time"
    assert bad in result.detail


@pytest.mark.parametrize("bad", _BAD_TIMES)
def test_agent_error_with_a_time_coder_refuses_is_invalid(bad: str) -> None:
    ok = parse_sse_event(
        "agent_error", json.dumps({"message": "boom", "level": "error", "time": _GOOD_TIME})
    )
    assert isinstance(ok, AgentError)
    result = parse_sse_event(
        "agent_error", json.dumps({"message": "boom", "level": "error", "time": bad})
    )
    assert isinstance(result, Invalid)
    assert result.reason == "time"


def test_agent_error_takes_what_go_takes() -> None:
    odd = "2025-06-01T7:00:00,25+05:60"  # one-digit hour, comma, offset minute 60
    result = parse_sse_event(
        "agent_error", json.dumps({"message": "boom", "level": "warning", "time": odd})
    )
    assert isinstance(result, AgentError)
    assert result.time == odd


def _conversation(field: str) -> list[dict[str, Any]]:
    return [
        {"id": 0, "role": "user", field: "hi", "time": _GOOD_TIME},
        {"id": 1, "role": "agent", field: "x", "time": "2025-02-30T10:00:00Z"},
        {"id": 2, "role": "agent", field: "y", "time": "2025-06-01T24:00:00Z"},
        {"id": 3, "role": "agent", field: "z", "time": "2024-02-29T10:00:00Z"},
    ]


def test_messages_body_and_state_file_drop_the_same_times() -> None:
    polled = parse_messages_body(json.dumps({"messages": _conversation("content")}))
    saved = parse_state_file(
        json.dumps({"version": 1, "messages": _conversation("message"), "initial_prompt": ""})
    )
    for parsed in (polled, saved):
        assert not isinstance(parsed, Invalid)
        good, bad = parsed
        assert [m.id for m in good] == [0, 3]
        assert [b.reason for b in bad] == ["time", "time"]


def test_a_time_longer_than_agentapi_ever_writes_is_refused() -> None:
    # Go reads a fraction of any length; agentapi writes at most 35 characters, and a
    # time of kilobytes would leave a snapshot no room for the message it belongs to.
    longest = "2025-06-01T10:00:00." + "1" * 38 + "+05:30"
    assert len(longest) == 64
    assert accepted(longest)
    too_long = longest[:20] + "1" + longest[20:]
    assert go_parse(too_long) is not None
    assert not accepted(too_long)
    assert time_ns(too_long) is None

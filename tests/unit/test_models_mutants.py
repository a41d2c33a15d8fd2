"""What an `Invalid` tells a person, the edges of a valid id, and the time cache.

Written against the mutants that `scripts/mutate.py` found surviving in sidecar.models:
an `Invalid` reaches the log line `agentapi.invalid_input` (and `statefile.ignored`), so
its detail must name what was wrong and quote the offending value, cut short so that a
hostile agentapi cannot fill the journal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from sidecar import models
from sidecar.models import (
    Invalid,
    Message,
    parse_messages_body,
    parse_sse_event,
    parse_state_file,
    parse_status_body,
    validate_message,
)

T = "2024-05-01T12:00:00Z"
GOOD = {"id": 1, "role": "user", "message": "hi", "time": T}
LONG = "x" * 100


def invalid(result: object) -> Invalid:
    assert isinstance(result, Invalid), result
    return result


def quotes_a_cut_value(detail: str, value: str, limit: int) -> bool:
    """`detail` quotes exactly the first `limit` characters of `value`."""
    return repr(value[:limit]) in detail and value[: limit + 1] not in detail


def sse(event_type: str, body: object) -> Invalid:
    return invalid(parse_sse_event(event_type, json.dumps(body)))


# --- validate_message ------------------------------------------------------------------


def test_the_largest_int64_id_is_valid() -> None:
    message = validate_message({**GOOD, "id": 2**63 - 1}, "message")
    assert isinstance(message, Message)
    assert message.id == 2**63 - 1
    assert invalid(validate_message({**GOOD, "id": 2**63}, "message")).reason == "id"


@pytest.mark.parametrize(
    ("obj", "reason", "says"),
    [
        ([1, 2], "shape", "message is list, not an object"),
        ({**GOOD, "id": "seven"}, "id", "'seven'"),
        ({**GOOD, "message": 5}, "content", "message is missing"),
    ],
)
def test_an_invalid_message_says_what_is_wrong(obj: object, reason: str, says: str) -> None:
    result = invalid(validate_message(obj, "message"))
    assert result.reason == reason
    assert says in result.detail


@pytest.mark.parametrize("field", ["role", "time"])
def test_an_invalid_message_quotes_at_most_forty_characters(field: str) -> None:
    result = invalid(validate_message({**GOOD, field: LONG}, "message"))
    assert result.reason == field
    assert quotes_a_cut_value(result.detail, LONG, 40)


def test_the_content_field_named_is_the_one_asked_for() -> None:
    result = invalid(validate_message({**GOOD, "message": None}, "content"))
    assert result.detail.startswith("content ")


# --- the events and bodies around it ---------------------------------------------------


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: sse("status_change", [1]), "status body is not an object"),
        (lambda: sse("agent_error", "boom"), "agent_error body is not an object"),
        (
            lambda: sse("agent_error", {"level": "error", "message": 1, "time": T}),
            "agent_error message is not a string",
        ),
        (lambda: invalid(parse_messages_body(b"{}")), "body has no messages array"),
        (lambda: invalid(parse_state_file(b"[]")), "state file is not a JSON object"),
        (
            lambda: invalid(parse_state_file(b'{"version": 1}')),
            "state file has no messages array",
        ),
    ],
)
def test_a_refused_shape_says_what_it_lacks(make: Callable[[], Invalid], says: str) -> None:
    assert says in make().detail


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        (lambda: sse("status_change", {"status": LONG}), 40),
        (lambda: sse("agent_error", {"level": LONG, "message": "m", "time": T}), 40),
        (lambda: sse("agent_error", {"level": "error", "message": "m", "time": LONG}), 40),
        (lambda: invalid(parse_state_file(json.dumps({"version": LONG}))), 20),
    ],
    ids=["status", "level", "time", "version"],
)
def test_a_refused_value_is_quoted_cut_short(make: Callable[[], Invalid], limit: int) -> None:
    assert quotes_a_cut_value(make().detail, LONG, limit)


def test_an_unknown_status_is_quoted() -> None:
    assert "'sleeping'" in sse("status_change", {"status": "sleeping"}).detail


def test_invalid_json_says_why_in_at_most_120_characters() -> None:
    short = invalid(parse_status_body(b"{"))
    assert short.reason == "json"
    assert short.detail.startswith("Expecting property name")
    # Python refuses to convert an integer of more than 4,300 digits, with a long reason.
    long = invalid(parse_status_body(b"1" * 5000))
    assert long.detail.startswith("Exceeds the limit")
    assert len(long.detail) == 120


# --- the time cache --------------------------------------------------------------------


@pytest.fixture
def empty_time_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a fresh process: no time has passed validation yet."""
    monkeypatch.setattr(models, "_last_valid_time", None)


@pytest.mark.usefixtures("empty_time_cache")
def test_a_missing_time_is_refused_while_the_cache_is_empty() -> None:
    without_time = {k: v for k, v in GOOD.items() if k != "time"}
    assert invalid(validate_message(without_time, "message")).reason == "time"
    assert invalid(validate_message({**GOOD, "time": None}, "message")).reason == "time"


class CountingPattern:
    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.calls = 0

    def match(self, text: str) -> re.Match[str] | None:
        self.calls += 1
        return self.pattern.match(text)


@pytest.mark.usefixtures("empty_time_cache")
def test_a_streamed_message_matches_its_time_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingPattern(models._GO_TIME)
    monkeypatch.setattr(models, "_GO_TIME", counting)
    for content in ("h", "he", "hel", "hell", "hello"):
        assert isinstance(validate_message({**GOOD, "message": content}, "message"), Message)
    assert counting.calls == 1

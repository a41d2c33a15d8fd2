from __future__ import annotations

import json

import pytest

from sidecar.models import (
    AgentError,
    AgentStatus,
    ErrorLevel,
    Invalid,
    Message,
    MessageUpdate,
    StatusChange,
    parse_messages_body,
    parse_sse_event,
    parse_state_file,
    parse_status_body,
    validate_message,
)

T = "2024-05-01T12:00:00.123456789Z"


def raw(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"id": 1, "role": "agent", "message": "hi", "time": T}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _MISSING}


_MISSING = object()


# --- validate_message -----------------------------------------------------------------


def test_valid_message_sse_and_poll_fields() -> None:
    assert validate_message(raw(), "message") == Message(1, "agent", "hi", T)
    poll = {"id": 0, "role": "user", "content": "", "time": "2024-05-01T12:00:00Z"}
    assert validate_message(poll, "content") == Message(0, "user", "", "2024-05-01T12:00:00Z")


def test_extra_fields_are_ignored() -> None:
    assert validate_message(raw(extra=[1, 2]), "message") == Message(1, "agent", "hi", T)


@pytest.mark.parametrize("obj", [None, [], "msg", 3, [raw()]])
def test_invalid_shape(obj: object) -> None:
    result = validate_message(obj, "message")
    assert isinstance(result, Invalid)
    assert result.reason == "shape"


@pytest.mark.parametrize("mid", [_MISSING, None, True, False, -1, 1.0, "1", [1]])
def test_invalid_id(mid: object) -> None:
    result = validate_message(raw(id=mid), "message")
    assert isinstance(result, Invalid)
    assert result.reason == "id"


@pytest.mark.parametrize("role", [_MISSING, None, "assistant", "USER", "", 1])
def test_invalid_role(role: object) -> None:
    result = validate_message(raw(role=role), "message")
    assert isinstance(result, Invalid)
    assert result.reason == "role"


@pytest.mark.parametrize("role", [[], {}])
def test_unhashable_role_is_invalid(role: object) -> None:
    result = validate_message(raw(role=role), "message")
    assert isinstance(result, Invalid)
    assert result.reason == "role"


@pytest.mark.parametrize("content", [_MISSING, None, 1, ["a"], {"text": "a"}])
def test_invalid_content(content: object) -> None:
    result = validate_message(raw(message=content), "message")
    assert isinstance(result, Invalid)
    assert result.reason == "content"


def test_content_field_is_the_one_asked_for() -> None:
    # SSE uses "message"; a body with only "content" is invalid there, and vice versa.
    poll_shaped = {"id": 1, "role": "user", "content": "x", "time": T}
    result = validate_message(poll_shaped, "message")
    assert isinstance(result, Invalid)
    assert result.reason == "content"
    assert isinstance(validate_message(raw(), "content"), Invalid)


@pytest.mark.parametrize(
    "time",
    [
        _MISSING,
        None,
        1714564800,
        "",
        "2024-05-01",
        "2024-05-01T12:00:00",  # no offset
        "2024-05-01T12:00Z",  # no seconds
        "2024-05-01T12:00:00.Z",  # empty fraction
        "2024-05-01T12:00:00.12a4Z",  # a letter in the fraction (Go takes any digit count)
        "2024-05-01T12:00:00+0200",  # offset without colon
        "2024-05-01T12:00:00Z trailing",
        "2024-05-01T12:00:00Z\n",
        " 2024-05-01T12:00:00Z",
        "24-05-01T12:00:00Z",
    ],
)
def test_invalid_time(time: object) -> None:
    result = validate_message(raw(time=time), "message")
    assert isinstance(result, Invalid)
    assert result.reason == "time"


@pytest.mark.parametrize(
    "time",
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00.1Z",
        "2024-05-01T12:00:00.123456789Z",  # Go RFC3339Nano: nanoseconds
        "2024-05-01T12:00:00.123456789+02:00",
        "2024-05-01T12:00:00-07:00",
        "2024-05-01T12:00:00.5+05:30",
        "2024-12-31T23:59:59.999999999-12:00",
    ],
)
def test_valid_rfc3339_times(time: str) -> None:
    result = validate_message(raw(time=time), "message")
    assert isinstance(result, Message)
    assert result.time == time


@pytest.mark.parametrize(
    "time",
    [
        "٢٠٢٤-05-01T12:00:00Z",  # Arabic-Indic digits
        "2024-13-01T12:00:00Z",  # month 13
        "2024-05-01T25:00:00Z",  # hour 25
        "2024-05-01t12:00:00z",  # lowercase separators
        "2024-05-01 12:00:00Z",  # space instead of T
    ],
)
def test_times_go_would_reject(time: str) -> None:
    assert isinstance(validate_message(raw(time=time), "message"), Invalid)


def test_message_as_json_obj_key_order() -> None:
    obj = Message(5, "user", "c", T).as_json_obj()
    assert list(obj) == ["id", "content", "role", "time"]
    assert obj == {"id": 5, "content": "c", "role": "user", "time": T}


# --- parse_sse_event ------------------------------------------------------------------


def test_message_update() -> None:
    event = parse_sse_event("message_update", json.dumps(raw(id=7, message="héllo €")))
    assert event == MessageUpdate(Message(7, "agent", "héllo €", T))


def test_message_update_invalid_message_names_reason() -> None:
    event = parse_sse_event("message_update", json.dumps(raw(role="system")))
    assert isinstance(event, Invalid)
    assert event.reason == "role"


@pytest.mark.parametrize("event_type", ["message_update", "status_change", "agent_error"])
@pytest.mark.parametrize("data", ["", "{", "not json", '{"id": 1', "[" * 100_000])
def test_invalid_json(event_type: str, data: str) -> None:
    event = parse_sse_event(event_type, data)
    assert isinstance(event, Invalid)
    assert event.reason == "json"


@pytest.mark.parametrize("status", ["running", "stable"])
def test_status_change(status: str) -> None:
    event = parse_sse_event("status_change", json.dumps({"status": status, "agent_type": "x"}))
    assert event == StatusChange(AgentStatus(status))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ('{"status": "sleeping"}', "status"),
        ("{}", "status"),
        ('{"status": []}', "status"),
        ('"stable"', "shape"),
        ("[]", "shape"),
    ],
)
def test_status_change_invalid(data: str, reason: str) -> None:
    event = parse_sse_event("status_change", data)
    assert isinstance(event, Invalid)
    assert event.reason == reason


@pytest.mark.parametrize("level", ["error", "warning"])
def test_agent_error(level: str) -> None:
    data = json.dumps({"message": "boom", "level": level, "time": T})
    assert parse_sse_event("agent_error", data) == AgentError(ErrorLevel(level), "boom", T)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"message": "boom", "level": "fatal", "time": T}, "level"),
        ({"message": "boom", "time": T}, "level"),
        ({"message": "boom", "level": {}, "time": T}, "level"),
        ({"message": 1, "level": "error", "time": T}, "content"),
        ({"level": "error", "time": T}, "content"),
        ({"message": "boom", "level": "error", "time": "yesterday"}, "time"),
        ({"message": "boom", "level": "error"}, "time"),
        (["boom"], "shape"),
    ],
)
def test_agent_error_invalid(body: object, reason: str) -> None:
    event = parse_sse_event("agent_error", json.dumps(body))
    assert isinstance(event, Invalid)
    assert event.reason == reason


@pytest.mark.parametrize("event_type", ["screen_update", "message", "", "MESSAGE_UPDATE"])
def test_unknown_event_type_is_none(event_type: str) -> None:
    # Not even parsed: invalid JSON under an unused type is not an error.
    assert parse_sse_event(event_type, "{not json") is None
    assert parse_sse_event(event_type, json.dumps(raw())) is None


# --- bodies ---------------------------------------------------------------------------


def test_parse_status_body() -> None:
    assert parse_status_body(b'{"status":"running","agent_type":"claude"}') is (AgentStatus.RUNNING)
    bad = parse_status_body("nope")
    assert isinstance(bad, Invalid)
    assert bad.reason == "json"


def test_parse_messages_body_splits_good_and_bad() -> None:
    body = json.dumps(
        {
            "messages": [
                {"id": 0, "role": "user", "content": "q", "time": T},
                {"id": 1, "role": "bot", "content": "a", "time": T},
                {"id": 2, "role": "agent", "content": "a", "time": T},
            ]
        }
    )
    result = parse_messages_body(body)
    assert not isinstance(result, Invalid)
    good, bad = result
    assert [m.id for m in good] == [0, 2]
    assert [b.reason for b in bad] == ["role"]


@pytest.mark.parametrize("body", ["{}", '{"messages": null}', "[]", '{"messages": {}}'])
def test_parse_messages_body_shape(body: str) -> None:
    result = parse_messages_body(body)
    assert isinstance(result, Invalid)
    assert result.reason == "shape"


# --- state file -----------------------------------------------------------------------


def state_file(**overrides: object) -> str:
    base: dict[str, object] = {
        "version": 1,
        "messages": [raw(id=0, role="user", message="do it"), raw(id=1, message="done")],
        "initial_prompt": "do it",
        "initial_prompt_sent": True,
    }
    base.update(overrides)
    return json.dumps(base)


def test_state_file_version_1() -> None:
    result = parse_state_file(state_file().encode())
    assert not isinstance(result, Invalid)
    good, bad = result
    assert good == [Message(0, "user", "do it", T), Message(1, "agent", "done", T)]
    assert bad == []


def test_state_file_with_invalid_messages() -> None:
    result = parse_state_file(state_file(messages=[raw(id=0), raw(id=-3), "x"]))
    assert not isinstance(result, Invalid)
    good, bad = result
    assert [m.id for m in good] == [0]
    assert [b.reason for b in bad] == ["id", "shape"]


@pytest.mark.parametrize("version", [0, 2, "1", None, 1.5])
def test_state_file_unknown_version(version: object) -> None:
    result = parse_state_file(state_file(version=version))
    assert isinstance(result, Invalid)
    assert result.reason == "version"


@pytest.mark.parametrize("version", [[1], {"v": 1}, True, 1.0])
def test_state_file_version_must_be_the_integer_1(version: object) -> None:
    result = parse_state_file(state_file(version=version))
    assert isinstance(result, Invalid)
    assert result.reason == "version"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "json"),
        (b"{", "json"),
        (b"\xff\xfe", "json"),  # not UTF-8
        (b"[]", "shape"),
        (b'"text"', "shape"),
        (b'{"version": 1}', "shape"),
        (b'{"version": 1, "messages": {}}', "shape"),
    ],
)
def test_state_file_malformed(body: bytes, reason: str) -> None:
    result = parse_state_file(body)
    assert isinstance(result, Invalid)
    assert result.reason == reason


@pytest.mark.parametrize("bad", ["", None, "2024-05-01T12:00:00", 17])
def test_time_cache_never_admits_an_invalid_time(bad: object) -> None:
    good = {"id": 1, "role": "user", "message": "x", "time": "2024-05-01T12:00:00Z"}
    assert isinstance(validate_message(good, "message"), Message)
    # Before any valid time, and after one was cached, a bad time is still refused.
    for _ in range(2):
        result = validate_message({**good, "time": bad}, "message")
        assert isinstance(result, Invalid)
        assert result.reason == "time"


def test_empty_time_is_refused_in_a_fresh_process() -> None:
    # The time cache starts empty-handed: nothing may pass on the first call either.
    import subprocess
    import sys

    code = (
        "from sidecar.models import Invalid, validate_message as v;"
        "r = v({'id': 1, 'role': 'user', 'message': 'x', 'time': ''}, 'message');"
        "raise SystemExit(0 if isinstance(r, Invalid) and r.reason == 'time' else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=30).returncode == 0

"""The fakes themselves behave as agentapi and Coder do (SPEC §2), over real sockets."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import aiohttp
import pytest

from sidecar import models
from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served, rfc3339, serve
from tests.conftest import AgentapiFactory, CoderFactory
from tests.fakes import openapi
from tests.streams import Stream, parse_frame, ticking_clock, validate_events

needs_spec = pytest.mark.skipif(
    not openapi.SPEC_AVAILABLE, reason=openapi.SPEC_UNAVAILABLE_REASON or "spec available"
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


# --- serve / RunningServer -------------------------------------------------------------


async def test_serve_binds_loopback_and_restarts_on_the_same_port(
    http: aiohttp.ClientSession,
) -> None:
    fake = FakeAgentapi()
    async with serve(fake.app) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.port > 0
        async with http.get(server.url + "/status") as r:
            assert r.status == 200
        port = server.port
        await server.stop()
        assert not server.running
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(server.url + "/status"):
                pass
        await server.start()
        assert server.port == port
        async with http.get(server.url + "/status") as r:
            assert r.status == 200
        with pytest.raises(RuntimeError):
            await server.start()
    assert not server.running
    await server.stop()  # idempotent


# "Promptly", whatever the machine's speed: these tests serve the fakes with aiohttp's
# default grace for running handlers, far longer than the deadline they give stop(), so
# stop() meets it only if the fake ends its streams and held requests itself.
PATIENT_GRACE = 60.0
STOP_DEADLINE = 10.0


async def test_stop_closes_an_open_stream_promptly(http: aiohttp.ClientSession) -> None:
    fake = FakeAgentapi()
    async with (
        serve(fake.app, shutdown_grace=PATIENT_GRACE) as server,
        http.get(server.url + "/events") as r,
    ):
        stream = Stream(r)
        await stream.frames(1)
        async with asyncio.timeout(STOP_DEADLINE):
            await server.stop()
        with pytest.raises(aiohttp.ClientPayloadError):
            await stream.rest()
    assert fake.subscriber_count == 0


# --- agentapi: plain endpoints -----------------------------------------------------------


async def test_agentapi_status_and_messages_bodies(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = fake_agentapi.fake
    first = fake.add_message("agent", "Welcome")
    second = fake.add_message("user", "fix the bug ✓")
    assert (first, second) == (0, 1)
    fake.set_status("running")
    async with http.get(fake_agentapi.url + "/status") as r:
        status = await r.json()
        assert r.content_type == "application/json"
    assert status["status"] == "running"
    assert status["agent_type"] == "claude"
    assert status["transport"] == "pty"
    async with http.get(fake_agentapi.url + "/messages") as r:
        body = await r.json()
        raw = await r.read()
    assert [(m["id"], m["role"], m["content"]) for m in body["messages"]] == [
        (0, "agent", "Welcome"),
        (1, "user", "fix the bug ✓"),
    ]
    assert all(m["time"].endswith("Z") for m in body["messages"])
    assert models.parse_status_body(json.dumps(status)) == models.AgentStatus.RUNNING
    parsed = models.parse_messages_body(raw)
    assert not isinstance(parsed, models.Invalid)
    assert [m.content for m in parsed[0]] == ["Welcome", "fix the bug ✓"]
    assert parsed[1] == []
    if openapi.SPEC_AVAILABLE:
        openapi.validate_response("/status", "get", 200, "application/json", status)
        openapi.validate_response("/messages", "get", 200, "application/json", body)


@needs_spec
async def test_agentapi_bodies_validate_against_openapi(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = fake_agentapi.fake
    fake.add_message("agent", "hi")
    checks: list[tuple[str, str, dict[str, Any] | None]] = [
        ("get", "/status", None),
        ("get", "/messages", None),
        ("post", "/message", {"type": "user", "content": "do it"}),
        ("post", "/message", {"type": "user", "content": "again"}),  # running → 500
        ("post", "/message", {"type": "shout", "content": "x"}),  # 422
        ("post", "/message", {"type": "raw", "content": "\x1b"}),
    ]
    statuses = []
    for method, path, payload in checks:
        async with http.request(method, fake_agentapi.url + path, json=payload) as r:
            statuses.append(r.status)
            openapi.validate_response(path, method, r.status, r.content_type, await r.json())
    assert statuses == [200, 200, 200, 500, 422, 200]
    with pytest.raises(openapi.ValidationError):
        openapi.validate_component("StatusResponseBody", {"status": "busy", "agent_type": "x"})


async def test_agentapi_post_message_rules(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = fake_agentapi.fake
    url = fake_agentapi.url + "/message"

    async def send_error(content: str) -> str:
        async with http.post(url, json={"type": "user", "content": content}) as r:
            assert r.status == 500
            assert r.content_type == "application/problem+json"
            body = await r.json()
        # huma's answer to a plain Go error: the error itself is in errors[0]
        assert body["detail"] == "unexpected error occurred"
        (error,) = body["errors"]
        assert set(error) == {"message"}
        return str(error["message"])

    async with http.post(url, json={"type": "raw", "content": "\x03"}) as r:
        assert (r.status, await r.json()) == (
            200,
            {"$schema": fake_agentapi.url + "/schemas/MessageResponseBody.json", "ok": True},
        )
    assert not fake.messages
    assert await send_error(" \t\n") == "failed to send message: message must not be empty"
    async with http.post(url, json={"type": "user", "content": "go", "extra": 1}) as r:
        assert r.status == 422
    async with http.post(url, data=b"{not json") as r:
        assert r.status == 422
    # agentapi trims the message before it sends it
    async with http.post(url, json={"type": "user", "content": " padded\n"}) as r:
        assert r.status == 200
    assert [(m.role, m.content) for m in fake.messages] == [("user", "padded")]
    assert fake.status == "running"
    assert await send_error("more") == (
        "failed to send message: message can only be sent when the agent is waiting for user input"
    )


async def test_agentapi_knobs_and_counters(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = fake_agentapi.fake
    fake.events_available = False
    async with http.get(fake_agentapi.url + "/events") as r:
        assert r.status == 404
        assert await r.text() == "404 page not found\n"
    fake.events_available = True
    fake.fail_requests = True
    for path in ("/status", "/messages", "/events"):
        async with http.get(fake_agentapi.url + path) as r:
            assert r.status == 500
            assert r.content_type == "application/problem+json"
            body = await r.json()
            if openapi.SPEC_AVAILABLE:
                openapi.validate_response(path, "get", 500, r.content_type, body)
    fake.fail_requests = False
    async with http.get(fake_agentapi.url + "/status") as r:
        assert r.status == 200
    assert fake.requests == {"/events": 2, "/status": 2, "/messages": 1}
    assert fake.subscriber_count == 0


# --- agentapi: /events -------------------------------------------------------------------


async def test_events_replay_order_and_frame_format(
    make_fake_agentapi: AgentapiFactory, http: aiohttp.ClientSession
) -> None:
    fake_agentapi = await make_fake_agentapi(now=ticking_clock())
    fake = fake_agentapi.fake
    fake.add_message("agent", "Welcome")
    fake.add_message("user", 'say "hi"\nplease')
    fake.add_error("warning", "slow disk")
    fake.add_error("error", "agent crashed")
    fake.set_status("running")
    async with http.get(fake_agentapi.url + "/events") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream"
        stream = Stream(r)
        events = await stream.events(5)
        # live events after the replay
        await fake.wait_for_subscribers(1)
        fake.update_last('say "hi"\nplease now')
        fake.update_last('say "hi"\nplease now')  # unchanged: agentapi emits nothing
        fake.set_status("stable")
        fake.set_status("stable")  # unchanged: nothing
        fake.add_error("error", "boom")
        live = await stream.events(3)
    assert [name for name, _ in events] == [
        "message_update",
        "message_update",
        "status_change",
        "agent_error",
        "agent_error",
    ]
    assert events[1][1]["message"] == 'say "hi"\nplease'
    assert "content" not in events[1][1]
    assert events[2][1] == {"status": "running", "agent_type": "claude"}
    assert [(e[1]["level"], e[1]["message"]) for e in events[3:]] == [
        ("warning", "slow disk"),
        ("error", "agent crashed"),
    ]
    assert [(name, data.get("id"), data.get("status")) for name, data in live] == [
        ("message_update", 1, None),
        ("status_change", None, "stable"),
        ("agent_error", None, None),
    ]
    # updated in place: the same id, and a terminal update moves the time
    assert live[0][1]["time"] > events[1][1]["time"]
    # compact JSON, no id:, no comments / keepalives
    assert b"id:" not in stream.raw
    assert b"\n:" not in stream.raw
    assert not stream.raw.startswith(b":")
    assert b'data: {"id":0,"role":"agent","message":"Welcome","time":"' in stream.raw
    for name, data in events + live:
        parsed = models.parse_sse_event(name, json.dumps(data))
        assert parsed is not None, name
        assert not isinstance(parsed, models.Invalid), (name, data, parsed)
    validate_events(events + live)


async def test_events_replays_at_most_100_errors(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = fake_agentapi.fake
    for i in range(130):
        fake.add_error("warning", f"e{i}")
    async with http.get(fake_agentapi.url + "/events") as r:
        events = await Stream(r).events(101)
    assert events[0][0] == "status_change"
    assert [data["message"] for _, data in events[1:]] == [f"e{i}" for i in range(30, 130)]


async def test_drop_every_k_ends_each_stream_cleanly(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = fake_agentapi.fake
    fake.add_message("agent", "a")
    fake.drop_every_k = 3
    async with http.get(fake_agentapi.url + "/events") as r:
        stream = Stream(r)
        await stream.frames(2)
        for i in range(5):
            fake.add_message("agent", f"m{i}")
        live = [parse_frame(f) for f in await stream.frames(3)]
        assert await stream.rest() == b""  # a clean end of the response
    assert [data["message"] for _, data in live] == ["m0", "m1", "m2"]
    await fake.wait_for(lambda: fake.subscriber_count == 0)


async def test_slow_subscriber_is_cut_after_its_buffer_fills(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = fake_agentapi.fake
    fake.add_message("agent", "start")
    async with http.get(fake_agentapi.url + "/events") as r:
        stream = Stream(r)
        await stream.frames(2)
        # Nothing yields to the loop here, so the writer cannot drain: the subscriber
        # is 1,024 events behind when the 1,025th arrives.
        for i in range(1_100):
            fake.update_last(f"tick {i}")
        assert fake.subscriber_count == 0
        live = await stream.events(1_024)
        assert await stream.rest() == b""
    assert live[-1][1]["message"] == "tick 1023"
    # a new subscriber sees the current state
    async with http.get(fake_agentapi.url + "/events") as r:
        (update, _status) = await Stream(r).events(2)
    assert update[1]["message"] == "tick 1099"


async def test_restart_replaces_history_and_cuts_streams(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = fake_agentapi.fake
    for i in range(4):
        fake.add_message("agent" if i % 2 == 0 else "user", f"old {i}")
    fake.add_error("error", "before restart")
    async with http.get(fake_agentapi.url + "/events") as r:
        stream = Stream(r)
        await stream.frames(6)
        fake.restart([("agent", "fresh")], status="running")
        with pytest.raises(aiohttp.ClientPayloadError):
            await stream.rest()
    async with http.get(fake_agentapi.url + "/events") as r:
        events = await Stream(r).events(2)
    assert events == [
        (
            "message_update",
            {"id": 0, "role": "agent", "message": "fresh", "time": events[0][1]["time"]},
        ),
        ("status_change", {"status": "running", "agent_type": "claude"}),
    ]
    assert fake.errors == ()
    validate_events(events)


async def test_drop_streams_and_inject_raw(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = fake_agentapi.fake
    async with http.get(fake_agentapi.url + "/events") as r:
        stream = Stream(r)
        await stream.frames(1)
        fake.inject_raw(b"event: message_update\ndata: {broken\n\n")
        assert await stream.frames(1) == [b"event: message_update\ndata: {broken"]
        fake.drop_streams(abort=False)
        assert await stream.rest() == b""
    assert fake.stream_connects == 1


async def test_state_file_format_and_atomic_write(tmp_path: Path) -> None:
    fake = FakeAgentapi()
    fake.add_message("agent", "hello", time=datetime(2025, 1, 2, 3, 4, 5, 120000, tzinfo=UTC))
    fake.add_message("user", "ünïcode")
    target = tmp_path / "state" / "agentapi.json"
    fake.write_state_file(target)
    state = json.loads(target.read_bytes())
    assert set(state) == {"version", "messages", "initial_prompt", "initial_prompt_sent"}
    assert state["version"] == 1
    assert state["initial_prompt"] == ""
    assert state["initial_prompt_sent"] is False  # no initial prompt was ever sent
    assert state["messages"][0] == {
        "id": 0,
        "message": "hello",
        "role": "agent",
        "time": "2025-01-02T03:04:05.12Z",
    }
    assert [p.name for p in target.parent.iterdir()] == ["agentapi.json"]
    parsed = models.parse_state_file(target.read_bytes())
    assert not isinstance(parsed, models.Invalid)
    assert [m.content for m in parsed[0]] == ["hello", "ünïcode"]


def test_rfc3339_matches_go_rfc3339nano() -> None:
    assert rfc3339(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02T03:04:05Z"
    assert rfc3339(datetime(2025, 1, 2, 3, 4, 5, 500, tzinfo=UTC)) == "2025-01-02T03:04:05.0005Z"


# --- Coder: log-snapshot ---------------------------------------------------------------


def snapshot_body(*messages: tuple[int, str, str]) -> bytes:
    return json.dumps(
        {
            "messages": [
                {"id": i, "content": c, "role": role, "time": "2025-01-02T03:04:05Z"}
                for i, role, c in messages
            ]
        },
        separators=(",", ":"),
    ).encode()


class SnapshotRequestOptions(TypedDict, total=False):
    """post_snapshot's keyword arguments, for a test that picks them case by case."""

    token: str | None
    task: str | None
    query: str


async def post_snapshot(
    http: aiohttp.ClientSession,
    served: Served[FakeCoder],
    body: bytes,
    *,
    token: str | None = "default",
    task: str | None = None,
    query: str = "format=agentapi",
) -> tuple[int, Any]:
    coder = served.fake
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Coder-Session-Token"] = coder.token if token == "default" else token
    path = coder.snapshot_path(task) + (f"?{query}" if query else "")
    async with http.post(served.url + path, data=body, headers=headers) as r:
        payload = await r.json() if r.status != 204 else None
        if payload is not None:
            assert r.content_type == "application/json"
        return r.status, payload


async def test_snapshot_accepted_and_last_write_wins(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession
) -> None:
    coder = fake_coder.fake
    before = datetime.now(UTC)
    assert await post_snapshot(http, fake_coder, snapshot_body((1, "user", "a"))) == (204, None)
    assert await post_snapshot(http, fake_coder, b'{"messages":[]}') == (204, None)
    body = snapshot_body((1, "user", "a"), (2, "agent", "b"))
    assert await post_snapshot(http, fake_coder, body) == (204, None)
    assert coder.stored_snapshot() == json.loads(body)
    assert coder.snapshots[coder.task_id].body == body
    assert coder.snapshots[coder.task_id].at >= before
    posts = coder.snapshot_posts()
    assert [p.status for p in posts] == [204, 204, 204]
    assert posts[-1].body == body
    assert posts[-1].query == (("format", "agentapi"),)
    assert posts[-1].headers["Coder-Session-Token"] == coder.token
    assert posts[0].at <= posts[1].at <= posts[2].at


async def test_snapshot_body_limit_is_65536_bytes(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession
) -> None:
    def padded(size: int) -> bytes:
        body = snapshot_body((1, "agent", ""))
        content = "x" * (size - len(body))
        result = snapshot_body((1, "agent", content))
        assert len(result) == size
        return result

    assert (await post_snapshot(http, fake_coder, padded(65_536)))[0] == 204
    status, error = await post_snapshot(http, fake_coder, padded(65_537))
    assert status == 400
    assert "too large" in error["detail"]
    stored = fake_coder.fake.stored_snapshot()
    assert stored is not None
    assert len(stored["messages"][0]["content"]) > 65_000
    assert (await post_snapshot(http, fake_coder, padded(200_000)))[0] == 400


BAD_UUID_TOKEN = "not-a-uuid"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no token", 401),
        ("token not a uuid", 401),
        ("unknown token", 401),
        ("task not a uuid", 400),
        ("no query", 400),
        ("extra query parameter", 400),
        ("format twice", 400),
        ("wrong format", 400),
        ("unknown task", 404),
        ("endpoint missing", 404),
        ("not json", 400),
        ("json array", 400),
        ("messages missing", 400),
        ("messages null", 400),
        ("messages not an array", 400),
        ("message id a string", 400),
        ("message time not rfc3339", 400),
        ("empty messages", 204),
        ("unknown fields ignored", 204),
    ],
)
async def test_snapshot_error_statuses(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession, case: str, expected: int
) -> None:
    coder = fake_coder.fake
    body = snapshot_body((1, "user", "a"))
    kwargs: SnapshotRequestOptions = {}
    match case:
        case "no token":
            kwargs["token"] = None
        case "token not a uuid":
            coder.valid_tokens.add(BAD_UUID_TOKEN)
            kwargs["token"] = BAD_UUID_TOKEN
        case "unknown token":
            kwargs["token"] = str(uuid.uuid4())
        case "task not a uuid":
            kwargs["task"] = "my-task"
        case "no query":
            kwargs["query"] = ""
        case "extra query parameter":
            kwargs["query"] = "format=agentapi&x=1"
        case "format twice":
            kwargs["query"] = "format=agentapi&format=agentapi"
        case "wrong format":
            kwargs["query"] = "format=json"
        case "unknown task":
            kwargs["task"] = str(uuid.uuid4())
        case "endpoint missing":
            coder.endpoint_missing = True
        case "not json":
            body = b"{"
        case "json array":
            body = b"[]"
        case "messages missing":
            body = b"{}"
        case "messages null":
            body = b'{"messages":null}'
        case "messages not an array":
            body = b'{"messages":{}}'
        case "message id a string":
            body = snapshot_body((1, "user", "a")).replace(b'"id":1', b'"id":"1"')
        case "message time not rfc3339":
            body = b'{"messages":[{"id":1,"content":"a","role":"user","time":"yesterday"}]}'
        case "empty messages":
            body = b'{"messages":[]}'
        case "unknown fields ignored":
            body = b'{"messages":[],"extra":true}'
    status, error = await post_snapshot(http, fake_coder, body, **kwargs)
    assert status == expected, error
    if expected == 204:
        assert coder.stored_snapshot() == json.loads(body)
    else:
        assert set(error) <= {"message", "detail"}
        assert isinstance(error["message"], str)
        assert error["message"]
        assert coder.snapshots == {}
    assert coder.requests[-1].status == expected


# --- Coder: logs read back -------------------------------------------------------------


async def test_logs_read_back_maps_roles_and_a_bad_role_poisons_the_read(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession
) -> None:
    coder = fake_coder.fake
    logs_url = f"{fake_coder.url}/api/v2/tasks/me/{coder.task_id}/logs"
    async with http.get(logs_url) as r:
        assert (r.status, await r.json()) == (
            200,
            {"logs": [], "snapshot": False, "snapshot_at": None},
        )
    body = snapshot_body((1, "user", "q"), (2, "agent", "a"))
    assert (await post_snapshot(http, fake_coder, body))[0] == 204
    async with http.get(logs_url) as r:
        logs = await r.json()
    assert logs["snapshot"] is True
    assert datetime.fromisoformat(logs["snapshot_at"].replace("Z", "+00:00"))
    assert [(e["id"], e["type"], e["content"]) for e in logs["logs"]] == [
        (1, "input", "q"),
        (2, "output", "a"),
    ]
    poisoned = snapshot_body((1, "user", "q"), (2, "system", "x"))
    assert (await post_snapshot(http, fake_coder, poisoned))[0] == 204  # accepted on write
    async with http.get(logs_url) as r:
        assert r.status == 500
        assert "system" in (await r.json())["detail"]
    async with http.get(f"{fake_coder.url}/api/v2/tasks/me/{uuid.uuid4()}/logs") as r:
        assert r.status == 404


# --- Coder: app-status and gitsshkey ---------------------------------------------------


async def patch_status(
    http: aiohttp.ClientSession,
    served: Served[FakeCoder],
    body: dict[str, Any],
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Coder-Session-Token": token or served.fake.token}
    url = served.url + "/api/v2/workspaceagents/me/app-status"
    async with http.patch(url, json=body, headers=headers) as r:
        assert r.content_type == "application/json"
        return r.status, await r.json()


async def test_app_status_rules_and_no_dedupe(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession
) -> None:
    coder = fake_coder.fake
    ok = {"app_slug": "claude-code", "state": "working", "message": "Working", "uri": ""}
    assert (await patch_status(http, fake_coder, ok))[0] == 200
    assert (await patch_status(http, fake_coder, ok))[0] == 200  # same again: recorded again
    exactly_160 = "é" * 80
    assert (await patch_status(http, fake_coder, {**ok, "message": exactly_160}))[0] == 200
    for state in ("idle", "complete", "failure"):
        assert (await patch_status(http, fake_coder, {**ok, "state": state}))[0] == 200
    status, error = await patch_status(http, fake_coder, {**ok, "message": "é" * 80 + "x"})
    assert (status, error["message"]) == (400, "Message is too long.")
    assert (await patch_status(http, fake_coder, {**ok, "state": "stable"}))[0] == 400
    assert (await patch_status(http, fake_coder, {**ok, "app_slug": "other"}))[0] == 400
    assert (await patch_status(http, fake_coder, ok, token=str(uuid.uuid4())))[0] == 401
    assert [(s.state, s.message) for s in coder.app_statuses] == [
        ("working", "Working"),
        ("working", "Working"),
        ("working", exactly_160),
        ("idle", "Working"),
        ("complete", "Working"),
        ("failure", "Working"),
    ]
    assert len([r for r in coder.requests if r.method == "PATCH"]) == 10


async def test_gitsshkey_needs_a_valid_token(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession
) -> None:
    coder = fake_coder.fake
    url = fake_coder.url + "/api/v2/workspaceagents/me/gitsshkey"
    async with http.get(url, headers={"Coder-Session-Token": coder.token}) as r:
        assert r.status == 200
        assert (await r.json())["public_key"].startswith("ssh-ed25519 ")
    old = coder.token
    assert coder.rotate_token() != old
    async with http.get(url, headers={"Coder-Session-Token": old}) as r:
        assert r.status == 401
        assert set(await r.json()) == {"message", "detail"}


# --- Coder: fault script ----------------------------------------------------------------


async def test_fail_next_is_consumed_in_order_by_matching_requests(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession
) -> None:
    coder = fake_coder.fake
    coder.fail_next(503, times=2, retry_after=7)
    coder.fail_next(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    coder.fail_next(502, path_contains="app-status")
    body = snapshot_body((1, "user", "a"))
    url = fake_coder.url + coder.snapshot_path() + "?format=agentapi"
    seen: list[tuple[int, str | None]] = []
    for _ in range(4):
        async with http.post(url, data=body, headers={"Coder-Session-Token": coder.token}) as r:
            seen.append((r.status, r.headers.get("Retry-After")))
    assert seen == [
        (503, "7"),
        (503, "7"),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT"),
        (204, None),
    ]
    assert coder.pending_faults == 1
    ok = {"app_slug": "claude-code", "state": "idle", "message": "", "uri": ""}
    assert (await patch_status(http, fake_coder, ok))[0] == 502
    assert (await patch_status(http, fake_coder, ok))[0] == 200
    assert coder.pending_faults == 0
    assert [r.fault for r in coder.snapshot_posts()] == ["fail", "fail", "fail", None]


async def test_hang_next_holds_until_the_client_gives_up(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession
) -> None:
    coder = fake_coder.fake
    coder.hang_next()
    url = fake_coder.url + coder.snapshot_path() + "?format=agentapi"
    headers = {"Coder-Session-Token": coder.token}
    body = snapshot_body((1, "user", "a"))
    with pytest.raises(TimeoutError):
        async with http.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=0.3)
        ):
            pass
    assert coder.requests[-1].fault == "hang"
    assert coder.requests[-1].status is None
    async with http.post(url, data=body, headers=headers) as r:
        assert r.status == 204


async def test_hang_next_is_released_when_the_server_stops(http: aiohttp.ClientSession) -> None:
    coder = FakeCoder()
    coder.hang_next()
    async with serve(coder.app, shutdown_grace=PATIENT_GRACE) as server:
        url = server.url + coder.snapshot_path() + "?format=agentapi"
        headers = {"Coder-Session-Token": coder.token}

        async def post() -> int:
            async with http.post(url, data=b'{"messages":[]}', headers=headers) as r:
                return r.status

        pending = asyncio.create_task(post())
        await coder.wait_for(lambda: len(coder.requests) == 1)
        async with asyncio.timeout(STOP_DEADLINE):
            await server.stop()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pending
        await server.start()
        assert (await post()) == 204  # restarted on the same port, fault consumed


async def test_close_next_drops_the_connection_without_a_response(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession
) -> None:
    coder = fake_coder.fake
    coder.close_next(times=1)
    body = snapshot_body((1, "user", "a"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_snapshot(http, fake_coder, body)
    assert coder.requests[-1].fault == "close"
    assert coder.requests[-1].body == body
    assert coder.stored_snapshot() is None
    assert (await post_snapshot(http, fake_coder, body))[0] == 204


async def test_wait_for_wakes_on_requests_and_times_out(
    fake_coder: Served[FakeCoder], http: aiohttp.ClientSession
) -> None:
    coder = fake_coder.fake
    waiter = asyncio.create_task(coder.wait_for(lambda: coder.stored_snapshot() is not None, 5))
    await post_snapshot(http, fake_coder, b'{"messages":[]}')
    await waiter
    with pytest.raises(TimeoutError, match="1 requests"):
        await coder.wait_for(lambda: len(coder.requests) > 1, timeout=0.05)


async def test_factories_start_independent_fakes(
    make_fake_agentapi: AgentapiFactory, make_fake_coder: CoderFactory, http: aiohttp.ClientSession
) -> None:
    first, second = await make_fake_agentapi(agent_type="aider"), await make_fake_agentapi()
    coder = await make_fake_coder(app_slug="ccw")
    assert first.server.port != second.server.port
    async with http.get(first.url + "/status") as r:
        assert (await r.json())["agent_type"] == "aider"
    assert coder.fake.known_slugs == {"ccw"}
    assert second.fake.requests == {}

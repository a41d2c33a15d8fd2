"""The agentapi fake behaves as agentapi's source does (v0.11.8, v0.12.1, main): the busy
lock, message 0, restarts and lazy state loading, messages changed after the fact,
versions and transports, the Host check, stalled subscribers. Real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.standins.agentapi import WELCOME_SCREEN, FakeAgentapi, SendRejected
from sidecar.standins.agentapi_state import read_state
from sidecar.standins.server import Served, serve
from tests.conftest import AgentapiFactory
from tests.fakes import openapi
from tests.streams import Stream, ticking_clock, validate_events

needs_spec = pytest.mark.skipif(
    not openapi.SPEC_AVAILABLE, reason=openapi.SPEC_UNAVAILABLE_REASON or "spec available"
)
DEADLINE = 5.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def real(make_fake_agentapi: AgentapiFactory) -> AsyncIterator[Served[FakeAgentapi]]:
    """FakeAgentapi.real() on a loopback port, with a clock that ticks a second a reading."""
    fake = FakeAgentapi.real(now=ticking_clock(), send_duration=None)
    async with serve(fake.app) as server:
        yield Served(fake, server)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def post_user(http: aiohttp.ClientSession, url: str, content: str) -> tuple[int, Any]:
    async with http.post(url + "/message", json={"type": "user", "content": content}) as r:
        return r.status, await r.json()


# --- the busy lock -------------------------------------------------------------------------


async def test_a_send_holds_status_and_messages_while_events_flow(
    real: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = real.fake
    async with http.get(real.url + "/events") as r:
        stream = Stream(r)
        (banner, status) = await stream.events(2)
        assert (banner[1]["id"], banner[1]["message"]) == (0, WELCOME_SCREEN)
        assert status[1]["status"] == "stable"
        send = asyncio.create_task(post_user(http, real.url, "fix the flaky test"))
        await fake.wait_for_send()
        assert fake.busy
        status_answer = asyncio.create_task(get_json(http, real.url + "/status"))
        messages_answer = asyncio.create_task(get_json(http, real.url + "/messages"))
        await fake.wait_for(lambda: fake.requests["/status"] == fake.requests["/messages"] == 1)
        # The send turned the status `running` on /events at once; more frames flow while
        # /status and /messages, asked before them, still wait on the lock.
        (running,) = await stream.events(1)
        assert running == ("status_change", {"status": "running", "agent_type": "claude"})
        fake.rewrite(0, WELCOME_SCREEN + "\n> fix the flaky test")
        (echo,) = await stream.events(1)
        assert echo[1]["id"] == 0
        assert not status_answer.done()
        assert not messages_answer.done()
        assert not send.done()
        fake.release_send()
        assert await send == (
            200,
            {"$schema": real.url + "/schemas/MessageResponseBody.json", "ok": True},
        )
        assert (await status_answer)["status"] == "running"
        listed = (await messages_answer)["messages"]
        (user,) = await stream.events(1)
    assert [(m["id"], m["role"], m["content"]) for m in listed] == [
        (0, "agent", WELCOME_SCREEN + "\n> fix the flaky test"),
        (1, "user", "fix the flaky test"),
    ]
    assert user[1]["id"] == 1
    # the user message is timed when the send began, before the echo's update
    assert user[1]["time"] < echo[1]["time"]
    assert not fake.busy


async def test_a_timed_send_holds_the_lock_for_its_duration(
    make_fake_agentapi: AgentapiFactory, http: aiohttp.ClientSession
) -> None:
    served = await make_fake_agentapi(send_duration=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await post_user(http, served.url, "go"))[0] == 200
    assert loop.time() - started >= 0.3
    assert [m.content for m in served.fake.messages] == ["go"]


async def test_begin_send_plays_a_send_without_a_client(
    make_fake_agentapi: AgentapiFactory, http: aiohttp.ClientSession
) -> None:
    served = await make_fake_agentapi(send_duration=None)
    fake = served.fake
    send = fake.begin_send("  look at CI  ")
    await fake.wait_for_send()
    status_answer = asyncio.create_task(get_json(http, served.url + "/status"))
    await fake.wait_for(lambda: fake.requests["/status"] == 1)
    assert not status_answer.done()
    fake.release_send()
    await send
    assert (await status_answer)["status"] == "running"
    assert [(m.role, m.content) for m in fake.messages] == [("user", "look at CI")]
    # A send that the terminal never reacts to fails, and adds nothing.
    fake.set_status("stable")
    failing = fake.begin_send("again")
    await fake.wait_for_send()
    fake.release_send("failed to wait for processing to start: timeout waiting for condition")
    with pytest.raises(SendRejected, match="timeout waiting for condition"):
        await failing
    assert len(fake.messages) == 1
    assert fake.status == "stable"


async def test_a_0_11_send_silences_events_until_it_ends(
    make_fake_agentapi: AgentapiFactory, http: aiohttp.ClientSession
) -> None:
    served = await make_fake_agentapi(version="0.11", send_duration=None)
    fake = served.fake
    fake.add_message("agent", "Ready.")
    async with http.get(served.url + "/events") as r:
        stream = Stream(r)
        await stream.events(2)
        send = asyncio.create_task(post_user(http, served.url, "build it"))
        await fake.wait_for_send()
        fake.update_last("Ready. (screen redrawn)")
        # 0.11's send holds the conversation's lock: its emitter has not moved.
        assert [m.content for m in fake.announced] == ["Ready."]
        assert fake.messages[-1].content == "Ready. (screen redrawn)"
        fake.release_send()
        assert (await send)[0] == 200
        events = await stream.events(3)
    assert [(name, data.get("id"), data.get("status")) for name, data in events] == [
        ("message_update", 0, None),
        ("message_update", 1, None),
        ("status_change", None, "running"),
    ]
    validate_events(events, version="0.11")


async def test_0_11_checks_the_status_before_the_message(
    make_fake_agentapi: AgentapiFactory, http: aiohttp.ClientSession
) -> None:
    served = await make_fake_agentapi(version="0.11", status="running")
    status, body = await post_user(http, served.url, "   ")
    assert status == 500
    assert "waiting for user input" in body["errors"][0]["message"]
    served.fake.set_status("stable")
    status, body = await post_user(http, served.url, "   ")
    assert body["errors"][0]["message"] == "failed to send message: message must not be empty"


# --- ACP ---------------------------------------------------------------------------------


async def test_acp_holds_the_lock_for_the_turn_and_counts_ids(
    make_fake_agentapi: AgentapiFactory, http: aiohttp.ClientSession
) -> None:
    served = await make_fake_agentapi(transport="acp", send_duration=None)
    fake = served.fake
    assert not fake.messages  # no message 0
    async with http.get(served.url + "/events") as r:
        stream = Stream(r)
        assert (await stream.events(1))[0][1]["status"] == "stable"
        send = asyncio.create_task(post_user(http, served.url, "hello"))
        await fake.wait_for_send()
        (running,) = await stream.events(1)
        assert running[1]["status"] == "running"
        # the user message and the agent's placeholder reach /events with the first chunk
        assert not fake.announced
        placeholder_time = fake.messages[-1].time
        fake.update_last("Hi")
        fake.update_last("Hi there")
        chunks = await stream.events(3)
        status_answer = asyncio.create_task(get_json(http, served.url + "/status"))
        await fake.wait_for(lambda: fake.requests["/status"] == 1)
        assert not status_answer.done()  # the whole turn holds the lock
        fake.release_send()
        assert (await send)[0] == 200
        assert (await status_answer)["status"] == "stable"
        (stable,) = await stream.events(1)
        # a failed prompt: its placeholder goes without an event
        failed = asyncio.create_task(post_user(http, served.url, "again"))
        await fake.wait_for_send()
        fake.update_last("partial")
        await stream.events(3)  # running, the user message, the placeholder
        fake.release_send("prompt failed: agent process exited")
        status, body = await failed
        (after,) = await stream.events(1)
        listed = (await get_json(http, served.url + "/messages"))["messages"]
    assert [(d["id"], d["role"], d["message"]) for _, d in chunks] == [
        (0, "user", "hello"),
        (1, "agent", "Hi"),
        (1, "agent", "Hi there"),
    ]
    assert fake.messages[1].time == placeholder_time  # ACP updates keep the time
    assert stable[1]["status"] == "stable"
    assert status == 500
    assert (
        body["errors"][0]["message"]
        == "failed to send message: prompt failed: agent process exited"
    )
    assert after == ("status_change", {"status": "stable", "agent_type": "claude"})
    assert [(m["id"], m["role"]) for m in listed] == [(0, "user"), (1, "agent"), (2, "user")]
    # the counter went on past the removed placeholder
    assert fake.add_message("agent", "next") == 4
    with pytest.raises(ValueError, match="no state file"):
        fake.write_state_file(Path("never-written.json"))
    assert await fake.save_state(Path("never-written.json")) == "unsupported"


# --- message 0 and restarts ------------------------------------------------------------------


async def test_a_terminal_conversation_starts_with_message_0(http: aiohttp.ClientSession) -> None:
    fake = FakeAgentapi.real(screen=None, now=ticking_clock())
    async with serve(fake.app) as server:
        body = await get_json(http, server.url + "/messages")
        (empty,) = body["messages"]
        assert (empty["id"], empty["role"], empty["content"]) == (0, "agent", "")
        assert (await get_json(http, server.url + "/status"))["status"] == "running"
        async with http.get(server.url + "/events") as r:
            stream = Stream(r)
            replay = await stream.events(2)
            fake.show_first_screen()
            (drawn,) = await stream.events(1)
    assert replay[0] == (
        "message_update",
        {"id": 0, "role": "agent", "message": "", "time": empty["time"]},
    )
    assert drawn[1]["id"] == 0
    assert drawn[1]["message"] == WELCOME_SCREEN
    assert drawn[1]["time"] > empty["time"]
    with pytest.raises(ValueError, match="empty message 0 alone"):
        fake.show_first_screen()


async def test_restart_without_state_is_message_0_alone(
    real: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = real.fake
    fake.send_duration = 0.0
    assert (await post_user(http, real.url, "first task"))[0] == 200
    assert fake.add_message("agent", "Done.") == 2
    fake.restore_failed()
    async with http.get(real.url + "/events") as r:
        stream = Stream(r)
        await stream.events(5)
        fake.restart(status="running", ready=False)
        with pytest.raises(aiohttp.ClientPayloadError):
            await stream.rest()
    assert [(m.id, m.content) for m in fake.messages] == [(0, "")]
    assert fake.errors == ()
    async with http.get(real.url + "/events") as r:
        replay = await Stream(r).events(2)
    assert [(name, data.get("id")) for name, data in replay] == [
        ("message_update", 0),
        ("status_change", None),
    ]
    fake.show_first_screen()
    fake.set_status("stable")
    fake.agent_ready()
    assert (await post_user(http, real.url, "second task"))[0] == 200
    assert [m.id for m in fake.messages] == [0, 1]  # ids from 0 again


async def test_a_saved_state_is_loaded_once_the_agent_is_ready(
    real: Served[FakeAgentapi], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake = real.fake
    fake.send_duration = 0.0
    assert (await post_user(http, real.url, "port the parser"))[0] == 200
    fake.add_message("agent", "Ported; 3 tests fail.")
    fake.set_status("stable")
    assert (await post_user(http, real.url, "fix them"))[0] == 200
    fake.add_message("agent", "All green.")
    saved = [(m.id, m.role, m.content, m.time) for m in fake.messages]
    state = tmp_path / "agentapi-state.json"
    assert await fake.save_state(state) == "saved"
    fake.restart(status="running", ready=False)
    async with http.get(real.url + "/events") as r:
        stream = Stream(r)
        await stream.events(2)
        fake.show_first_screen()
        (drawn,) = await stream.events(1)
        # until the agent is ready the conversation is message 0 alone
        assert [
            (m["id"], m["content"])
            for m in (await get_json(http, real.url + "/messages"))["messages"]
        ] == [(0, WELCOME_SCREEN)]
        assert fake.agent_ready(state)
        loaded = await stream.events(len(saved))
    assert drawn[1]["message"] == WELCOME_SCREEN
    assert [(d["id"], d["role"], d["message"], d["time"]) for _, d in loaded] == saved
    assert [(m.id, m.role, m.content, m.time) for m in fake.messages] == saved
    assert not fake.dirty  # loading is not a change: the next save is skipped
    assert await fake.save_state(state) == "unchanged"
    validate_events(loaded)


async def test_a_shorter_state_leaves_the_extra_messages_unannounced(
    real: Served[FakeAgentapi], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake = real.fake
    for i in range(4):
        fake.add_message("user" if i % 2 == 0 else "agent", f"live {i}")
    async with http.get(real.url + "/events") as r:
        stream = Stream(r)
        await stream.events(6)
        fake.load_state(read_state_of(tmp_path, [(0, "agent", "old banner"), (1, "user", "old")]))
        loaded = await stream.events(2)
        fake.add_message("agent", "after the load")
        (after,) = await stream.events(1)
    async with http.get(real.url + "/events") as r:
        replay = await Stream(r).events(4)
    assert [d["message"] for _, d in loaded] == ["old banner", "old"]
    # ids 2..4 vanished without a word; the next message is index 2 again
    assert after[1]["id"] == 2
    assert [d.get("message") for _, d in replay[:3]] == ["old banner", "old", "after the load"]


def read_state_of(tmp_path: Path, messages: list[tuple[int, str, str]]) -> Any:
    """A state file holding `messages`, read back as agentapi reads it."""
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "messages": [
                    {"id": i, "message": text, "role": role, "time": "2025-01-02T03:04:05Z"}
                    for i, role, text in messages
                ],
                "initial_prompt": "",
                "initial_prompt_sent": False,
            }
        )
    )
    state = read_state(path)
    assert isinstance(state, list)
    return state


async def test_main_reports_running_until_the_agent_is_ready(
    make_fake_agentapi: AgentapiFactory, http: aiohttp.ClientSession
) -> None:
    main = await make_fake_agentapi(version="main", message0=True, ready=False)
    released = await make_fake_agentapi(version="0.12", message0=True, ready=False)
    for served in (main, released):
        served.fake.show_first_screen()
    assert (await get_json(http, main.url + "/status"))["status"] == "running"
    assert (await get_json(http, released.url + "/status"))["status"] == "stable"
    # main refuses a send before the agent is ready ...
    status, body = await post_user(http, main.url, "too early")
    assert status == 500
    assert "waiting for user input" in body["errors"][0]["message"]
    # ... v0.12.1 takes it and holds the lock until the agent is ready
    early = asyncio.create_task(post_user(http, released.url, "too early"))
    await released.fake.wait_for(lambda: released.fake.busy)
    status_answer = asyncio.create_task(get_json(http, released.url + "/status"))
    await released.fake.wait_for(lambda: released.fake.requests["/status"] == 2)
    assert not early.done()
    assert not status_answer.done()
    released.fake.agent_ready()
    assert (await early)[0] == 200
    assert (await status_answer)["status"] == "running"
    async with http.get(main.url + "/events") as r:
        stream = Stream(r)
        (_screen, before) = await stream.events(2)
        main.fake.agent_ready()
        (after,) = await stream.events(1)
    assert before[1]["status"] == "running"
    assert after == ("status_change", {"status": "stable", "agent_type": "claude"})


@pytest.mark.parametrize(
    ("content", "warning"),
    [
        ("{not json", "failed to unmarshal state (corrupted or invalid JSON): "),
        ('{"version":2,"messages":[]}', "unsupported state file version 2 (expected 1)"),
        ('{"messages":[]}', "unsupported state file version 0 (expected 1)"),
    ],
)
async def test_a_state_file_that_cannot_load_is_the_one_agent_error(
    real: Served[FakeAgentapi],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    content: str,
    warning: str,
) -> None:
    fake = real.fake
    state = tmp_path / "agentapi-state.json"
    state.write_text(content)
    assert not fake.agent_ready(state)
    assert not fake.agent_ready(tmp_path / "missing.json")  # a missing file says nothing
    (error,) = fake.errors
    assert error.level == "warning"
    assert error.message.startswith("Failed to restore previous session: " + warning)
    assert [m.content for m in fake.messages] == [WELCOME_SCREEN]


def test_a_state_file_is_decoded_as_go_decodes_it(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        '{"version":1,"messages":[{"id":3,"message":"a<b","role":"system",'
        '"time":"2025-01-02T03:04:05.5+02:00","extra":1},null]} trailing'
    )
    state = read_state(path)
    assert isinstance(state, list)
    assert [(m.id, m.message, m.role, m.time) for m in state] == [
        (3, "a<b", "system", "2025-01-02T03:04:05.5+02:00"),
        (0, "", "", "0001-01-01T00:00:00Z"),
    ]
    path.write_text('{"version":1,"messages":[{"id":"3"}]}')
    assert not isinstance(read_state(path), list)


# --- messages change after the fact ----------------------------------------------------------


async def test_terminal_updates_move_the_time_and_rewrites_reach_earlier_ids(
    real: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = real.fake
    fake.add_message("user", "summarise the log")
    fake.add_message("agent", "Reading")
    async with http.get(real.url + "/events") as r:
        stream = Stream(r)
        replay = await stream.events(4)
        fake.update_last("Reading the log")
        fake.rewrite(0, WELCOME_SCREEN + "\n(old screen bleeding in)")
        fake.update_last("Reading the log")  # unchanged: nothing
        fake.add_message("agent", "marker")
        live = await stream.events(3)
    assert [(d["id"], d["message"]) for _, d in live] == [
        (2, "Reading the log"),
        (0, WELCOME_SCREEN + "\n(old screen bleeding in)"),
        (3, "marker"),
    ]
    assert live[0][1]["time"] > replay[2][1]["time"]
    assert live[1][1]["time"] > replay[0][1]["time"]
    with pytest.raises(KeyError):
        fake.rewrite(9, "nope")


async def test_removed_messages_are_never_announced(
    real: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake = real.fake
    for i in range(3):
        fake.add_message("user" if i % 2 == 0 else "agent", f"m{i}")
    async with http.get(real.url + "/events") as r:
        stream = Stream(r)
        await stream.events(5)
        fake.remove_messages(2, 3)
        fake.set_status("running")
        (next_event,) = await stream.events(1)
    assert next_event[0] == "status_change"  # nothing said of 2 and 3
    listed = (await get_json(http, real.url + "/messages"))["messages"]
    assert [m["id"] for m in listed] == [0, 1]
    async with http.get(real.url + "/events") as r:
        replay = await Stream(r).events(3)
    assert [d.get("id") for _, d in replay] == [0, 1, None]
    with pytest.raises(KeyError):
        fake.remove_messages(7)


# --- versions, bodies, errors -----------------------------------------------------------------


@needs_spec
@pytest.mark.parametrize(
    ("version", "transport"), [("0.11", "pty"), ("0.12", "pty"), ("0.12", "acp"), ("main", "pty")]
)
async def test_bodies_match_each_versions_document(
    make_fake_agentapi: AgentapiFactory, http: aiohttp.ClientSession, version: str, transport: str
) -> None:
    served = await make_fake_agentapi(version=version, transport=transport)
    served.fake.add_message("agent", "hi <there> & welcome")
    document = "0.11" if version == "0.11" else "0.12"
    async with http.get(served.url + "/status") as r:
        status = await r.json()
        openapi.validate_response("/status", "get", 200, r.content_type, status, document)
        raw_status = await r.read()
    async with http.get(served.url + "/messages") as r:
        body = await r.json()
        openapi.validate_response("/messages", "get", 200, r.content_type, body, document)
        raw_messages = await r.read()
    if version == "0.11":
        assert "transport" not in status
        with pytest.raises(openapi.ValidationError):
            openapi.validate_response("/status", "get", 200, "application/json", status, "0.12")
        with pytest.raises(ValueError, match="no agent_error"):
            served.fake.add_error("warning", "x")
        with pytest.raises(openapi.ValidationError):
            openapi.validate_sse_event(
                "agent_error",
                {"message": "x", "level": "warning", "time": "2025-01-02T03:04:05Z"},
                version="0.11",
            )
    else:
        assert status["transport"] == transport
        with pytest.raises(openapi.ValidationError):
            openapi.validate_response("/status", "get", 200, "application/json", status, "0.11")
    # huma's bodies: Go's encoder without HTML escaping, a newline at the end
    assert raw_status.endswith(b"}\n")
    assert b"hi <there> & welcome" in raw_messages
    async with http.get(served.url + "/events") as r:
        stream = Stream(r)
        events = await stream.events(2)
    # SSE frames come from an encoder that does escape HTML
    assert b"hi \\u003cthere\\u003e \\u0026 welcome" in stream.raw
    assert events[0][1]["message"] == "hi <there> & welcome"
    validate_events(events, version=document)


def test_the_constructor_refuses_what_agentapi_never_was() -> None:
    with pytest.raises(ValueError, match="ACP"):
        FakeAgentapi(version="0.11", transport="acp")
    with pytest.raises(ValueError, match="ACP"):
        FakeAgentapi(transport="acp", message0=True)
    with pytest.raises(ValueError, match="version"):
        FakeAgentapi(version="0.13")
    with pytest.raises(ValueError, match="no state file"):
        FakeAgentapi(version="0.11").write_state_file(Path("never-written.json"))


async def test_restore_failed_is_the_warning_agentapi_sends(
    fake_agentapi: Served[FakeAgentapi], http: aiohttp.ClientSession
) -> None:
    fake_agentapi.fake.restore_failed("failed to open state file: permission denied")
    async with http.get(fake_agentapi.url + "/events") as r:
        (_status, error) = await Stream(r).events(2)
    assert error[0] == "agent_error"
    assert error[1]["level"] == "warning"
    assert error[1]["message"] == (
        "Failed to restore previous session: failed to open state file: permission denied"
    )
    validate_events([error])


# --- the Host check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "host", "ok"),
    [
        (None, "localhost:3284", True),
        (None, "127.0.0.1:{port}", True),
        (None, "[::1]:{port}", True),
        (None, "LocalHost", True),
        (None, "example.com", False),
        (None, "localhost:http", False),
        (None, "", False),
        (("*",), "coder.example.com", True),
        (("agentapi.internal",), "agentapi.internal:80", True),
        (("agentapi.internal",), "localhost:3284", False),
    ],
)
async def test_the_host_header_must_be_an_allowed_host(
    make_fake_agentapi: AgentapiFactory,
    allowed: tuple[str, ...] | None,
    host: str,
    ok: bool,
) -> None:
    served = await (
        make_fake_agentapi() if allowed is None else make_fake_agentapi(allowed_hosts=allowed)
    )
    header = host.format(port=served.server.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    try:
        host_line = f"Host: {header}\r\n" if header else ""
        writer.write(f"GET /status HTTP/1.0\r\n{host_line}\r\n".encode())
        async with asyncio.timeout(DEADLINE):
            response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if ok:
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
        return
    assert b" 400 " in head.split(b"\r\n")[0], head
    headers = head.decode().lower()
    assert "content-type: text/plain; charset=utf-8" in headers
    assert "x-content-type-options: nosniff" in headers
    names = "localhost, 127.0.0.1, ::1" if allowed is None else ", ".join(allowed)
    assert body == f"Invalid host header. Allowed hosts: {names}\n".encode()


# --- a stalled subscriber ---------------------------------------------------------------------


async def test_a_subscriber_whose_write_stalls_is_dropped(
    make_fake_agentapi: AgentapiFactory,
) -> None:
    served = await make_fake_agentapi(sse_write_timeout=0.2)
    fake = served.fake
    fake.add_message("agent", "start")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", served.server.port))
        await loop.sock_sendall(sock, b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await fake.wait_for_subscribers(1)
        # More than every socket buffer on the way holds, to a client that reads nothing.
        for i in range(48):
            fake.update_last(f"{i:02d}" + "x" * 262_144)
        await fake.wait_for(lambda: fake.subscriber_count == 0, timeout=DEADLINE)
        assert fake.stalled_drops == 1
        # The connection is gone: reading drains what was in flight, then ends.
        async with asyncio.timeout(DEADLINE):
            while True:
                try:
                    chunk = await loop.sock_recv(sock, 1 << 20)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
    finally:
        sock.close()
    # a subscriber that reads keeps its stream
    async with (
        aiohttp.ClientSession() as http,
        http.get(served.url + "/events") as r,
    ):
        (update, _status) = await Stream(r).events(2)
    assert update[1]["message"].startswith("47")
    assert fake.stalled_drops == 1

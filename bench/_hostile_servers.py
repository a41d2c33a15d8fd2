"""Hostile peers for bench/hostile.py: a Coder whose snapshot answer is a hostile body, and
an agentapi whose /messages or /status is; loopback aiohttp apps in the bench's process,
each paired with a normal other peer (sidecar/standins) in `Peers`.

They speak just enough of each protocol for the sidecar to reach the hostile part, and
count how each hostile exchange ended, so the benchmark can wait for "the body went out in
full, or the client hung up" instead of sleeping. Every body is streamed from one reused
chunk: the bench's own memory stays flat whatever the sidecar is asked to swallow.
"""

from __future__ import annotations

import contextlib
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import serve

MIB = 1 << 20
_CHUNK = b"x" * MIB
_BUILDINFO = {
    "external_url": "https://github.com/coder/coder",
    "version": "v2.35.4",
    "dashboard_url": "http://127.0.0.1",
    "workspace_proxy": False,
    "agent_api_version": "2.0",
    "upgrade_message": "",
    "deployment_id": "00000000-0000-5000-8000-000000000000",
}


@dataclass
class Tally:
    """How the hostile exchanges went: started, and ended (sent in full, or the client
    hung up), with the bytes written."""

    started: int = 0
    completed: int = 0
    hung_up: int = 0
    sent: int = 0

    def twice(self) -> bool:
        return self.completed + self.hung_up >= 2


@dataclass(frozen=True)
class Body:
    """A hostile answer: `status`, `headers`, then `head`, `chunk` × `repeat` (None: for
    ever), `tail`."""

    status: int
    head: bytes = b""
    chunk: bytes = b""
    repeat: int | None = 0
    tail: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)

    def parts(self) -> Iterator[bytes]:
        if self.head:
            yield self.head
        count = 0
        while self.repeat is None or count < self.repeat:
            yield self.chunk
            count += 1
        if self.tail:
            yield self.tail


def sized(mib: int) -> Body:
    return Body(500, chunk=_CHUNK, repeat=mib)


def endless() -> Body:
    return Body(500, chunk=b"x" * 65_536, repeat=None)


def nested(depth: int) -> Body:
    return Body(500, head=b"[" * depth)


def gzip_bomb(mib: int) -> Body:
    """`mib` MiB of zeros, gzip-compressed a MiB at a time (never built in memory)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    packed = b"".join(packer.compress(zeros) for _ in range(mib)) + packer.flush()
    headers = (("Content-Type", "application/json"), ("Content-Encoding", "gzip"))
    return Body(500, head=packed, headers=headers)


def huge_messages(mib: int) -> Body:
    """A /messages answer whose one message's content is `mib` MiB, if anyone read it all."""
    head = b'{"messages":[{"id":0,"role":"user","time":"2026-01-01T00:00:00Z","content":"'
    return Body(200, head=head, chunk=_CHUNK, repeat=mib, tail=b'"}]}')


def endless_status() -> Body:
    return Body(200, chunk=b" " * 65_536, repeat=None)


async def _stream(request: web.Request, body: Body, tally: Tally) -> web.StreamResponse:
    tally.started += 1
    # No compression by aiohttp and no Content-Length: the body's size is unknown, as a
    # proxy streaming an upstream error page would send it.
    response = web.StreamResponse(status=body.status, headers=dict(body.headers))
    await response.prepare(request)
    done = False
    try:
        for part in body.parts():
            await response.write(part)
            tally.sent += len(part)
        await response.write_eof()
        done = True
    except (ConnectionError, RuntimeError):
        pass  # the client hung up mid-body; a hang-up may also arrive as a cancellation
    finally:
        if done:
            tally.completed += 1
        else:
            tally.hung_up += 1
    return response


@dataclass
class HostileCoder:
    """coderd's routes the sidecar calls; POST log-snapshot answers `body`."""

    body: Body
    tally: Tally = field(default_factory=Tally)

    def app(self) -> web.Application:
        app = web.Application()
        prefix = "/api/v2/workspaceagents/me"
        app.router.add_post(prefix + "/tasks/{task}/log-snapshot", self._snapshot)
        app.router.add_patch(prefix + "/app-status", self._app_status)
        app.router.add_get(prefix + "/gitsshkey", self._gitsshkey)
        app.router.add_get("/api/v2/buildinfo", self._buildinfo)
        return app

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        return await _stream(request, self.body, self.tally)

    async def _app_status(self, _request: web.Request) -> web.Response:
        return web.json_response({"message": "Workspace app status updated."})

    async def _gitsshkey(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "user_id": "00000000-0000-5000-8000-000000000001",
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
                "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench bench",
            }
        )

    async def _buildinfo(self, _request: web.Request) -> web.Response:
        return web.json_response(_BUILDINFO)


@dataclass
class HostileAgentapi:
    """agentapi without /events (so the daemon polls), whose /messages and /status answer
    the given hostile body, or a small normal one when None."""

    messages: Body | None = None
    status: Body | None = None
    tally: Tally = field(default_factory=Tally)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/messages", self._messages)
        app.router.add_get("/status", self._status)
        return app

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        if self.messages is not None:
            return await _stream(request, self.messages, self.tally)
        message = {"id": 0, "role": "user", "time": "2026-01-01T00:00:00Z", "content": "hi"}
        return web.json_response({"messages": [message]})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        if self.status is not None:
            return await _stream(request, self.status, self.tally)
        return web.json_response({"status": "stable", "agent_type": "claude", "transport": "pty"})


# --- the peers of one case: a hostile one and a normal one ------------------------------------


@dataclass
class Peers:
    coder: str
    agentapi: str
    token: str
    task: str
    exchanged: Callable[[], bool]  # the hostile exchange is over: `run` may be stopped
    after_start: Callable[[], Coroutine[Any, Any, None]] | None = None


def holds(coder: FakeCoder, text: str) -> bool:
    """Coder's stored snapshot ends with a message of `text`."""
    stored = coder.stored_snapshot()
    return stored is not None and any(m.get("content") == text for m in stored["messages"][-1:])


@contextlib.asynccontextmanager
async def coder_body(body: Body) -> AsyncIterator[Peers]:
    fake = FakeAgentapi()
    fake.add_message("user", "kept whatever the error page")
    hostile = HostileCoder(body)
    async with serve(fake.app) as agentapi, serve(hostile.app()) as coder:
        # Two answers: the first post and a retry, so a retry's cost is counted too.
        yield Peers(coder.url, agentapi.url, "t0ken", str(uuid.uuid4()), hostile.tally.twice)


@contextlib.asynccontextmanager
async def agentapi_body(messages: Body | None, status: Body | None) -> AsyncIterator[Peers]:
    fake = FakeCoder()
    hostile = HostileAgentapi(messages, status)
    async with serve(fake.app) as coder, serve(hostile.app()) as agentapi:
        yield Peers(coder.url, agentapi.url, fake.token, str(fake.task_id), hostile.tally.twice)


@contextlib.asynccontextmanager
async def agentapi_events(names: int, replay: int) -> AsyncIterator[Peers]:
    """agentapi's own stream (the stand-in): `names` made-up event names after the replay,
    then one message; or a replay of ten messages of `replay` characters each. Over once
    Coder stores the newest message."""
    fake, coder = FakeAgentapi(), FakeCoder()
    last = "after the made-up event names"
    for i in range(10 if replay else 1):
        fake.add_message("agent" if i % 2 else "user", f"{i}" * replay if replay else "hello")

    async def flood() -> None:
        await fake.wait_for_subscribers(1, timeout=30)
        for batch in range(0, names, 10_000):
            count = min(10_000, names - batch)
            fake.inject_raw(
                b"".join(b"event: made-up-%d\ndata: {}\n\n" % (batch + i) for i in range(count))
            )
        fake.add_message("agent", last)

    def stored() -> bool:
        snap = coder.stored_snapshot()
        newest = snap is not None and snap["messages"][-1]["id"] == fake.messages[-1].id
        return newest and (replay > 0 or holds(coder, last))

    async with serve(fake.app) as agentapi, serve(coder.app) as server:
        after = flood if names else None
        yield Peers(server.url, agentapi.url, coder.token, str(coder.task_id), stored, after)


# --- the cases, from the issue ----------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    coder_mib: int = 1024
    messages_mib: int = 500
    names: int = 300_000
    replay_chars: int = 10_000_000


Setup = Callable[[], contextlib.AbstractAsyncContextManager[Peers]]


def cases(s: Sizes) -> list[tuple[str, list[str], Setup]]:
    size = f"{s.coder_mib / 1024:g} GiB" if s.coder_mib >= 1024 else f"{s.coder_mib} MiB"
    bomb = gzip_bomb(s.coder_mib)  # once: compressing takes seconds
    both, mb = ["run", "snapshot"], s.messages_mib
    return [
        (f"Coder: 500, a {size} body", both, lambda: coder_body(sized(s.coder_mib))),
        ("Coder: 500, an endless body", both, lambda: coder_body(endless())),
        (
            f"Coder: 500, {len(bomb.head) / 1e6:.1f} MB gzip → {size}",
            both,
            lambda: coder_body(bomb),
        ),
        ("Coder: 500, 100,000 `[`", both, lambda: coder_body(nested(100_000))),
        (
            f"agentapi: /messages of {mb} MB",
            ["snapshot", "check", "run"],
            lambda: agentapi_body(huge_messages(mb), None),
        ),
        (
            "agentapi: /status endless",
            ["check", "run"],
            lambda: agentapi_body(None, endless_status()),
        ),
        (f"agentapi: {s.names:,} event names", ["run"], lambda: agentapi_events(s.names, 0)),
        (
            f"agentapi: replay of 10 × {s.replay_chars / 1e6:g} MB",
            ["run"],
            lambda: agentapi_events(0, s.replay_chars),
        ),
    ]

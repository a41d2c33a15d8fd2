"""The fakes process: a minimal raw SSE server plus a FakeCoder, in their own process.

The SSE handler writes pre-built bytes (agentapi's exact frame format, built with
sidecar.standins.agentapi.sse_frame) as fast as the socket takes them, so the fake's own
cost neither slows the sidecar down nor shows up in its CPU figures (the machine has 2
cores: one for the fakes, one for the code under test).

Not a benchmark itself; bench/ingest.py and bench/profile_hot_path.py use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NotRequired, TypeAlias, TypedDict

import _common  # first: puts the repo root on sys.path
from _pipeline import Endpoints
from aiohttp import web

from sidecar.standins.agentapi import sse_frame
from sidecar.standins.coder import FakeCoder, RecordedRequest
from sidecar.standins.server import rfc3339, serve

_CHUNK = 256 * 1024
_T0 = datetime(2025, 1, 1, tzinfo=UTC)

# Terminal-ish text with what makes JSON and UTF-8 work: newlines, quotes, backslashes,
# a tab, multi-byte characters.
_TEXT = (
    "I'll look at the failing test first.\n"
    "Running `pytest -q tests/unit` … 3 failed, 41 passed.\n"
    '  File "sidecar/snapshot.py", line 88, in build\n'
    '    raise ValueError(f"message {m.id} does not fit")\n'
    "\tC:\\path\\on\\windows ✓ done — 100% (ünïcödé)\n"
)


class Spec(TypedDict):
    """What the fakes process serves on /events: a live stream of `events`
    message_update events, a replay of `messages` messages of `size` characters, or just
    the status (`coder`: only the FakeCoder matters, with `tasks` tasks)."""

    kind: Literal["live", "replay", "coder"]
    events: NotRequired[int]
    messages: NotRequired[int]
    size: NotRequired[int]
    tasks: NotRequired[int]
    seq_pattern: NotRequired[str]  # finds the [seq=N] markers in snapshot bodies


class Info(Endpoints):
    """What the fakes process reports once it serves."""

    tasks: list[str]  # every task's UUID, `task` first
    bytes: int  # the size of the /events payload
    events: int  # message_update events in it


# (method, path, arrival time.monotonic(), status, highest [seq=N] in a POST's body)
Record: TypeAlias = tuple[str, str, float, int | None, int | None]


def _text(chars: int) -> str:
    return (_TEXT * (chars // len(_TEXT) + 1))[:chars]


def _stamp(ms: int) -> str:
    return rfc3339(_T0 + timedelta(milliseconds=ms))


def live_payload(events: int, per_turn: int = 1000) -> tuple[bytes, int]:
    """An empty replay (one status_change), then turns of `per_turn` message_update events:
    a user message, `running`, one agent message updated in place with a growing content
    (1 more character per update, up to ~per_turn characters), `stable`.
    Returns (bytes, message_update count == events)."""
    frames = [sse_frame("status_change", {"status": "stable", "agent_type": "claude"})]
    text = _text(per_turn + 64)
    produced = 0
    msg_id = 0
    while produced < events:
        frames.append(
            sse_frame(
                "message_update",
                {
                    "id": msg_id,
                    "role": "user",
                    "message": f"turn {msg_id // 2}: fix it",
                    "time": _stamp(produced),
                },
            )
        )
        produced += 1
        frames.append(sse_frame("status_change", {"status": "running", "agent_type": "claude"}))
        agent_id = msg_id + 1
        stamp = _stamp(produced)
        for k in range(min(per_turn - 1, events - produced)):
            frames.append(
                sse_frame(
                    "message_update",
                    {"id": agent_id, "role": "agent", "message": text[: 32 + k], "time": stamp},
                )
            )
            produced += 1
        frames.append(sse_frame("status_change", {"status": "stable", "agent_type": "claude"}))
        msg_id += 2
    return b"".join(frames), produced


def replay_payload(messages: int, size: int) -> bytes:
    """agentapi's replay on connect: one message_update per message (`size` characters
    each, alternating user/agent), then status_change `running`, and `stable` right after
    it: a turn's end, which the sidecar posts at once (the first post after a start is
    otherwise spread over two intervals), so "first snapshot posted" marks the replay."""
    text = _text(size + 100)
    frames = [
        sse_frame(
            "message_update",
            {
                "id": i,
                "role": "user" if i % 2 == 0 else "agent",
                # distinct per message, exactly `size` characters
                "message": (f"#{i} " + text)[:size],
                "time": _stamp(i),
            },
        )
        for i in range(messages)
    ]
    frames.append(sse_frame("status_change", {"status": "running", "agent_type": "claude"}))
    frames.append(sse_frame("status_change", {"status": "stable", "agent_type": "claude"}))
    return b"".join(frames)


def build(spec: Spec) -> tuple[bytes, int]:
    if spec["kind"] == "coder":  # only the FakeCoder matters
        return sse_frame("status_change", {"status": "stable", "agent_type": "claude"}), 0
    if spec["kind"] == "live":
        return live_payload(spec["events"])
    return replay_payload(spec["messages"], spec["size"]), spec["messages"]


# --- the process --------------------------------------------------------------------------


def serve_main(conn: multiprocessing.connection.Connection, spec: Spec) -> None:
    asyncio.run(_serve(conn, spec))


async def _serve(conn: multiprocessing.connection.Connection, spec: Spec) -> None:
    payload, events = build(spec)
    coder = FakeCoder()
    tasks = [str(coder.task_id)] + [str(coder.add_task()) for _ in range(spec.get("tasks", 1) - 1)]
    seq_pattern = re.compile(spec.get("seq_pattern", r"\[seq=(\d+)\]").encode())
    streams = 0

    async def events_handler(request: web.Request) -> web.StreamResponse:
        nonlocal streams
        streams += 1
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        view = memoryview(payload)
        for start in range(0, len(payload), _CHUNK):
            await resp.write(bytes(view[start : start + _CHUNK]))
        # Then idle like an agent waiting for input; ends when the client goes away.
        await asyncio.Event().wait()
        return resp

    async def status_handler(_request: web.Request) -> web.Response:
        return web.json_response({"status": "stable", "agent_type": "claude", "transport": "pty"})

    app = web.Application()
    app.router.add_get("/events", events_handler)
    app.router.add_get("/status", status_handler)

    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    async with serve(app) as sse, serve(coder.app) as coder_srv:
        info: Info = {
            "sse": sse.url,
            "coder": coder_srv.url,
            "token": coder.token,
            "task": str(coder.task_id),
            "tasks": tasks,
            "bytes": len(payload),
            "events": events,
        }
        conn.send(info)
        while True:
            await readable.wait()
            readable.clear()
            try:
                while conn.poll():
                    command = conn.recv()
                    if command == "stop":
                        return
                    if command == "records":
                        conn.send([_record(r, seq_pattern) for r in coder.requests])
                    if command == "stats":
                        stats: dict[str, int] = {
                            "streams": streams,
                            "snapshot_posts": len(coder.snapshot_posts()),
                            "snapshot_accepted": len(coder.accepted_snapshot_posts()),
                            "app_statuses": len(coder.app_statuses),
                            "requests": len(coder.requests),
                        }
                        conn.send(stats)
            except (EOFError, OSError):
                return  # the parent is gone


def _record(r: RecordedRequest, seq_pattern: re.Pattern[bytes]) -> Record:
    """A request as a Record. time.monotonic() is CLOCK_MONOTONIC: comparable across
    processes on one machine."""
    seqs = [int(m) for m in seq_pattern.findall(r.body)] if r.method == "POST" else []
    return (r.method, r.path, r.at, r.status, max(seqs) if seqs else None)


class Fakes:
    """The fakes process, as a context manager; killed on exit whatever happens."""

    def __init__(self, spec: Spec, timeout: float = 120.0) -> None:
        self.spec = spec
        self.timeout = timeout
        self._info: Info | None = None
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=serve_main, args=(child, spec), daemon=True)
        self._child_conn = child

    async def __aenter__(self) -> Fakes:
        _common.track(self._proc)
        self._proc.start()
        self._child_conn.close()
        self._info = await self._recv()
        return self

    @property
    def info(self) -> Info:
        if self._info is None:
            raise RuntimeError("the fakes process is not running (use `async with Fakes(...)`)")
        return self._info

    async def _recv(self) -> Any:  # whatever _serve sent for the command
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self._conn.poll, self.timeout)
        if not ready:
            raise TimeoutError(f"the fakes process did not answer within {self.timeout} s")
        try:
            return self._conn.recv()
        except EOFError:
            raise RuntimeError(
                f"the fakes process died (exit code {self._proc.exitcode}); see its stderr"
            ) from None

    async def stats(self) -> dict[str, int]:
        self._conn.send("stats")
        result: dict[str, int] = await self._recv()
        return result

    async def records(self) -> list[Record]:
        self._conn.send("records")
        result: list[Record] = await self._recv()
        return result

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send("stop")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._proc.join, 5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(2)
        self._conn.close()

"""FakeAgentapi: an in-process agentapi (coder/agentapi 0.12) speaking its HTTP protocol.

Endpoints, bodies and the `/events` stream follow agentapi's OpenAPI document and its
server code:

* `GET /status`, `GET /messages`, `POST /message` answer JSON bodies carrying huma's
  `$schema` link, errors are `application/problem+json` (huma's ErrorModel).
* `GET /events` is Server-Sent Events: `event: <type>\\ndata: <compact json>\\n\\n`, no
  `id:` lines, no keepalive comments. On connect it replays, in agentapi's order
  (`EventEmitter.currentStateAsEvents`): one `message_update` per message, one
  `status_change`, then the stored `agent_error` events (at most 100, oldest first) — the
  error replay comes *after* the status, exactly where agentapi puts it (agentapi's
  `screen_update` sits between status and errors and is filtered out of `/events`).
  Then live events follow.
* Each subscriber has a bounded buffer (1,024 events, like agentapi's channel). When a
  new event finds it full the subscriber is unsubscribed: it still receives what was
  buffered, then the response ends — the same as the Go server closing the channel.

Mutators are plain synchronous methods; call them on the event loop's thread (from a
test, a benchmark, or a handler). Knobs are public attributes that can be flipped at any
time: `events_available`, `fail_requests`, `drop_every_k`, and for a misbehaving agentapi:

* `events_mode` (read when a `/events` request arrives): "normal"; "no_headers" (the
  request is held, no response starts); "headers_then_silence" (headers, then nothing at
  all, not even the replay); "endless_line" (the replay, then a `data:` line that never
  ends, written as fast as the client reads). None of the three subscribes to events or
  counts in `stream_connects`; `requests["/events"]` counts every request.
* `hang_paths`: requests to these paths are held without an answer until
  `release_hung()` (or until the client gives up); then they are answered normally.
* `deliver_live`: False stops live events from reaching open streams (a subscriber
  stuck inside agentapi); the replay of a new stream still carries the whole state.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from tests.fakes.server import Notifier, rfc3339, utc_now

__all__ = ["EVENTS_MODES", "AgentError", "AgentMessage", "FakeAgentapi"]

SUBSCRIBER_BUFFER: Final = 1024  # agentapi's defaultSubscriptionBufSize
MAX_STORED_ERRORS: Final = 100  # agentapi's maxStoredErrors
_MAX_WRITE_BATCH: Final = 64  # frames per socket write; keeps the buffer semantics close
EVENTS_MODES: Final = ("normal", "no_headers", "headers_then_silence", "endless_line")
_ENDLESS_PIECE: Final = b"x" * 65536


@dataclass(frozen=True, slots=True)
class AgentMessage:
    id: int
    role: str
    content: str
    time: str

    def as_message_update(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "message": self.content, "time": self.time}


@dataclass(frozen=True, slots=True)
class AgentError:
    level: str
    message: str
    time: str

    def as_json_obj(self) -> dict[str, Any]:
        return {"message": self.message, "level": self.level, "time": self.time}


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame as agentapi writes it (Go's encoder writes invalid UTF-8 as U+FFFD;
    a lone surrogate here becomes `?`, the nearest Python equivalent)."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return b"event: " + event.encode() + b"\ndata: " + payload.encode("utf-8", "replace") + b"\n\n"


class _Subscriber:
    """One /events client: a bounded buffer of frames not yet written to its socket."""

    __slots__ = ("_wakeup", "abort", "buffer", "closing", "limit")

    def __init__(self, limit: int) -> None:
        self.buffer: collections.deque[tuple[bytes, bool]] = collections.deque()
        self.limit = limit
        self.closing = False  # unsubscribed: send what is buffered, then end the response
        self.abort = False  # connection dropped now, buffered frames discarded
        self._wakeup = asyncio.Event()

    def offer(self, frame: bytes, *, counts: bool) -> bool:
        """Queue a frame; False when the buffer was full (the caller unsubscribes)."""
        if len(self.buffer) >= self.limit:
            return False
        self.buffer.append((frame, counts))
        self._wakeup.set()
        return True

    def close(self, *, abort: bool) -> None:
        self.closing = True
        self.abort = self.abort or abort
        self._wakeup.set()

    async def wait(self) -> None:
        await self._wakeup.wait()
        self._wakeup.clear()


class FakeAgentapi:
    """An agentapi server: conversation state, mutators, fault knobs, request counters."""

    def __init__(
        self,
        *,
        agent_type: str = "claude",
        transport: str = "pty",
        status: str = "stable",
        subscriber_buffer: int = SUBSCRIBER_BUFFER,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.agent_type = agent_type
        self.transport = transport
        self._status = status
        self._messages: list[AgentMessage] = []
        self._errors: collections.deque[AgentError] = collections.deque(maxlen=MAX_STORED_ERRORS)
        self._subscribers: dict[_Subscriber, None] = {}  # insertion-ordered set
        self._subscriber_buffer = subscriber_buffer
        self._now = now
        self._notifier = Notifier()
        # knobs
        self.events_available = True
        self.fail_requests = False
        self.drop_every_k: int | None = None
        self.events_mode = "normal"
        self.hang_paths: set[str] = set()
        self.deliver_live = True
        self._release = asyncio.Event()
        # counters
        self.requests: collections.Counter[str] = collections.Counter()
        self.stream_connects = 0
        self.endless_bytes = 0  # bytes of endless `data:` lines written so far
        self.app = self._build_app()

    # --- state -----------------------------------------------------------------------

    @property
    def messages(self) -> tuple[AgentMessage, ...]:
        return tuple(self._messages)

    @property
    def status(self) -> str:
        return self._status

    @property
    def errors(self) -> tuple[AgentError, ...]:
        return tuple(self._errors)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # --- mutators --------------------------------------------------------------------

    def add_message(
        self,
        role: str,
        content: str,
        *,
        time: datetime | None = None,
        raw_time: str | None = None,
    ) -> int:
        """Append a message (any role, so tests can inject invalid ones); returns its id.
        `raw_time` is sent as it is (a time no datetime can hold, e.g. February 30)."""
        message = AgentMessage(
            id=len(self._messages),
            role=role,
            content=content,
            time=raw_time if raw_time is not None else rfc3339(time or self._now()),
        )
        self._messages.append(message)
        self._publish("message_update", message.as_message_update())
        return message.id

    def update_last(self, content: str) -> None:
        """Update the newest message in place (same id), as agentapi does while the agent
        streams; like agentapi, an unchanged message emits nothing."""
        if not self._messages:
            raise ValueError("update_last: the conversation is empty")
        last = self._messages[-1]
        if last.content == content:
            return
        self._messages[-1] = replace(last, content=content)
        self._publish("message_update", self._messages[-1].as_message_update())

    def set_status(self, status: str) -> None:
        """Set `running`/`stable` (anything else is served as is, for invalid-input tests);
        like agentapi, only a change emits `status_change`."""
        if status == self._status:
            return
        self._status = status
        self._publish("status_change", self._status_body())

    def add_error(self, level: str, message: str) -> None:
        error = AgentError(level=level, message=message, time=rfc3339(self._now()))
        self._errors.append(error)
        self._publish("agent_error", error.as_json_obj())

    def restart(self, messages: Iterable[tuple[str, str]] = (), *, status: str = "stable") -> None:
        """Simulate an agentapi restart: new history (ids from 0, possibly shorter or
        empty), no stored errors, and every open stream cut without a clean end."""
        now = rfc3339(self._now())
        self._messages = [
            AgentMessage(id=i, role=role, content=content, time=now)
            for i, (role, content) in enumerate(messages)
        ]
        self._errors.clear()
        self._status = status
        self.drop_streams(abort=True)

    def drop_streams(self, *, abort: bool = True) -> None:
        """Cut every open /events stream. `abort=True` closes the connection (the client
        sees an incomplete response); False ends each response cleanly."""
        for sub in list(self._subscribers):
            sub.close(abort=abort)
            self._unsubscribe(sub)

    def inject_raw(self, data: bytes) -> None:
        """Send arbitrary bytes to every current subscriber (malformed-frame tests)."""
        self._broadcast(data, counts=False)

    def write_state_file(
        self,
        path: str | os.PathLike[str],
        *,
        version: int = 1,
        initial_prompt: str = "",
        initial_prompt_sent: bool = True,
    ) -> None:
        """Write agentapi's --state-file as agentapi does: temp file, fsync, rename."""
        state = {
            "version": version,
            "messages": [
                {"id": m.id, "message": m.content, "role": m.role, "time": m.time}
                for m in self._messages
            ],
            "initial_prompt": initial_prompt,
            "initial_prompt_sent": initial_prompt_sent,
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(target.name + ".tmp")
        data = json.dumps(state, ensure_ascii=False, separators=(",", ":")) + "\n"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def release_hung(self) -> None:
        """Let every request held by `hang_paths` or `events_mode` go on."""
        self._release.set()
        self._release = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds; re-checked on every request and every
        subscriber change. Raises TimeoutError naming the request counts."""
        await self._notifier.wait_for(
            predicate,
            timeout,
            lambda: f"requests={dict(self.requests)} subscribers={self.subscriber_count}",
        )

    async def wait_for_subscribers(self, count: int = 1, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self.subscriber_count >= count, timeout)

    # --- event fan-out ---------------------------------------------------------------

    def _status_body(self) -> dict[str, Any]:
        return {"status": self._status, "agent_type": self.agent_type}

    def _publish(self, event: str, data: dict[str, Any]) -> None:
        if self._subscribers and self.deliver_live:
            self._broadcast(sse_frame(event, data), counts=True)

    def _broadcast(self, frame: bytes, *, counts: bool) -> None:
        for sub in list(self._subscribers):
            if not sub.offer(frame, counts=counts):
                # agentapi closes a full channel; the reader still drains what it holds
                sub.close(abort=False)
                self._unsubscribe(sub)

    def _unsubscribe(self, sub: _Subscriber) -> None:
        if self._subscribers.pop(sub, None) is not None:
            self._notifier.notify()

    def _replay(self) -> bytes:
        frames = [sse_frame("message_update", m.as_message_update()) for m in self._messages]
        frames.append(sse_frame("status_change", self._status_body()))
        frames.extend(sse_frame("agent_error", e.as_json_obj()) for e in self._errors)
        return b"".join(frames)

    # --- HTTP ------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/status", self._get_status)
        app.router.add_get("/messages", self._get_messages)
        app.router.add_post("/message", self._post_message)
        app.router.add_get("/events", self._get_events)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        # The process is going away: streams end without a clean terminating chunk.
        self.drop_streams(abort=True)
        self.release_hung()

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        self.requests[request.path] += 1
        self._notifier.notify()
        if request.path in self.hang_paths:
            await self._release.wait()
        if self.fail_requests:
            return _problem(request, 500, "injected failure (fail_requests)")
        response: web.StreamResponse = await handler(request)
        return response

    async def _get_status(self, request: web.Request) -> web.Response:
        body = {
            "$schema": _schema_link(request, "StatusResponseBody"),
            "status": self._status,
            "agent_type": self.agent_type,
            "transport": self.transport,
        }
        return _json(body)

    async def _get_messages(self, request: web.Request) -> web.Response:
        body = {
            "$schema": _schema_link(request, "MessagesResponseBody"),
            "messages": [
                {"id": m.id, "content": m.content, "role": m.role, "time": m.time}
                for m in self._messages
            ],
        }
        return _json(body)

    async def _post_message(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _problem(request, 422, "validation failed", f"body is not JSON: {exc}")
        problem = _validate_message_request(body)
        if problem is not None:
            return _problem(request, 422, "validation failed", problem)
        content, kind = body["content"], body["type"]
        if kind == "user":
            # agentapi's PTYConversation.Send rules, surfaced by huma as a 500
            if content == "" or content != content.strip():
                return _problem(request, 500, "failed to send message: invalid message content")
            if self._status != "stable":
                return _problem(
                    request,
                    500,
                    "failed to send message: message can only be sent when the agent "
                    "is waiting for user input",
                )
            self.add_message("user", content)
            self.set_status("running")
        return _json({"$schema": _schema_link(request, "MessageResponseBody"), "ok": True})

    async def _get_events(self, request: web.Request) -> web.StreamResponse:
        if not self.events_available:
            # an agentapi without /events: Go's mux answers a plain-text 404
            return web.Response(status=404, text="404 page not found\n")
        if self.events_mode != "normal":
            return await self._misbehave(request, self.events_mode)
        # Subscribe and snapshot the replay in one synchronous step, as agentapi does
        # under its lock: no event can fall between the replay and the live stream.
        replay = self._replay()
        sub = _Subscriber(self._subscriber_buffer)
        self._subscribers[sub] = None
        self.stream_connects += 1
        self._notifier.notify()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            await response.write(replay)
            await self._pump(sub, response)
        finally:
            self._unsubscribe(sub)
        if sub.abort and request.transport is not None:
            request.transport.close()
        return response

    async def _misbehave(self, request: web.Request, mode: str) -> web.StreamResponse:
        if mode not in EVENTS_MODES:
            raise ValueError(f"events_mode {mode!r} is not one of {EVENTS_MODES}")
        if mode == "no_headers":
            await self._release.wait()
            return await self._get_events(request)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if mode == "headers_then_silence":
            await self._release.wait()
            return response
        await response.write(self._replay() + b"event: message_update\ndata: ")
        # The client's reading paces the writes: memory here stays one piece.
        try:
            while True:
                await response.write(_ENDLESS_PIECE)
                self.endless_bytes += len(_ENDLESS_PIECE)
        except ConnectionError:
            return response  # the client gave up on the line, as it should

    async def _pump(self, sub: _Subscriber, response: web.StreamResponse) -> None:
        live = 0
        while not sub.abort:
            if sub.buffer:
                batch: list[bytes] = []
                limit = self.drop_every_k
                while sub.buffer and len(batch) < _MAX_WRITE_BATCH:
                    frame, counts = sub.buffer.popleft()
                    batch.append(frame)
                    live += counts
                    if limit is not None and live >= limit:
                        break
                await response.write(b"".join(batch))
                if limit is not None and live >= limit:
                    return
                continue
            if sub.closing:
                return
            await sub.wait()


def _validate_message_request(body: object) -> str | None:
    """MessageRequestBody as huma validates it (additionalProperties: false)."""
    if not isinstance(body, dict):
        return "body must be an object"
    extra = set(body) - {"$schema", "content", "type"}
    if extra:
        return f"unexpected properties: {sorted(extra)}"
    if not isinstance(body.get("content"), str):
        return "content is required and must be a string"
    if body.get("type") not in ("user", "raw"):
        return "type must be one of user, raw"
    return None


def _schema_link(request: web.Request, name: str) -> str:
    return f"{request.scheme}://{request.host}/schemas/{name}.json"


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace"),
        content_type="application/json",
    )


_TITLES: Final = {404: "Not Found", 422: "Unprocessable Entity", 500: "Internal Server Error"}


def _problem(
    request: web.Request, status: int, detail: str, error: str | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "$schema": _schema_link(request, "ErrorModel"),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if error is not None:
        body["errors"] = [{"message": error, "location": "body"}]
    response = _json(body, status)
    response.content_type = "application/problem+json"
    return response

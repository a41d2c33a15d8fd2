"""The agentapi stand-in's HTTP face: its routes, the Host check, the `/events` pump and
huma's problem bodies, as agentapi's server code writes them (`lib/httpapi/server.go`).

* `GET /status`, `GET /messages`, `POST /message` answer JSON bodies carrying huma's
  `$schema` link, ended by a newline (huma's encoder); errors are
  `application/problem+json` (huma's ErrorModel). A failed send is huma's answer to a plain
  Go error: 500, detail "unexpected error occurred", the error in `errors[0].message`.
* Every request first passes agentapi's Host check: the Host header's name (port ignored)
  must be one of `allowed_hosts`, else 400 `text/plain` "Invalid host header. Allowed
  hosts: …" (Go's `http.Error`). The default is agentapi's: localhost, 127.0.0.1, [::1].
* `GET /events` subscribes and replays the state in one step (see `agentapi_core`), then
  writes live frames (`agentapi_records.sse_frame`). A subscriber whose socket write
  stalls for `sse_write_timeout` seconds (huma's 5 s write deadline) is dropped and its
  connection aborted.

Fault knobs, public attributes that can be flipped at any time: `events_available`
(False: a plain-text 404 for `/events`), `fail_requests`, `drop_every_k` (end a stream
after k live events), and for a misbehaving agentapi:

* `events_mode` (read when a `/events` request arrives): "normal"; "no_headers" (the
  request is held, no response starts); "headers_then_silence" (headers, then nothing at
  all, not even the replay); "endless_line" (the replay, then a `data:` line that never
  ends, written as fast as the client reads). None of the three subscribes to events or
  counts in `stream_connects`; `requests["/events"]` counts every request.
* `hang_paths`: requests to these paths are held without an answer until
  `release_hung()` (or until the client gives up); then they are answered normally.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Final

from aiohttp import web

from sidecar.standins import gojson
from sidecar.standins.agentapi_records import EVENTS_MODES, SendRejected, Subscriber
from sidecar.standins.agentapi_sends import AgentapiSends

__all__ = ["AgentapiHttp"]

_MAX_WRITE_BATCH: Final = 64  # frames per socket write; keeps the buffer semantics close
_ENDLESS_PIECE: Final = b"x" * 65536


class AgentapiHttp(AgentapiSends):
    """An agentapi server's aiohttp application (`app`) and its fault knobs."""

    def release_hung(self) -> None:
        """Let every request held by `hang_paths` or `events_mode` go on."""
        self._release.set()
        self._release = asyncio.Event()

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
        if self._send_task is not None:
            self._send_task.cancel()

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        self.requests[request.path] += 1
        self._notifier.notify()
        if not self._host_allowed(request.headers.get("Host", "")):
            return _bad_host(self._allowed_names())
        if request.path in self.hang_paths:
            await self._release.wait()
        if self.fail_requests:
            return _problem(request, 500, "injected failure (fail_requests)")
        response: web.StreamResponse = await handler(request)
        return response

    def _allowed_names(self) -> list[str]:
        """--allowed-hosts as agentapi keeps them: "*" alone, or each one's hostname."""
        if "*" in self.allowed_hosts:
            return ["*"]
        return [urllib.parse.urlsplit("http://" + h).hostname or h for h in self.allowed_hosts]

    def _host_allowed(self, host: str) -> bool:
        names = self._allowed_names()
        if names == ["*"]:
            return True
        if not host:
            return False
        try:
            parts = urllib.parse.urlsplit("http://" + host)
            _ = parts.port  # Go's url.Parse refuses a bad port; so does this
        except ValueError:
            return False
        return (parts.hostname or "") in {n.lower() for n in names}

    async def _wait_unlocked(self) -> None:
        """getStatus / getMessages: the server's read lock, then the conversation's."""
        async with self._server_lock, self._conversation_lock:
            pass

    async def _get_status(self, request: web.Request) -> web.Response:
        await self._wait_unlocked()
        body = {
            "$schema": _schema_link(request, "StatusResponseBody"),
            "status": self._reported_status(),
            "agent_type": self.agent_type,
        }
        if self.version != "0.11":
            body["transport"] = self.transport
        return _json(body)

    async def _get_messages(self, request: web.Request) -> web.Response:
        await self._wait_unlocked()
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
        if body["type"] == "user":
            # The send goes on if the client gives up, as agentapi's does.
            task = self.begin_send(body["content"])
            try:
                await asyncio.shield(task)
            except SendRejected as exc:
                return _send_failed(request, str(exc))
        else:
            async with self._server_lock:
                pass  # raw keystrokes go to the terminal under the same lock
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
        sub = Subscriber(self._subscriber_buffer)
        self._subscribers[sub] = None
        self.stream_connects += 1
        self._notifier.notify()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            if await self._write(sub, response, replay):
                await self._pump(sub, response)
        finally:
            self._unsubscribe(sub)
        if request.transport is not None:
            if sub.stalled:
                self.stalled_drops += 1
                request.transport.abort()
            elif sub.abort:
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

    async def _write(self, sub: Subscriber, response: web.StreamResponse, data: bytes) -> bool:
        """One write under huma's write deadline; False when it stalled past it."""
        try:
            async with asyncio.timeout(self.sse_write_timeout):
                await response.write(data)
        except TimeoutError:
            sub.stalled = True
            return False
        return True

    async def _pump(self, sub: Subscriber, response: web.StreamResponse) -> None:
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
                if not await self._write(sub, response, b"".join(batch)):
                    return
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
    # huma's JSON format: Go's encoder with HTML escaping off
    return web.Response(
        status=status,
        body=gojson.encode(body, escape_html=False),
        content_type="application/json",
    )


def _bad_host(allowed: Sequence[str]) -> web.Response:
    """Go's http.Error(w, "Invalid host header. Allowed hosts: …", 400)."""
    return web.Response(
        status=400,
        body=f"Invalid host header. Allowed hosts: {', '.join(allowed)}\n".encode(),
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "X-Content-Type-Options": "nosniff",
        },
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


def _send_failed(request: web.Request, error: str) -> web.Response:
    """huma's answer to the plain Go error createMessage returns."""
    body = {
        "$schema": _schema_link(request, "ErrorModel"),
        "title": _TITLES[500],
        "status": 500,
        "detail": "unexpected error occurred",
        "errors": [{"message": f"failed to send message: {error}"}],
    }
    response = _json(body, 500)
    response.content_type = "application/problem+json"
    return response

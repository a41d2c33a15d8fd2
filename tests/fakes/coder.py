"""FakeCoder: the slice of coderd the sidecar talks to, with its validation rules.

* `POST /api/v2/workspaceagents/me/tasks/{task}/log-snapshot?format=agentapi` — checks in
  coderd's order: agent token (401), endpoint present (404, an older Coder), task UUID
  (400), query is exactly `format` (400), format is `agentapi` (400), task known (404),
  body read through a 65,536-byte limit (400 above it), body a JSON object with a
  non-null `messages` array whose items decode as Go would decode them (400) → 204, stored
  as the task's one snapshot (last write wins) with the server's timestamp.
* `GET /api/v2/tasks/{user}/{task}/logs` — reads the snapshot back: role `user` → type
  `input`, `agent` → `output`, any other role fails the whole read with 500.
* `PATCH /api/v2/workspaceagents/me/app-status` — state in working|idle|complete|failure,
  message ≤ 160 bytes ("Message is too long."), known app slug; 200 with a JSON body.
  Every accepted PATCH is recorded: the server does not deduplicate.
* `GET /api/v2/workspaceagents/me/gitsshkey` — a harmless authenticated call.
* `GET /api/v2/buildinfo` — the server's version; no token needed.

`endpoint_missing=True` plays a Coder without the Tasks API (v2.37 on, or v2.36 with its
flag off): every snapshot POST with a valid token gets 404 "Route not found.".

Errors are coderd's JSON `{"message": ..., "detail": ...}`. A fault script
(`fail_next`, `redirect_next`, `hang_next`, `close_next`) is consumed in order by the next
requests whose path contains the given text, before any validation (as a proxy in front
of coderd would fail). Every request is recorded, and `wait_for` wakes on every request.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

from aiohttp import web

from tests.fakes.server import Notifier, rfc3339, utc_now

__all__ = [
    "SNAPSHOT_BODY_LIMIT",
    "Answer",
    "AppStatus",
    "FakeCoder",
    "RecordedRequest",
    "StoredSnapshot",
]

SNAPSHOT_BODY_LIMIT: Final = 65_536
APP_STATUS_MESSAGE_MAX_BYTES: Final = 160
APP_STATES: Final = frozenset(("working", "idle", "complete", "failure"))
TOKEN_HEADER: Final = "Coder-Session-Token"
RECORDED_HEADERS: Final = (
    TOKEN_HEADER,
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Accept",
    "User-Agent",
)

# The shape Go's time.Parse(time.RFC3339, ...) reads; ranges are checked in _is_rfc3339.
_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.,][0-9]+)?(?:Z|[+-]([0-9]{2}):([0-9]{2}))\Z"
)

FaultKind = Literal["fail", "redirect", "hang", "close", "answer"]


@dataclass(frozen=True, slots=True)
class Answer:
    """Whatever something in front of coderd answers with: `status`, `content_type`,
    `headers`, and a body of `body` repeated `repeat` times (None: for ever), written as
    fast as the client reads it."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    repeat: int | None = 1


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake saw it. `status` is None while it is being handled and
    stays None for a held or dropped request (`fault` says which)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    status: int | None = None
    fault: FaultKind | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    task_id: UUID
    body: bytes
    payload: dict[str, Any]
    at: datetime  # the server's timestamp (snapshot_at)


@dataclass(frozen=True, slots=True)
class AppStatus:
    app_slug: str
    state: str
    message: str
    uri: str
    at: float  # time.monotonic() when accepted


@dataclass(slots=True)
class _Fault:
    kind: FaultKind
    remaining: int
    path_contains: str
    status: int = 0
    retry_after: str | None = None
    location: str | None = None
    answer: Answer | None = None


@dataclass(slots=True)
class _Context:
    record: RecordedRequest
    too_large: bool = False


_CONTEXT: Final = web.RequestKey("fake_coder_context", _Context)


class FakeCoder:
    """coderd's task snapshot, logs, app-status and gitsshkey endpoints."""

    def __init__(
        self,
        *,
        token: str | None = None,
        task_id: UUID | None = None,
        app_slug: str = "claude-code",
        endpoint_missing: bool = False,
        version: str = "v2.35.4",
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.token = token if token is not None else str(uuid.uuid4())
        self.task_id = task_id if task_id is not None else uuid.uuid4()
        self.valid_tokens: set[str] = {self.token}
        self.tasks: set[UUID] = {self.task_id}
        self.known_slugs: set[str] = {app_slug}
        self.endpoint_missing = endpoint_missing
        self.version = version
        self.requests: list[RecordedRequest] = []
        self.snapshots: dict[UUID, StoredSnapshot] = {}
        self.app_statuses: list[AppStatus] = []
        self._faults: collections.deque[_Fault] = collections.deque()
        self._now = now
        self._notifier = Notifier()
        self._stopping = asyncio.Event()  # set while the server shuts down
        self.app = self._build_app()

    # --- test controls ---------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        times: int = 1,
        retry_after: float | str | None = None,
        path_contains: str = "log-snapshot",
    ) -> None:
        """Answer the next `times` matching requests with `status` (a Coder error body,
        plus `Retry-After` when given: seconds or an HTTP date, sent verbatim)."""
        after = None if retry_after is None else _retry_after_text(retry_after)
        self._faults.append(_Fault("fail", times, path_contains, status, after))

    def redirect_next(
        self,
        location: str,
        status: int = 308,
        times: int = 1,
        path_contains: str = "log-snapshot",
    ) -> None:
        """Answer the next `times` matching requests with a redirect to `location`, as an
        http → https redirect or a moved access URL in front of coderd would."""
        self._faults.append(_Fault("redirect", times, path_contains, status, location=location))

    def hang_next(self, times: int = 1, path_contains: str = "log-snapshot") -> None:
        """Hold the next `times` matching requests without answering until the client
        gives up or the server stops (then the connection is closed)."""
        self._faults.append(_Fault("hang", times, path_contains))

    def close_next(self, times: int = 1, path_contains: str = "log-snapshot") -> None:
        """Read the next `times` matching requests, then close the connection without
        a response."""
        self._faults.append(_Fault("close", times, path_contains))

    def answer_next(
        self, answer: Answer, times: int = 1, path_contains: str = "log-snapshot"
    ) -> None:
        """Answer the next `times` matching requests with `answer` instead of coderd: a
        login page, a proxy's error, a body that never ends."""
        self._faults.append(_Fault("answer", times, path_contains, answer=answer))

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return sum(f.remaining for f in self._faults)

    def rotate_token(self) -> str:
        """A new workspace build: the old agent token stops working."""
        self.token = str(uuid.uuid4())
        self.valid_tokens = {self.token}
        return self.token

    def add_task(self, task_id: UUID | None = None) -> UUID:
        task = task_id if task_id is not None else uuid.uuid4()
        self.tasks.add(task)
        return task

    def snapshot_path(self, task: UUID | str | None = None) -> str:
        return f"/api/v2/workspaceagents/me/tasks/{task or self.task_id}/log-snapshot"

    # --- inspection ------------------------------------------------------------------

    def stored_snapshot(self, task: UUID | str | None = None) -> dict[str, Any] | None:
        """The parsed body of the task's stored snapshot, or None."""
        stored = self.snapshots.get(_as_uuid(task, self.task_id))
        return None if stored is None else stored.payload

    def snapshot_posts(self, task: UUID | str | None = None) -> list[RecordedRequest]:
        """Every POST to the task's log-snapshot endpoint, whatever its outcome."""
        path = self.snapshot_path(task)
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    def accepted_snapshot_posts(self, task: UUID | str | None = None) -> list[RecordedRequest]:
        return [r for r in self.snapshot_posts(task) if r.status == 204]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds; re-checked on every request's arrival and
        completion. Raises TimeoutError listing the recent requests."""
        await self._notifier.wait_for(predicate, timeout, self._describe_requests)

    def _describe_requests(self) -> str:
        tail = self.requests[-8:]
        seen = ", ".join(f"{r.method} {r.path} -> {r.status or r.fault}" for r in tail)
        return f"{len(self.requests)} requests; last: [{seen}]"

    # --- HTTP ------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        prefix = "/api/v2/workspaceagents/me"
        app.router.add_post(prefix + "/tasks/{task}/log-snapshot", self._post_snapshot)
        app.router.add_patch(prefix + "/app-status", self._patch_app_status)
        app.router.add_get(prefix + "/gitsshkey", self._get_gitsshkey)
        app.router.add_get("/api/v2/tasks/{user}/{task}/logs", self._get_logs)
        app.router.add_get("/api/v2/buildinfo", self._get_buildinfo)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._stopping.clear()

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._stopping.set()

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        body, too_large = await _read_limited(request, SNAPSHOT_BODY_LIMIT)
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=tuple(request.query.items()),
            headers={h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers},
            body=body,
            at=time.monotonic(),
        )
        self.requests.append(record)
        self._notifier.notify()
        try:
            fault = self._take_fault(request.path)
            if fault is not None:
                record.fault = fault.kind
                response = await self._apply_fault(request, fault)
            else:
                request[_CONTEXT] = _Context(record, too_large)
                try:
                    response = await handler(request)
                except web.HTTPException as exc:  # aiohttp's own 404/405 for unknown routes
                    response = _coder_error(exc.status, exc.reason)
            if record.fault in (None, "fail", "redirect", "answer"):
                record.status = response.status
            return response
        finally:
            self._notifier.notify()

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.path_contains in path:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _apply_fault(self, request: web.Request, fault: _Fault) -> web.StreamResponse:
        if fault.kind == "fail":
            response = _coder_error(fault.status, "Injected failure.", "fault script")
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            return response
        if fault.kind == "redirect":
            assert fault.location is not None
            return web.Response(status=fault.status, headers={"Location": fault.location})
        if fault.kind == "answer":
            assert fault.answer is not None
            return await _answer(request, fault.answer)
        if fault.kind == "hang":
            # Ends by cancellation when the client disconnects, or here on server stop.
            await self._stopping.wait()
        if request.transport is not None:
            request.transport.close()
        # aiohttp drops this response: the transport is already closed.
        return web.Response(status=500)

    def _authorized(self, request: web.Request) -> web.Response | None:
        token = request.headers.get(TOKEN_HEADER)
        if token is None:
            return _coder_error(
                401,
                "Workspace agent not authorized.",
                f'Header "{TOKEN_HEADER}" must be provided.',
            )
        try:
            UUID(token)
        except ValueError:
            return _coder_error(401, "Workspace agent not authorized.", "Token is not a UUID.")
        if token not in self.valid_tokens:
            return _coder_error(
                401, "Workspace agent not authorized.", "Agent token is invalid or expired."
            )
        return None

    async def _post_snapshot(self, request: web.Request) -> web.Response:
        context = request[_CONTEXT]
        denied = self._authorized(request)
        if denied is not None:
            return denied
        if self.endpoint_missing:
            return _coder_error(404, "Route not found.")
        raw_task = request.match_info["task"]
        try:
            task = UUID(raw_task)
        except ValueError:
            return _coder_error(400, f'Invalid UUID "{raw_task}".', "task must be a UUID")
        # strict: exactly one `format` (a repeated one is refused too)
        keys = [key for key, _ in request.query.items()]
        if keys != ["format"]:
            return _coder_error(
                400,
                "Query parameters have invalid values.",
                f"expected exactly one query parameter, format; got {keys}",
            )
        if request.query["format"] != "agentapi":
            return _coder_error(
                400,
                "Query parameters have invalid values.",
                f'format "{request.query["format"]}" is not supported, use "agentapi"',
            )
        if task not in self.tasks:
            return _coder_error(404, "Resource not found or you do not have access to it.")
        if context.too_large:
            return _coder_error(
                400,
                "Request body must be valid JSON.",
                f"http: request body too large (limit {SNAPSHOT_BODY_LIMIT} bytes)",
            )
        payload = _decode_snapshot(context.record.body)
        if isinstance(payload, str):
            return _coder_error(400, "Invalid snapshot payload.", payload)
        self.snapshots[task] = StoredSnapshot(task, context.record.body, payload, self._now())
        return web.Response(status=204)

    async def _get_logs(self, request: web.Request) -> web.Response:
        raw_task = request.match_info["task"]
        try:
            task = UUID(raw_task)
        except ValueError:
            return _coder_error(400, f'Invalid UUID "{raw_task}".')
        if task not in self.tasks:
            return _coder_error(404, "Resource not found or you do not have access to it.")
        stored = self.snapshots.get(task)
        if stored is None:
            return web.json_response({"logs": [], "snapshot": False, "snapshot_at": None})
        logs: list[dict[str, Any]] = []
        for item in stored.payload["messages"]:
            entry = _log_entry(item)
            if isinstance(entry, str):
                return _coder_error(500, "Internal error fetching task logs.", entry)
            logs.append(entry)
        return web.json_response(
            {"logs": logs, "snapshot": True, "snapshot_at": rfc3339(stored.at)}
        )

    async def _patch_app_status(self, request: web.Request) -> web.Response:
        context = request[_CONTEXT]
        denied = self._authorized(request)
        if denied is not None:
            return denied
        fields = _decode_app_status(context.record.body, context.too_large)
        if isinstance(fields, str):
            return _coder_error(400, "Request body must be valid JSON.", fields)
        state, message = fields["state"], fields["message"]
        if len(message.encode("utf-8")) > APP_STATUS_MESSAGE_MAX_BYTES:
            return _coder_error(400, "Message is too long.", "Message must be 160 bytes or less.")
        if state not in APP_STATES:
            return _coder_error(400, "Invalid state provided.", f"invalid state: {state!r}")
        if fields["app_slug"] not in self.known_slugs:
            return _coder_error(
                400,
                "Failed to find workspace app.",
                f"No app found with slug {fields['app_slug']!r}",
            )
        self.app_statuses.append(
            AppStatus(fields["app_slug"], state, message, fields["uri"], time.monotonic())
        )
        return web.json_response({"message": "Workspace app status updated."})

    async def _get_buildinfo(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "external_url": "https://github.com/coder/coder",
                "version": self.version,
                "dashboard_url": f"http://{request.host}",
                "workspace_proxy": False,
                "agent_api_version": "2.0",
                "upgrade_message": "",
                "deployment_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "fake-coder")),
            }
        )

    async def _get_gitsshkey(self, request: web.Request) -> web.Response:
        denied = self._authorized(request)
        if denied is not None:
            return denied
        stamp = rfc3339(self._now())
        return web.json_response(
            {
                "user_id": str(uuid.uuid5(uuid.NAMESPACE_URL, self.token)),
                "created_at": stamp,
                "updated_at": stamp,
                "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeCoderSidecarTestKey fake",
            }
        )


async def _read_limited(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """Read at most limit+1 bytes, like Go's http.MaxBytesReader; True when over."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), size > limit


def _coder_error(status: int, message: str, detail: str = "") -> web.Response:
    body: dict[str, Any] = {"message": message}
    if detail:
        body["detail"] = detail
    return web.json_response(body, status=status)


def _retry_after_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def _as_uuid(task: UUID | str | None, default: UUID) -> UUID:
    if task is None:
        return default
    return task if isinstance(task, UUID) else UUID(task)


def _is_rfc3339(text: str) -> bool:
    """Whether coderd takes `text` as a message time. It decodes it with Go's
    time.Time.UnmarshalJSON, whose "strict" RFC 3339 checks are disabled (go.dev/issue/54580),
    so Go's lax time.Parse(time.RFC3339, ...) decides: ASCII digits, 4-digit year 0000-9999,
    month 01-12, a 2-digit day that exists in that month (leap years: year 0 is one), an hour
    of one or two digits 0-23, minute and second 00-59 (no leap second), a fraction after `.`
    or `,` of any length, then `Z` or ±hh:mm with hh <= 24 and mm <= 60. It then re-encodes
    the payload, and Time.MarshalJSON refuses an offset of 24 hours or more (coderd answers
    that with a 500; this fake refuses it with the decode's 400)."""
    match = _RFC3339.match(text)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zone_h, zone_m = (int(g) if g is not None else 0 for g in match.groups()[6:])
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return False
    try:
        # The Gregorian calendar repeats every 400 years: this also covers year 0.
        datetime(2000 + year % 400, month, day)
    except ValueError:
        return False
    return zone_h <= 24 and zone_m <= 60 and zone_h * 60 + zone_m < 24 * 60


# Field types as Go's encoding/json would enforce them for coderd's typed message struct:
# absent or null fields decode to zero values, a wrong JSON type fails the decode.
_MESSAGE_FIELDS: Final[dict[str, Callable[[object], bool]]] = {
    "id": lambda v: type(v) is int,
    "content": lambda v: isinstance(v, str),
    "role": lambda v: isinstance(v, str),
    "time": lambda v: isinstance(v, str) and _is_rfc3339(v),
}


def _decode_snapshot(body: bytes) -> dict[str, Any] | str:
    """The parsed payload, or why coderd would reject it."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"body is not valid JSON: {exc}"
    if not isinstance(payload, dict):
        return "body must be a JSON object"
    messages = payload.get("messages")
    if messages is None:
        return 'body must have a non-null "messages" array'
    if not isinstance(messages, list):
        return '"messages" must be an array'
    for index, item in enumerate(messages):
        if item is None:
            continue
        if not isinstance(item, dict):
            return f"messages[{index}] must be an object"
        for name, valid in _MESSAGE_FIELDS.items():
            value = item.get(name)
            if value is not None and not valid(value):
                return f"messages[{index}].{name} has an invalid value"
    return payload


def _log_entry(item: object) -> dict[str, Any] | str:
    """A stored message as GET .../logs shows it, or why the whole read fails."""
    if not isinstance(item, dict):
        return "snapshot message is not an object"
    types = {"user": "input", "agent": "output"}
    role = item.get("role")
    if role not in types:
        return f"unsupported message role {role!r}"
    return {
        "id": item.get("id") or 0,
        "content": item.get("content") or "",
        "time": item.get("time") or "0001-01-01T00:00:00Z",
        "type": types[role],
    }


def _decode_app_status(body: bytes, too_large: bool) -> dict[str, str] | str:
    if too_large:
        return "request body too large"
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"body is not valid JSON: {exc}"
    if not isinstance(payload, dict):
        return "body must be a JSON object"
    fields: dict[str, str] = {}
    for name in ("app_slug", "state", "message", "uri"):
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} must be a string"
        fields[name] = value or ""
    return fields


async def _answer(request: web.Request, answer: Answer) -> web.StreamResponse:
    headers = {"Content-Type": answer.content_type, **dict(answer.headers)}
    response = web.StreamResponse(status=answer.status, headers=headers)
    if answer.repeat is not None:
        response.content_length = len(answer.body) * answer.repeat
    await response.prepare(request)
    written = 0
    try:
        while answer.repeat is None or written < answer.repeat:
            await response.write(answer.body)
            written += 1
    except (ConnectionError, RuntimeError):
        pass  # the client stopped reading, as it should
    return response

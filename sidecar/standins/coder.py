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

Errors are coderd's JSON `{"message": ..., "detail": ...}`; the bodies are decoded and
validated as `coder_rules` describes. A fault script (`fail_next`, `redirect_next`,
`hang_next`, `close_next`, `answer_next`; see `coder_faults`) is consumed in order by the
next requests whose path contains the given text, before any validation (as a proxy in
front of coderd would fail). Every request is recorded, and `wait_for` wakes on every
request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from aiohttp import web

from sidecar.standins.coder_faults import (
    Answer,
    Fault,
    FaultScript,
    apply_fault,
    retry_after_text,
)
from sidecar.standins.coder_rules import (
    APP_STATES,
    APP_STATUS_MESSAGE_MAX_BYTES,
    RECORDED_HEADERS,
    SNAPSHOT_BODY_LIMIT,
    TOKEN_HEADER,
    AppStatus,
    FaultKind,
    RecordedRequest,
    StoredSnapshot,
    coder_error,
    decode_app_status,
    decode_snapshot,
    log_entry,
    read_limited,
    refuse_snapshot_query,
    refuse_token,
)
from sidecar.standins.server import Notifier, rfc3339, utc_now

__all__ = [
    "APP_STATES",
    "APP_STATUS_MESSAGE_MAX_BYTES",
    "RECORDED_HEADERS",
    "SNAPSHOT_BODY_LIMIT",
    "TOKEN_HEADER",
    "Answer",
    "AppStatus",
    "FakeCoder",
    "FaultKind",
    "RecordedRequest",
    "StoredSnapshot",
]


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
        self._faults = FaultScript()
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
        after = None if retry_after is None else retry_after_text(retry_after)
        self._faults.append(Fault("fail", times, path_contains, status, after))

    def redirect_next(
        self,
        location: str,
        status: int = 308,
        times: int = 1,
        path_contains: str = "log-snapshot",
    ) -> None:
        """Answer the next `times` matching requests with a redirect to `location`, as an
        http → https redirect or a moved access URL in front of coderd would."""
        self._faults.append(Fault("redirect", times, path_contains, status, location=location))

    def hang_next(self, times: int = 1, path_contains: str = "log-snapshot") -> None:
        """Hold the next `times` matching requests without answering until the client
        gives up or the server stops (then the connection is closed)."""
        self._faults.append(Fault("hang", times, path_contains))

    def close_next(self, times: int = 1, path_contains: str = "log-snapshot") -> None:
        """Read the next `times` matching requests, then close the connection without
        a response."""
        self._faults.append(Fault("close", times, path_contains))

    def answer_next(
        self, answer: Answer, times: int = 1, path_contains: str = "log-snapshot"
    ) -> None:
        """Answer the next `times` matching requests with `answer` instead of coderd: a
        login page, a proxy's error, a body that never ends."""
        self._faults.append(Fault("answer", times, path_contains, answer=answer))

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return self._faults.pending

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
        body, too_large = await read_limited(request, SNAPSHOT_BODY_LIMIT)
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
            fault = self._faults.take(request.path)
            if fault is not None:
                record.fault = fault.kind
                response = await apply_fault(request, fault, self._stopping)
            else:
                request[_CONTEXT] = _Context(record, too_large)
                try:
                    response = await handler(request)
                except web.HTTPException as exc:  # aiohttp's own 404/405 for unknown routes
                    response = coder_error(exc.status, exc.reason)
            if record.fault in (None, "fail", "redirect", "answer"):
                record.status = response.status
            return response
        finally:
            self._notifier.notify()

    def _authorized(self, request: web.Request) -> web.Response | None:
        return refuse_token(request.headers.get(TOKEN_HEADER), self.valid_tokens)

    async def _post_snapshot(self, request: web.Request) -> web.Response:
        context = request[_CONTEXT]
        denied = self._authorized(request)
        if denied is not None:
            return denied
        if self.endpoint_missing:
            return coder_error(404, "Route not found.")
        raw_task = request.match_info["task"]
        try:
            task = UUID(raw_task)
        except ValueError:
            return coder_error(400, f'Invalid UUID "{raw_task}".', "task must be a UUID")
        refused = refuse_snapshot_query(tuple(request.query.items()))
        if refused is not None:
            return refused
        if task not in self.tasks:
            return coder_error(404, "Resource not found or you do not have access to it.")
        if context.too_large:
            return coder_error(
                400,
                "Request body must be valid JSON.",
                f"http: request body too large (limit {SNAPSHOT_BODY_LIMIT} bytes)",
            )
        payload = decode_snapshot(context.record.body)
        if isinstance(payload, str):
            return coder_error(400, "Invalid snapshot payload.", payload)
        self.snapshots[task] = StoredSnapshot(task, context.record.body, payload, self._now())
        return web.Response(status=204)

    async def _get_logs(self, request: web.Request) -> web.Response:
        raw_task = request.match_info["task"]
        try:
            task = UUID(raw_task)
        except ValueError:
            return coder_error(400, f'Invalid UUID "{raw_task}".')
        if task not in self.tasks:
            return coder_error(404, "Resource not found or you do not have access to it.")
        stored = self.snapshots.get(task)
        if stored is None:
            return web.json_response({"logs": [], "snapshot": False, "snapshot_at": None})
        logs: list[dict[str, Any]] = []
        for item in stored.payload["messages"]:
            entry = log_entry(item)
            if isinstance(entry, str):
                return coder_error(500, "Internal error fetching task logs.", entry)
            logs.append(entry)
        return web.json_response(
            {"logs": logs, "snapshot": True, "snapshot_at": rfc3339(stored.at)}
        )

    async def _patch_app_status(self, request: web.Request) -> web.Response:
        context = request[_CONTEXT]
        denied = self._authorized(request)
        if denied is not None:
            return denied
        fields = decode_app_status(context.record.body, context.too_large)
        if isinstance(fields, str):
            return coder_error(400, "Request body must be valid JSON.", fields)
        state, message = fields["state"], fields["message"]
        if len(message.encode("utf-8")) > APP_STATUS_MESSAGE_MAX_BYTES:
            return coder_error(400, "Message is too long.", "Message must be 160 bytes or less.")
        if state not in APP_STATES:
            return coder_error(400, "Invalid state provided.", f"invalid state: {state!r}")
        if fields["app_slug"] not in self.known_slugs:
            return coder_error(
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


def _as_uuid(task: UUID | str | None, default: UUID) -> UUID:
    if task is None:
        return default
    return task if isinstance(task, UUID) else UUID(task)

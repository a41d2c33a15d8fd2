"""CoderClient: the two agent endpoints the sidecar calls, with results as values.

The client only speaks HTTP. It never retries and never raises for an HTTP or network
failure: every call returns a `Result` whose `outcome` the caller acts on, so the retry
policy lives in one place per caller and can be tested without a network.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from uuid import UUID

import aiohttp
import structlog

from sidecar.backoff import parse_retry_after
from sidecar.coder.token import TokenSource
from sidecar.models import AppState

log = structlog.get_logger(__name__)

TOKEN_HEADER: Final = "Coder-Session-Token"  # noqa: S105 (a header name)
_DETAIL_MAX: Final = 300


class Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    REJECTED = "rejected"
    NOT_FOUND = "not_found"
    UNAUTHORIZED = "unauthorized"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int | None
    detail: str
    retry_after: float | None
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def classify(status: int | None) -> Outcome:
    """The one retry classifier. None means no HTTP answer (refused, reset, timed out)."""
    if status is None or status in (408, 429) or status >= 500:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.OK
    if status in (401, 403):
        return Outcome.UNAUTHORIZED
    if status == 404:
        return Outcome.NOT_FOUND
    return Outcome.REJECTED


def _server_detail(body: bytes) -> str:
    """Coder errors are {"message", "detail"}; fall back to the raw text."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body[:_DETAIL_MAX].decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        parts = [str(obj[k]) for k in ("message", "detail") if obj.get(k)]
        if parts:
            return ": ".join(parts)[:_DETAIL_MAX]
    return body[:_DETAIL_MAX].decode("utf-8", "replace").strip()


class CoderClient:
    __slots__ = ("_base", "_session", "_timeout", "_token", "_wall_clock")

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        token: TokenSource,
        timeout: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._wall_clock = wall_clock

    async def post_log_snapshot(
        self, task_id: UUID, body: bytes, *, timeout: float | None = None
    ) -> Result:
        """`timeout` caps this one request below the client's default (a shutdown
        deadline); it never raises it."""
        return await self._request(
            "POST",
            f"/api/v2/workspaceagents/me/tasks/{task_id}/log-snapshot",
            params={"format": "agentapi"},
            body=body,
            timeout=timeout,
        )

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str
    ) -> Result:
        payload = {"app_slug": slug, "state": str(state), "message": message, "uri": uri}
        return await self._request(
            "PATCH",
            "/api/v2/workspaceagents/me/app-status",
            body=json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(),
        )

    async def probe_token(self) -> Result:
        """A harmless authenticated GET, to tell a rejected token from a dead server."""
        return await self._request("GET", "/api/v2/workspaceagents/me/gitsshkey")

    async def reload_token(self) -> bool:
        return await asyncio.to_thread(self._token.reload, force=True)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Result:
        client_timeout = self._timeout
        if timeout is not None and timeout < (client_timeout.total or float("inf")):
            client_timeout = aiohttp.ClientTimeout(total=max(timeout, 0.001))
        headers = {TOKEN_HEADER: self._token.value(), "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            async with self._session.request(
                method,
                self._base + path,
                params=params,
                data=body,
                headers=headers,
                timeout=client_timeout,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                status = resp.status
                retry_after_header = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Result(
                outcome=Outcome.RETRY,
                status=None,
                detail=_describe(exc),
                retry_after=None,
                latency_ms=(time.monotonic() - started) * 1000,
            )
        outcome = classify(status)
        return Result(
            outcome=outcome,
            status=status,
            detail="" if outcome is Outcome.OK else _server_detail(payload),
            retry_after=parse_retry_after(retry_after_header, now=self._wall_clock()),
            latency_ms=(time.monotonic() - started) * 1000,
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text[:_DETAIL_MAX]

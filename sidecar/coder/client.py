"""CoderClient: the two agent endpoints the sidecar calls, with results as values.

The client only speaks HTTP. It never retries and never raises for an HTTP or network
failure: every call returns a `Result` whose `outcome` the caller acts on, so the retry
policy lives in one place per caller and can be tested without a network.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import aiohttp
import structlog

from sidecar.backoff import parse_retry_after
from sidecar.coder.outcomes import JSON_OK, RULES, SNAPSHOT_STORED, Expect, Outcome, Step, classify
from sidecar.coder.token import TokenSource
from sidecar.models import AppState

log = structlog.get_logger(__name__)

TOKEN_HEADER: Final = "Coder-Session-Token"  # noqa: S105 (a header name)
_DETAIL_MAX: Final = 300
ANSWER_MAX_BYTES: Final = 64 * 1024
_VERSION_MAX: Final = 64


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int | None
    detail: str
    retry_after: float | None
    latency_ms: float
    location: str | None = None  # where a redirect pointed
    body: bytes = field(default=b"", repr=False)  # the answer's body, for the few who read it

    @property
    def ok(self) -> bool:
        return RULES[self.outcome].step is Step.ACCEPTED

    @classmethod
    def unanswered(cls, detail: str, latency_ms: float = 0.0) -> Result:
        """No HTTP answer came (refused, reset, timed out, or the call itself failed)."""
        return cls(Outcome.RETRY, None, detail, None, latency_ms)


def _error_fields(body: bytes) -> tuple[str | None, str]:
    """Coder errors are {"message", "detail"}: the message alone, and both joined for a
    log line (the raw text when the body is something else: nested too deep to parse, a
    page, a truncated answer)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        message = obj.get("message") if isinstance(obj.get("message"), str) else None
        parts = [str(obj[k]) for k in ("message", "detail") if obj.get(k)]
        if parts:
            return message, ": ".join(parts)[:_DETAIL_MAX]
    return None, body[:_DETAIL_MAX].decode("utf-8", "replace").strip()


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
        # The API's paths are absolute: resolved against CODER_AGENT_URL as Coder's own
        # agent resolves them (codersdk), they replace whatever path it has.
        self._base = origin(base_url)
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
            SNAPSHOT_STORED,
            params={"format": "agentapi"},
            body=body,
            timeout=timeout,
        )

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str, timeout: float | None = None
    ) -> Result:
        payload = {"app_slug": slug, "state": str(state), "message": message, "uri": uri}
        return await self._request(
            "PATCH",
            "/api/v2/workspaceagents/me/app-status",
            JSON_OK,
            body=json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(),
            timeout=timeout,
        )

    async def probe_token(self) -> Result:
        """A harmless authenticated GET, to tell a rejected token from a dead server."""
        return await self._request("GET", "/api/v2/workspaceagents/me/gitsshkey", JSON_OK)

    async def server_version(self) -> str | None:
        """The server's version (`GET /api/v2/buildinfo`, which needs no token), or None
        when it cannot be read."""
        result = await self._request("GET", "/api/v2/buildinfo", JSON_OK, authenticated=False)
        if not result.ok:
            return None
        try:
            version = json.loads(result.body).get("version")
        except (ValueError, AttributeError, RecursionError):
            return None
        return version[:_VERSION_MAX] if isinstance(version, str) and version else None

    async def reload_token(self) -> bool:
        return await asyncio.to_thread(self._token.reload, force=True)

    async def _request(
        self,
        method: str,
        path: str,
        expect: Expect,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
        authenticated: bool = True,
    ) -> Result:
        client_timeout = self._timeout
        if timeout is not None and timeout < (client_timeout.total or float("inf")):
            client_timeout = aiohttp.ClientTimeout(total=max(timeout, 0.001))
        # identity: a compressed answer could unpack to far more than the bound on it.
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if authenticated:
            headers[TOKEN_HEADER] = self._token.value()
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
                payload = await _read_bounded(resp)
                status = resp.status
                retry_after_header = resp.headers.get("Retry-After")
                location = resp.headers.get("Location")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Result.unanswered(_describe(exc), (time.monotonic() - started) * 1000)
        success = 200 <= status < 300
        message, detail = (None, "") if success else _error_fields(payload)
        outcome = classify(
            status, expect=expect, message=message, json_body=success and _is_object(payload)
        )
        if outcome is Outcome.NOT_CODER:
            detail = resp.content_type or "no content type"
        return Result(
            outcome=outcome,
            status=status,
            detail=detail,
            retry_after=parse_retry_after(retry_after_header, now=self._wall_clock()),
            latency_ms=(time.monotonic() - started) * 1000,
            location=location if outcome is Outcome.REDIRECT else None,
            body=payload,
        )


def origin(url: str) -> str:
    """`scheme://host[:port]` of `url`."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    """At most ANSWER_MAX_BYTES of the answer: Coder's own are small (an error, a version,
    an accepted status); the rest of a larger one is never read."""
    parts: list[bytes] = []
    size = 0
    while size < ANSWER_MAX_BYTES:
        chunk = await resp.content.read(ANSWER_MAX_BYTES - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _is_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
        return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text[:_DETAIL_MAX]

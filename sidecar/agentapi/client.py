"""HTTP access to agentapi: /status, /messages and the raw /events byte stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from sidecar.models import AgentStatus, Invalid, Message, parse_messages_body, parse_status_body

_CONNECT_TIMEOUT = 5.0


class AgentapiError(Exception):
    """agentapi could not be reached or answered unusably. `status` is the HTTP status when
    there was one (404 on /events: an agentapi without the stream). `stalled`: it accepted
    the connection but sent no response in time (a hung agentapi, not an absent one)."""

    def __init__(self, message: str, status: int | None = None, *, stalled: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.stalled = stalled


class AgentapiClient:
    """`timeout` bounds each /status and /messages request; `stream_open_timeout` bounds
    opening /events up to its response headers (agentapi answers at once when it is well)."""

    __slots__ = ("_base", "_open_timeout", "_session", "_stream_timeout", "_timeout")

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        timeout: float = 5.0,
        stream_open_timeout: float = 10.0,
    ):
        if not stream_open_timeout > 0:
            raise ValueError(f"stream_open_timeout must be > 0, got {stream_open_timeout}")
        self._session = session
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._open_timeout = stream_open_timeout
        # agentapi sends no keepalives: an idle agent is silent for hours, so once open the
        # stream has no total or read timeout; liveness comes from EOF and the /status
        # probe. A connect that times out means nothing answered (not a stall): it must
        # fire before the open timeout does.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=min(_CONNECT_TIMEOUT, stream_open_timeout / 2),
            sock_read=None,
        )

    @property
    def base_url(self) -> str:
        return self._base

    async def _get(self, path: str) -> bytes:
        try:
            async with self._session.get(self._base + path, timeout=self._timeout) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise AgentapiError(f"GET {path} answered {resp.status}", resp.status)
                return body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AgentapiError(f"GET {path} failed: {_describe(exc)}") from None

    async def status(self) -> AgentStatus:
        result = parse_status_body(await self._get("/status"))
        if isinstance(result, Invalid):
            raise AgentapiError(f"GET /status: {result.reason}: {result.detail}")
        return result

    async def messages(self) -> tuple[list[Message], list[Invalid]]:
        result = parse_messages_body(await self._get("/messages"))
        if isinstance(result, Invalid):
            raise AgentapiError(f"GET /messages: {result.reason}: {result.detail}")
        return result

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open /events and yield an iterator over raw chunks as they arrive. Raises
        AgentapiError with `stalled` set when no response headers came in time."""
        deadline = asyncio.timeout(self._open_timeout)
        try:
            async with deadline:
                resp = await self._session.get(
                    self._base + "/events",
                    timeout=self._stream_timeout,
                    headers={"Accept": "text/event-stream"},
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if deadline.expired():
                raise AgentapiError(
                    f"GET /events: no response within {self._open_timeout:g} s", stalled=True
                ) from None
            raise AgentapiError(f"GET /events failed: {_describe(exc)}") from None
        try:
            if resp.status != 200:
                raise AgentapiError(f"GET /events answered {resp.status}", resp.status)
            yield _chunks(resp)
        finally:
            resp.release()
            resp.close()


async def _chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    # Raw chunks, not readline(): a single data line can be megabytes long.
    try:
        while True:
            chunk = await resp.content.readany()
            if not chunk:
                return
            yield chunk
    except (aiohttp.ClientError, OSError) as exc:
        raise AgentapiError(f"/events stream broke: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__

"""HTTP access to agentapi: /status, /messages and the raw /events byte stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from sidecar.models import AgentStatus, Invalid, Message, parse_messages_body, parse_status_body

# agentapi sends no keepalives: an idle agent is silent for hours, so the stream may have
# no total or read timeout. Only connecting is bounded; liveness comes from EOF and the
# periodic /status probe.
_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=None)


class AgentapiError(Exception):
    """agentapi could not be reached or answered unusably. `status` is the HTTP status when
    there was one (404 on /events: an agentapi without the stream)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AgentapiClient:
    __slots__ = ("_base", "_session", "_timeout")

    def __init__(self, *, session: aiohttp.ClientSession, base_url: str, timeout: float = 5.0):
        self._session = session
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)

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
        """Open /events and yield an iterator over raw chunks as they arrive."""
        try:
            resp = await self._session.get(
                self._base + "/events",
                timeout=_STREAM_TIMEOUT,
                headers={"Accept": "text/event-stream"},
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
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

"""HTTP access to agentapi: /status, /messages and the raw /events byte stream.

agentapi answers `GET /status` and `GET /messages` under the lock that `POST /message`
holds for a whole send (seconds with the terminal transport, the whole turn with ACP), so
a request that connected but got no answer in time is `busy`, not dead: only a refused
connection (or a reset, or an error status) says agentapi is not there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import aiohttp

from sidecar.models import AgentStatus, Invalid, Message, parse_messages_body, parse_status_body

_CONNECT_TIMEOUT: Final = 5.0
# Bounds on what agentapi may hand over in one answer: a conversation as large as one SSE
# frame may be (sidecar.agentapi.sse), a status a few hundred bytes.
MESSAGES_MAX_BYTES: Final = 16 * 1024 * 1024
STATUS_MAX_BYTES: Final = 64 * 1024
_READ_CHUNK: Final = 256 * 1024
# agentapi's answer to a Host header it does not allow (its --allowed-hosts).
_HOST_REFUSED: Final = b"Invalid host header"


class AgentapiError(Exception):
    """agentapi could not be reached or answered unusably. `status`: the HTTP status when
    there was one (404 on /events: an agentapi without the stream). `stalled`: it accepted
    the connection but sent no response headers in time. `busy`: it accepted the request
    but did not answer in time (its lock is held by a send). `host_refused`: it refuses
    the Host of CODER_MCP_AI_AGENTAPI_URL."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        *,
        stalled: bool = False,
        busy: bool = False,
        host_refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.stalled = stalled
        self.busy = busy
        self.host_refused = host_refused


class AgentapiClient:
    """`timeout` bounds each /status and /messages request, the body read included;
    `stream_open_timeout` bounds opening /events up to its response headers (agentapi
    answers at once when it is well)."""

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
        # A connect that times out means nothing answered (not busy): it fires first.
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(_CONNECT_TIMEOUT, timeout / 2)
        )
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

    async def _get(self, path: str, limit: int) -> bytes:
        try:
            async with self._session.get(self._base + path, timeout=self._timeout) as resp:
                body = await _read_bounded(resp, limit, f"GET {path}")
                if resp.status != 200:
                    raise _refusal(path, resp.status, body)
                return body
        except aiohttp.ConnectionTimeoutError:
            raise AgentapiError(f"GET {path} failed: nothing answered the connect") from None
        except TimeoutError:
            # Connected, and no answer in time: agentapi's lock is held by a send.
            raise AgentapiError(f"GET {path}: no answer in time (busy)", busy=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AgentapiError(f"GET {path} failed: {_describe(exc)}") from None

    async def status(self) -> AgentStatus:
        result = parse_status_body(await self._get("/status", STATUS_MAX_BYTES))
        if isinstance(result, Invalid):
            raise AgentapiError(f"GET /status: {result.reason}: {result.detail}")
        return result

    async def messages(self) -> tuple[list[Message], list[Invalid]]:
        result = parse_messages_body(await self._get("/messages", MESSAGES_MAX_BYTES))
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
                head = await _read_bounded(resp, STATUS_MAX_BYTES, "GET /events")
                raise _refusal("/events", resp.status, head)
            yield _chunks(resp)
        finally:
            resp.release()
            resp.close()


def _refusal(path: str, status: int, body: bytes) -> AgentapiError:
    if status == 400 and body.startswith(_HOST_REFUSED):
        return AgentapiError(
            f"GET {path}: agentapi refuses the Host of CODER_MCP_AI_AGENTAPI_URL "
            "(400 Invalid host header)",
            status,
            host_refused=True,
        )
    return AgentapiError(f"GET {path} answered {status}", status)


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The body, read in chunks and given up on past `limit` bytes: a peer cannot make
    the sidecar hold more than it has any use for."""
    if resp.content_length is not None and resp.content_length > limit:
        raise AgentapiError(f"{what}: the answer is larger than {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(_READ_CHUNK)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise AgentapiError(f"{what}: the answer is larger than {limit} bytes")
        parts.append(chunk)


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

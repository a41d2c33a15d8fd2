"""RecordingProxy: a forward HTTP proxy on loopback that records what reaches it, and
HostsResolver: a DNS resolver for aiohttp that never looks anything up.

The proxy takes

* absolute-form requests (`POST http://coder.test:41234/api/... HTTP/1.1`) for http
  targets: forwarded in origin form, one request per client connection (its answer says
  `Connection: close`, which keeps forwarding simple and every request recorded);
* `CONNECT coder.test:41234` for https targets: answered 200, then bytes are relayed both
  ways until either side closes.

Every request line is recorded with its Proxy-Authorization header. Target host names go
through `hosts` (a made-up name -> a loopback address) and are never resolved: a target
that is neither mapped nor a loopback address gets 502, so no test traffic leaves the
machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from sidecar.standins.server import Notifier

__all__ = ["HostsResolver", "ProxiedRequest", "RecordingProxy"]

# Headers meant for the proxy or this one connection, not for the target.
_HOP_BY_HOP: Final = frozenset(
    ("proxy-authorization", "proxy-connection", "connection", "keep-alive")
)
_GONE: Final = (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_loopback(hosts: Mapping[str, str]) -> dict[str, str]:
    for name, address in hosts.items():
        if not _loopback(address):
            raise ValueError(f"{name} must map to a loopback address, not {address}")
    return dict(hosts)


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    method: str
    target: str  # as on the request line: an absolute URL, or host:port for CONNECT
    proxy_authorization: str | None
    forwarded_to: str | None  # "127.0.0.1:41234"; None when the proxy refused (502)


class RecordingProxy:
    def __init__(self, *, hosts: Mapping[str, str] | None = None) -> None:
        self.hosts = _check_loopback(hosts or {})
        self.requests: list[ProxiedRequest] = []
        self._notifier = Notifier()
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port; it stays known after close()."""
        assert self._port is not None, "not started"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> RecordingProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds; re-checked whenever a request is recorded."""
        await self._notifier.wait_for(predicate, timeout, self._describe)

    def _describe(self) -> str:
        seen = ", ".join(f"{r.method} {r.target}" for r in self.requests[-8:])
        return f"{len(self.requests)} proxied requests; last: [{seen}]"

    def _record(self, request: ProxiedRequest) -> None:
        self.requests.append(request)
        self._notifier.notify()

    def _upstream(self, host: str) -> str | None:
        mapped = self.hosts.get(host.lower())
        if mapped is not None:
            return mapped
        return host if _loopback(host) else None

    # --- serving ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # close() cancels the inner task, never this one: Python 3.11's start_server
        # reports a cancelled connection callback as an unhandled exception.
        handler = asyncio.create_task(self._handle(reader, writer))
        self._connections.add(handler)
        try:
            await asyncio.wait([handler])
        finally:
            self._connections.discard(handler)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        exc = None if handler.cancelled() else handler.exception()
        # A client or target that went away mid-request, or a request this fake does not
        # take: the connection is closed, nothing is left to answer.
        if exc is not None and not isinstance(exc, _GONE):
            raise exc

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        headers = [(k, v) for k, v in headers if k]
        authorization = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)

        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            host = host.strip("[]")
            path = ""
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"not an absolute-form http request: {request_line}")
            host, port_text = parts.hostname, str(parts.port or 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        upstream = self._upstream(host)
        self._record(
            ProxiedRequest(
                method=method,
                target=target,
                proxy_authorization=authorization,
                forwarded_to=None if upstream is None else f"{upstream}:{port_text}",
            )
        )
        if upstream is None:
            writer.write(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return

        up_reader, up_writer = await asyncio.open_connection(upstream, int(port_text))
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await _tunnel(reader, writer, up_reader, up_writer)
                return
            if any(k.lower() == "transfer-encoding" for k, _ in headers):
                raise ValueError("chunked request bodies are not supported by this fake")
            length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
            body = await reader.readexactly(length)
            kept = "".join(f"{k}: {v}\r\n" for k, v in headers if k.lower() not in _HOP_BY_HOP)
            up_writer.write(
                f"{method} {path} HTTP/1.1\r\n{kept}Connection: close\r\n\r\n".encode("latin-1")
                + body
            )
            await up_writer.drain()
            # Streamed, not read whole: an SSE answer never ends. The target closes after
            # answering a `Connection: close` request.
            writer.write(_closing(await up_reader.readuntil(b"\r\n\r\n")))
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()


def _closing(head: bytes) -> bytes:
    """The target's response head, marked as the last on the client's connection."""
    status, *lines = head.removesuffix(b"\r\n\r\n").split(b"\r\n")
    kept = [
        line
        for line in lines
        if line.partition(b":")[0].strip().lower() not in (b"connection", b"keep-alive")
    ]
    return b"\r\n".join([status, *kept, b"Connection: close"]) + b"\r\n\r\n"


async def _tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Relay bytes both ways until either side closes."""

    async def relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()

    tasks = [
        asyncio.create_task(relay(reader, up_writer)),
        asyncio.create_task(relay(up_reader, writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class HostsResolver(AbstractResolver):
    """Knows only `hosts` (names -> loopback addresses) and records every name it is
    asked for; any other name fails as an unknown host does, without a lookup."""

    def __init__(self, hosts: Mapping[str, str] | None = None) -> None:
        self.hosts = _check_loopback(hosts or {})
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        address = self.hosts.get(host.lower())
        if address is None:
            raise OSError(f"{host}: not a test host name (refused without a DNS lookup)")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass

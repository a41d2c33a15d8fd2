"""The SIDECAR_HTTP_ADDR listener: /healthz, /readyz and Prometheus /metrics."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "Readiness", "parse_http_addr"]

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
# Probes and scrapes are single tiny responses; a long grace period would only delay
# the daemon's shutdown budget, which belongs to the final snapshot.
_SHUTDOWN_GRACE = 1.0
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...]


def parse_http_addr(value: str) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or ``:port`` (loopback) into (host, port).

    Raises ValueError whose message says what is wrong and shows the accepted forms.
    """
    text = value.strip()
    forms = "expected host:port, [ipv6]:port or :port (e.g. 127.0.0.1:9464)"
    if not text:
        raise ValueError(f"empty address; {forms}")
    if "://" in text or "/" in text:
        raise ValueError(f"{value!r} is a URL or path, not an address; {forms}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{value!r}: missing ']' after the IPv6 address; {forms}")
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ValueError(f"{value!r}: missing ':port' after ']'; {forms}")
        return host, _parse_port(value, rest[1:])
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{value!r}: missing ':' before the port; {forms}")
    if ":" in host:
        raise ValueError(f"{value!r}: an IPv6 address needs brackets, e.g. [::1]:9464")
    port = _parse_port(value, port_text)
    if not host:
        # An unspecified host means loopback: exposing metrics beyond the workspace
        # must be an explicit choice.
        return DEFAULT_HOST, port
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{value!r}: {host!r} is not a valid host name or IPv4 address")
    return host, port


def _parse_port(value: str, text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535, got {text!r}")
    return int(text)


class HealthServer:
    """An aiohttp listener started and stopped by the daemon; each route is answered
    by the event loop itself, so /healthz failing means the loop is stuck."""

    __slots__ = ("_host", "_port", "_readiness", "_registry", "_runner")

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Callable[[], Readiness],
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._readiness = readiness
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the real one when 0 was asked for)."""
        if self._runner is not None:
            for address in self._runner.addresses:
                return int(address[1])
        return self._port

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        if self._runner is not None:
            raise RuntimeError("HealthServer already started")
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        # Access logs off: a scraper every few seconds would drown the events that matter.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("health.listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        """Close the listener; safe to call twice or before start()."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("health.stopped")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok", headers=_NO_STORE)

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            state = self._readiness()
        except Exception as exc:
            # A broken readiness callback must read as "not ready", not as a 500 that
            # an orchestrator might treat differently.
            log.exception("health.readiness_failed")
            state = Readiness(False, (f"readiness check failed: {type(exc).__name__}",))
        body = {"ready": state.ready, "reasons": list(state.reasons)}
        return web.json_response(body, status=200 if state.ready else 503, headers=_NO_STORE)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST, **_NO_STORE},
        )

"""The SIDECAR_HTTP_ADDR listener: /healthz, /readyz and Prometheus /metrics."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "Readiness"]

log = structlog.get_logger(__name__)

# Probes and scrapes are single tiny responses; a long grace period would only delay
# the daemon's shutdown budget, which belongs to the final snapshot.
_SHUTDOWN_GRACE = 1.0
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...]


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


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
        if _is_wildcard(self._host):
            log.warning(
                "health.exposed",
                host=self._host,
                port=self.port,
                note="readiness and metrics are reachable from other hosts; bind 127.0.0.1 "
                "unless a scraper outside the workspace needs them",
            )

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

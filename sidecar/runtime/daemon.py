"""Wiring and lifecycle: builds the pieces from Settings, runs them, and stops them in order.

Stop order matters: stop reading first (the mirror is final), then flush the snapshot
within the shutdown budget, then the relay's optional last word, all under one deadline.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Final

import structlog

from sidecar.agentapi.client import AgentapiClient
from sidecar.agentapi.source import AgentapiSource, InvalidCounter
from sidecar.agentapi.statefile import StateFileSource
from sidecar.backoff import Deadline
from sidecar.coder.client import CoderClient
from sidecar.coder.session import make_session, make_token
from sidecar.coder.token import TokenSource
from sidecar.config import Settings
from sidecar.hub import Hub
from sidecar.mirror import Mirror
from sidecar.relay.policy import Relay, RelayPolicy
from sidecar.runtime.health import HealthServer, Readiness
from sidecar.runtime.metrics import Metrics
from sidecar.runtime.systemd import Notifier
from sidecar.runtime.watch import watch_file
from sidecar.spool import Spool
from sidecar.uploader import Uploader

log = structlog.get_logger(__name__)

_READY_AT_LATEST_S: Final = 5.0
_CRASH_RESTART_S: Final = 1.0


async def _supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """A component that crashes is logged and restarted; the daemon itself keeps going."""
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task.crashed", task=name, restart_in_s=_CRASH_RESTART_S)
            await asyncio.sleep(_CRASH_RESTART_S)


def _token_watcher(
    token: TokenSource,
    path: Path,
    users: Iterable[Uploader | Relay | None],
    stop: asyncio.Event,
) -> Callable[[], Awaitable[None]]:
    """Re-read a rotated token file at once, so a 401 back-off does not outlive it."""
    waiting = [user for user in users if user is not None]

    def changed() -> None:
        if token.reload():
            for user in waiting:
                user.credentials_changed()

    return lambda: watch_file(path, changed, stop)


class Daemon:
    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_requested = asyncio.Event()
        self._signals = 0
        self._forced = asyncio.Event()

    def request_stop(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("shutdown.requested", signal=signame)
            self.stop_requested.set()
        elif not self._forced.is_set():
            log.warning("shutdown.forced", signal=signame, note="final flush cut short")
            self._forced.set()

    async def run(self) -> int:
        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        notifier = Notifier(s.notify_socket, s.watchdog_usec)
        token = make_token(s)
        async with make_session() as session:
            coder = CoderClient(
                session=session,
                base_url=s.coder_agent_url,
                token=token,
                timeout=s.sidecar_http_timeout,
            )
            mirror = Mirror(s.sidecar_snapshot_max_messages)
            uploader = self._make_uploader(coder, mirror)
            relay = self._make_relay(coder)
            # A body spooled at the last stop is as new as its file: a state file that is
            # older, or adds nothing to it, must not replace it.
            recovered = uploader.recovered if uploader is not None else None
            hub = Hub(
                mirror=mirror,
                uploader=uploader,
                relay=relay,
                held_at=recovered.written_at if recovered is not None else 0.0,
                recovered=recovered.messages if recovered is not None else (),
                status_text=notifier.status,
            )
            agentapi = AgentapiSource(
                client=AgentapiClient(session=session, base_url=s.coder_mcp_ai_agentapi_url),
                listener=hub,
                metrics=self.metrics,
                probe_interval=s.sidecar_agentapi_probe_interval,
            )
            statefile = (
                StateFileSource(
                    path=s.agentapi_state_file,
                    on_read=hub.on_statefile,
                    invalid=InvalidCounter(self.metrics.invalid),
                )
                if s.agentapi_state_file is not None
                else None
            )
            health = self._make_health(hub, uploader, statefile)
            if health is not None:
                await health.start()
            stopping = asyncio.Event()
            tasks = [asyncio.create_task(_supervise("agentapi", agentapi.run))]
            if token.path is not None:
                watch_token = _token_watcher(token, token.path, (uploader, relay), stopping)
                tasks.append(asyncio.create_task(_supervise("token", watch_token)))
            if statefile is not None:
                tasks.append(asyncio.create_task(_supervise("statefile", statefile.run)))
            if uploader is not None:
                tasks.append(asyncio.create_task(_supervise("uploader", uploader.run)))
            if relay is not None:
                tasks.append(asyncio.create_task(_supervise("relay", relay.run)))
            tasks.append(asyncio.create_task(notifier.watchdog_loop(stopping)))
            log.info(
                "daemon.started",
                agentapi=s.coder_mcp_ai_agentapi_url,
                coder=s.coder_agent_url,
                task=str(s.coder_task_id) if s.coder_task_id else None,
                relay_slug=s.coder_mcp_app_status_slug,
                state_file=str(s.agentapi_state_file) if s.agentapi_state_file else None,
            )
            await self._first_contact(hub)
            notifier.ready("watching agentapi" if hub.reachable else "waiting for agentapi")
            await self.stop_requested.wait()

            # 1. stop reading: from here the mirror is the final word.
            deadline = Deadline(s.sidecar_shutdown_timeout)
            notifier.stopping("flushing the final snapshot")
            notifier.extend_timeout(s.sidecar_shutdown_timeout + 5)
            stopping.set()
            if statefile is not None:
                statefile.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # 2. the final snapshot, 3. the relay's optional last word, one deadline.
            delivered = True
            if uploader is not None:
                delivered = await self._unless_forced(uploader.flush(deadline.remaining()))
            if relay is not None:
                await self._unless_forced(relay.stop(s.sidecar_relay_on_stop, deadline.remaining()))
            if health is not None:
                await health.stop()
        log.info(
            "shutdown.complete",
            snapshot_delivered=delivered,
            forced=self._signals > 1,
            spooled=not delivered and uploader is not None,
        )
        return 1 if self._signals > 1 and not delivered else 0

    async def _first_contact(self, hub: Hub) -> None:
        """READY=1 waits until a source has spoken (agentapi answered or failed, or the
        state file was read), but never so long that the service manager gives up."""
        waits = [
            asyncio.create_task(hub.first_contact.wait()),
            asyncio.create_task(self.stop_requested.wait()),
        ]
        await asyncio.wait(waits, timeout=_READY_AT_LATEST_S, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    async def _unless_forced(self, step: Coroutine[Any, Any, bool]) -> bool:
        """Run one shutdown step; a second signal cancels it (the step cleans up, e.g.
        the uploader spools its body) and it counts as not done."""
        task = asyncio.create_task(step)
        forced = asyncio.create_task(self._forced.wait())
        await asyncio.wait((task, forced), return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not task.done():
            task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return False

    def _make_uploader(self, coder: CoderClient, mirror: Mirror) -> Uploader | None:
        s = self.settings
        if s.coder_task_id is None:
            log.warning("snapshot.disabled", reason="CODER_TASK_ID is not set")
            return None
        uploader = Uploader(
            client=coder,
            task_id=s.coder_task_id,
            mirror=mirror,
            metrics=self.metrics,
            interval=s.sidecar_snapshot_interval,
            spool=Spool(s.state_dir, s.coder_task_id),
            max_bytes=s.sidecar_snapshot_max_bytes,
        )
        self.metrics.snapshot_pending_age.set_function(uploader.pending_age)
        return uploader

    def _make_relay(self, coder: CoderClient) -> Relay | None:
        s = self.settings
        if s.coder_mcp_app_status_slug is None:
            log.info("relay.disabled", reason="CODER_MCP_APP_STATUS_SLUG is not set")
            return None
        return Relay(
            client=coder,
            slug=s.coder_mcp_app_status_slug,
            policy=RelayPolicy(
                screen_activity=s.sidecar_relay_screen_activity, uri=s.sidecar_relay_uri
            ),
            metrics=self.metrics,
            grace=s.sidecar_relay_grace,
        )

    def _make_health(
        self, hub: Hub, uploader: Uploader | None, statefile: StateFileSource | None
    ) -> HealthServer | None:
        addr = self.settings.http_addr
        if addr is None:
            return None
        stale_after = max(3 * self.settings.sidecar_snapshot_interval, 30.0)

        def readiness() -> Readiness:
            reasons: list[str] = []
            if not hub.reachable and (statefile is None or not statefile.readable()):
                reasons.append("agentapi unreachable and no readable state file")
            if uploader is not None:
                if uploader.pending_age() > stale_after:
                    reasons.append(f"snapshot undelivered for {uploader.pending_age():.0f}s")
                if uploader.blocked_reason is not None:
                    reasons.append(f"snapshot uploads backing off: {uploader.blocked_reason}")
            return Readiness(ready=not reasons, reasons=tuple(reasons))

        return HealthServer(
            host=addr[0], port=addr[1], registry=self.metrics.registry, readiness=readiness
        )

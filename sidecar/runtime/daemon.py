"""Wiring and lifecycle: builds the pieces from Settings, serves, and stops them in order.

Stop order matters: stop reading first (the mirror is final), then flush the snapshot
within the shutdown budget, then the relay's optional last word, all under one deadline.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import aiohttp
import structlog

from sidecar.agentapi.client import AgentapiClient
from sidecar.agentapi.source import AgentapiSource
from sidecar.agentapi.statefile import StateFileSource
from sidecar.backoff import Deadline
from sidecar.coder.client import CoderClient
from sidecar.coder.session import make_session, make_token
from sidecar.coder.token import TokenSource
from sidecar.config import ConfigError
from sidecar.hub import Hub
from sidecar.mirror import Mirror
from sidecar.relay.delivery import Relay
from sidecar.relay.policy import RelayPolicy
from sidecar.runtime.health import HealthServer, Readiness
from sidecar.runtime.lock import DaemonLock, LockHeld
from sidecar.runtime.metrics import InvalidCounter, Metrics
from sidecar.runtime.signals import stop_signals
from sidecar.runtime.systemd import Notifier
from sidecar.runtime.watch import watch_file
from sidecar.settings import Settings
from sidecar.spool import Spool, Spooled
from sidecar.uploader import FlushOutcome, Uploader

log = structlog.get_logger(__name__)

_READY_AT_LATEST_S: Final = 5.0
_CRASH_RESTART_S: Final = 1.0

T = TypeVar("T")


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


@dataclass(slots=True)
class _Parts:
    """What `_build` makes from Settings; `_serve` runs it and `_shutdown` stops it."""

    notifier: Notifier
    token: TokenSource
    hub: Hub
    agentapi: AgentapiSource
    uploader: Uploader | None
    relay: Relay | None
    statefile: StateFileSource | None
    health: HealthServer | None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Daemon:
    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_requested = asyncio.Event()
        self._forced = asyncio.Event()

    def request_stop(self, signame: str) -> None:
        """A stop signal arrived. The first asks for the final flush; SIGTERM or SIGHUP
        again (a supervisor signalling the process and its group) asks for the same; a
        second SIGINT (Ctrl-C twice) cuts the flush short."""
        if not self.stop_requested.is_set():
            log.info("shutdown.requested", signal=signame)
            self.stop_requested.set()
        elif signame != signal.SIGINT.name:
            log.info("shutdown.repeated", signal=signame, note="already stopping")
        elif not self._forced.is_set():
            log.warning("shutdown.forced", signal=signame, note="final flush cut short")
            self._forced.set()

    async def run(self) -> int:
        """Serve until a stop signal, then stop in order. 0 when the final snapshot was
        delivered or kept (or another daemon already serves this state directory); 1
        when it was lost, or a second SIGINT cut the flush short. Raises ConfigError when
        the health listener cannot bind."""
        lock = DaemonLock(self.settings.state_dir)
        with stop_signals(self.request_stop):
            try:
                return await self._run(lock)
            finally:
                lock.release()

    async def _run(self, lock: DaemonLock) -> int:
        if not self._lock(lock):
            return 0
        async with make_session(self.settings) as session:
            parts = self._build(session)
            await self._serve(parts)
            await self.stop_requested.wait()
            outcome = await self._shutdown(parts)
        code = self._report(outcome)
        lock.record(snapshot=outcome.value if outcome is not None else "off", exit=code)
        return code

    def _lock(self, lock: DaemonLock) -> bool:
        """Take the state directory's lock; False when another daemon already serves it.
        A directory that cannot hold the lock is reported, and the daemon runs without
        it (and without a spool)."""
        try:
            lock.acquire()
        except LockHeld as held:
            log.warning(
                "daemon.already_running",
                pid=held.pid,
                lock=str(lock.path),
                note="exiting; the running daemon serves this state directory",
            )
            return False
        except OSError as exc:
            log.error(
                "state_dir.unusable",
                path=str(lock.path.parent),
                error=exc.strerror or str(exc),
                hint="set SIDECAR_STATE_DIR to a writable directory: without it nothing "
                "undelivered can be kept, and a second daemon is not kept out",
            )
        return True

    def _report(self, outcome: FlushOutcome | None) -> int:
        forced = self._forced.is_set()
        log.info(
            "shutdown.complete",
            snapshot=outcome.value if outcome is not None else "off",
            snapshot_delivered=outcome is FlushOutcome.DELIVERED,
            spooled=outcome is FlushOutcome.SPOOLED,
            forced=forced,
        )
        if outcome is None or outcome.delivered:
            return 0
        return 1 if forced or outcome in (FlushOutcome.LOST, FlushOutcome.REJECTED) else 0

    # --- build ------------------------------------------------------------------------------

    def _build(self, session: aiohttp.ClientSession) -> _Parts:
        s = self.settings
        notifier = Notifier(s.notify_socket, s.watchdog_usec)
        token = make_token(s)
        coder = CoderClient(
            session=session,
            base_url=s.coder_agent_url,
            token=token,
            timeout=s.sidecar_http_timeout,
        )
        mirror = Mirror(s.sidecar_snapshot_max_messages)
        uploader, recovered = self._make_uploader(coder, mirror)
        relay = self._make_relay(coder)
        hub = Hub(
            mirror=mirror,
            uploader=uploader,
            relay=relay,
            # A body spooled at the last stop is as new as its file: a state file that is
            # older, or adds nothing to it, must not replace it.
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
        statefile = None
        if s.agentapi_state_file is not None:
            statefile = StateFileSource(
                path=s.agentapi_state_file,
                on_read=hub.on_statefile,
                invalid=InvalidCounter(self.metrics.invalid),
            )
        return _Parts(
            notifier=notifier,
            token=token,
            hub=hub,
            agentapi=agentapi,
            uploader=uploader,
            relay=relay,
            statefile=statefile,
            health=self._make_health(hub, uploader, statefile),
        )

    def _make_uploader(
        self, coder: CoderClient, mirror: Mirror
    ) -> tuple[Uploader | None, Spooled | None]:
        s = self.settings
        if s.coder_task_id is None:
            log.warning("snapshot.disabled", reason="CODER_TASK_ID is not set")
            return None, None
        spool = Spool(s.state_dir, s.coder_task_id)
        problem = spool.writable_problem()
        if problem is not None:
            log.error(
                "spool.unwritable",
                path=str(s.state_dir),
                error=problem,
                hint="set SIDECAR_STATE_DIR to a writable directory: a snapshot that cannot "
                "be delivered at stop would be lost",
            )
        spool.remove_stale_temps()
        recovered = spool.load()
        if recovered is not None:
            log.info("spool.recovered", path=str(spool.path), bytes=len(recovered.body))
        uploader = Uploader(
            client=coder,
            task_id=s.coder_task_id,
            mirror=mirror,
            metrics=self.metrics,
            interval=s.sidecar_snapshot_interval,
            spool=spool,
            recovered=recovered,
            max_bytes=s.sidecar_snapshot_max_bytes,
        )
        self.metrics.snapshot_pending_age.set_function(uploader.pending_age)
        return uploader, recovered

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
                if uploader.tasks_api_missing:
                    reasons.append("Coder has no Tasks API: log snapshots are off")
            return Readiness(ready=not reasons, reasons=tuple(reasons))

        return HealthServer(
            host=addr[0], port=addr[1], registry=self.metrics.registry, readiness=readiness
        )

    # --- serve ------------------------------------------------------------------------------

    async def _serve(self, parts: _Parts) -> None:
        s = self.settings
        if parts.health is not None:
            try:
                await parts.health.start()
            except OSError as exc:
                log.error("health.bind_failed", addr=s.sidecar_http_addr, error=exc.strerror)
                raise ConfigError(
                    "SIDECAR_HTTP_ADDR", f"cannot listen there: {exc.strerror or exc}"
                ) from None
        runs: list[tuple[str, Callable[[], Awaitable[None]]]] = [("agentapi", parts.agentapi.run)]
        if parts.token.path is not None:
            runs.append(("token", self._token_watcher(parts)))
        if parts.statefile is not None:
            runs.append(("statefile", parts.statefile.run))
        if parts.uploader is not None:
            runs.append(("uploader", parts.uploader.run))
        if parts.relay is not None:
            runs.append(("relay", parts.relay.run))
        parts.tasks = [asyncio.create_task(_supervise(name, run)) for name, run in runs]
        parts.tasks.append(asyncio.create_task(parts.notifier.watchdog_loop(parts.stopping)))
        log.info(
            "daemon.started",
            agentapi=s.coder_mcp_ai_agentapi_url,
            coder=s.coder_agent_url,
            task=str(s.coder_task_id) if s.coder_task_id else None,
            relay_slug=s.coder_mcp_app_status_slug,
            state_file=str(s.agentapi_state_file) if s.agentapi_state_file else None,
        )
        await self._first_contact(parts.hub)
        parts.notifier.ready("watching agentapi" if parts.hub.reachable else "waiting for agentapi")

    @staticmethod
    def _token_watcher(parts: _Parts) -> Callable[[], Awaitable[None]]:
        """Re-read a rotated token file at once, so a 401 back-off does not outlive it."""
        token, path = parts.token, parts.token.path
        assert path is not None
        users = [user for user in (parts.uploader, parts.relay) if user is not None]

        async def changed() -> None:
            if await asyncio.to_thread(token.reload):
                for user in users:
                    user.credentials_changed()

        return lambda: watch_file(path, changed, parts.stopping)

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

    # --- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self, parts: _Parts) -> FlushOutcome | None:
        """Stop in order under one deadline; what became of the final snapshot (None when
        snapshots are off)."""
        s = self.settings
        deadline = Deadline(s.sidecar_shutdown_timeout)
        parts.notifier.stopping("flushing the final snapshot")
        parts.notifier.extend_timeout(s.sidecar_shutdown_timeout + 5)
        # 1. stop reading: from here the mirror is the final word.
        parts.stopping.set()
        if parts.statefile is not None:
            parts.statefile.stop()
        for task in parts.tasks:
            task.cancel()
        await asyncio.gather(*parts.tasks, return_exceptions=True)
        # 2. the final snapshot, 3. the relay's optional last word, one deadline.
        outcome = None
        if parts.uploader is not None:
            outcome = await self._unless_forced(parts.uploader.flush(deadline.remaining()))
            if outcome is None:
                # Cut short, the flush still spooled what it could: what became of it?
                outcome = parts.uploader.conclude()
        if parts.relay is not None:
            await self._unless_forced(
                parts.relay.stop(s.sidecar_relay_on_stop, deadline.remaining())
            )
        if parts.health is not None:
            await parts.health.stop()
        return outcome

    async def _unless_forced(self, step: Coroutine[Any, Any, T]) -> T | None:
        """Run one shutdown step; a second SIGINT cancels it (the step cleans up, e.g.
        the uploader spools its body) and it returns None."""
        task = asyncio.create_task(step)
        forced = asyncio.create_task(self._forced.wait())
        await asyncio.wait((task, forced), return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not task.done():
            task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return None

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

from sidecar import statedir
from sidecar.agentapi.client import AgentapiError
from sidecar.agentapi.statefile import StateFileSource
from sidecar.backoff import Deadline
from sidecar.coder.session import make_session
from sidecar.hub import Hub
from sidecar.pipeline import Clients, Clocks, Options, Pipeline, build_pipeline
from sidecar.runtime.health import HealthServer, Readiness
from sidecar.runtime.lock import DaemonLock, LockHeld
from sidecar.runtime.metrics import InvalidCounter, Metrics
from sidecar.runtime.signals import daemon_signals
from sidecar.runtime.supervise import RESTART_PAUSE_S, Supervisor
from sidecar.runtime.systemd import Notifier
from sidecar.runtime.watch import watch_file
from sidecar.settings import Settings
from sidecar.slot import FlushOutcome
from sidecar.spool import NOTHING_KEPT, Kept, Spool, log_unsafe, open_spool, state_dir_refused
from sidecar.uploader import Uploader
from sidecar.variables import ConfigError

log = structlog.get_logger(__name__)

_READY_AT_LATEST_S: Final = 5.0
_PREFLIGHT_S: Final = 1.0
# The parts that read: stopped first, so that the mirror is final when the flush begins.
_READERS: Final = ("agentapi", "statefile", "token")

T = TypeVar("T")
MakeClients = Callable[[Settings, aiohttp.ClientSession], Clients]


@dataclass(slots=True)
class _Parts:
    """What `_build` makes from Settings; `_serve` runs it and `_shutdown` stops it."""

    notifier: Notifier
    clients: Clients
    pipeline: Pipeline
    statefile: StateFileSource | None
    health: HealthServer | None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)


class Daemon:
    """`make_clients` builds the clients from the settings and the session (tests hand in
    clients that misbehave as no real server would)."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        make_clients: MakeClients = Clients.for_run,
        supervisor_pause: float = RESTART_PAUSE_S,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_requested = asyncio.Event()
        self._forced = asyncio.Event()
        self._make_clients = make_clients
        self._refused = False  # the state directory is not ours to use
        self._uploader: Uploader | None = None
        self._strays: set[str] = set()
        self._supervisor = Supervisor(on_give_up=self._gave_up, pause=supervisor_pause)

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

    def _flush_now(self, signame: str) -> None:
        """SIGUSR1: post the newest snapshot now, as agentapi saves its state on it."""
        log.info("snapshot.flush_requested", signal=signame)
        if self._uploader is not None:
            self._uploader.notify(urgent=True)

    def _stray(self, signame: str) -> None:
        """A signal nothing here uses: ignored, and said once."""
        if signame not in self._strays:
            self._strays.add(signame)
            log.warning("signal.ignored", signal=signame, note="it has no meaning here")

    def _gave_up(self, part: str) -> None:
        """A part crashed in a loop: stop as on a signal, and exit 1."""
        log.error("shutdown.requested", reason="crash_loop", task=part)
        self.stop_requested.set()

    async def run(self) -> int:
        """Serve until a stop signal, then stop in order. 0 when the final snapshot was
        delivered or kept (or another daemon already serves this state directory); 1
        when it was lost, a second SIGINT cut the flush short, or a part crashed in a
        loop. Raises ConfigError when the health listener cannot bind, or agentapi refuses
        the host it is reached by."""
        lock = DaemonLock(self.settings.state_dir)
        with daemon_signals(stop=self.request_stop, flush_now=self._flush_now, stray=self._stray):
            try:
                return await self._run(lock)
            finally:
                lock.release()

    async def _run(self, lock: DaemonLock) -> int:
        dry_run = self.settings.sidecar_dry_run
        if dry_run:
            log.info(
                "dry_run.on",
                note="nothing is sent to Coder: each snapshot and status is printed on "
                "stdout instead, and nothing is kept in the state directory",
            )
        self._refused = not dry_run and state_dir_refused(self.settings.state_dir)
        if not dry_run and not self._refused and not self._lock(lock):
            return 0
        async with make_session(self.settings) as session:
            parts = self._build(session)
            await self._serve(parts)
            await self.stop_requested.wait()
            outcome = await self._shutdown(parts)
        code = self._report(outcome)
        lock.record(snapshot=outcome.value, exit=code)  # not taken in a dry run: no-op
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
        except statedir.Unsafe as exc:
            # The directory passed its checks, the lock file in it did not (a planted
            # symlink): the spool's files are checked each on its own.
            log_unsafe(
                lock.path,
                exc,
                "the daemon runs without its lock, so a second daemon is not kept out; "
                "remove what is in the lock file's place",
            )
        except OSError as exc:
            log.error(
                "state_dir.unusable",
                path=str(lock.path.parent),
                error=exc.strerror or str(exc),
                hint="set SIDECAR_STATE_DIR to a writable directory: without it nothing "
                "undelivered can be kept, and a second daemon is not kept out",
            )
        return True

    def _report(self, outcome: FlushOutcome) -> int:
        forced = self._forced.is_set()
        crashed = self._supervisor.gave_up
        log.info(
            "shutdown.complete",
            snapshot=outcome.value,
            snapshot_delivered=outcome is FlushOutcome.DELIVERED,
            spooled=outcome is FlushOutcome.SPOOLED,
            forced=forced,
            crashed=list(crashed),
        )
        if crashed:
            return 1
        if outcome.delivered:
            return 0
        return 1 if forced or outcome in (FlushOutcome.LOST, FlushOutcome.REJECTED) else 0

    # --- build ------------------------------------------------------------------------------

    def _build(self, session: aiohttp.ClientSession) -> _Parts:
        s = self.settings
        notifier = Notifier(s.notify_socket, s.watchdog_usec)
        clients = self._make_clients(s, session)
        if s.coder_mcp_app_status_slug is None:
            log.info("relay.disabled", reason="CODER_MCP_APP_STATUS_SLUG is not set")
        spool, kept = self._load_spool()
        pipeline = build_pipeline(
            clients,
            Clocks(),
            Options.from_settings(s),
            metrics=self.metrics,
            spool=spool,
            kept=kept,
            status_text=notifier.status,
        )
        statefile = None
        if s.agentapi_state_file is not None:
            statefile = StateFileSource(
                path=s.agentapi_state_file,
                on_read=pipeline.hub.on_statefile,
                invalid=InvalidCounter(self.metrics.invalid),
            )
        self._uploader = pipeline.uploader
        return _Parts(
            notifier=notifier,
            clients=clients,
            pipeline=pipeline,
            statefile=statefile,
            health=self._make_health(pipeline.hub, pipeline.uploader, statefile),
        )

    def _load_spool(self) -> tuple[Spool | None, Kept]:
        s = self.settings
        if s.sidecar_dry_run:
            # A printed snapshot is no delivery: nothing of it may be kept.
            return None, NOTHING_KEPT
        if s.coder_task_id is None:
            log.warning("snapshot.disabled", reason="CODER_TASK_ID is not set")
            return None, NOTHING_KEPT
        if self._refused:
            return None, NOTHING_KEPT
        return open_spool(s.state_dir, s.coder_task_id, on_write=self.metrics.spool_writes.inc)

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
        await self._preflight(parts.clients)
        if parts.health is not None:
            try:
                await parts.health.start()
            except OSError as exc:
                log.error("health.bind_failed", addr=s.sidecar_http_addr, error=exc.strerror)
                raise ConfigError(
                    "SIDECAR_HTTP_ADDR", f"cannot listen there: {exc.strerror or exc}"
                ) from None
        runs: list[tuple[str, Callable[[], Awaitable[None]]]] = [*parts.pipeline.runs()]
        watcher = self._token_watcher(parts)
        if watcher is not None:
            runs.append(("token", watcher))
        if parts.statefile is not None:
            runs.append(("statefile", parts.statefile.run))
        supervise = self._supervisor.supervise
        parts.tasks = {name: asyncio.create_task(supervise(name, run)) for name, run in runs}
        parts.tasks["watchdog"] = asyncio.create_task(parts.notifier.watchdog_loop(parts.stopping))
        log.info(
            "daemon.started",
            agentapi=s.coder_mcp_ai_agentapi_url,
            coder="(dry run)" if s.sidecar_dry_run else s.coder_agent_url,
            task=str(s.coder_task_id) if s.coder_task_id else None,
            relay_slug=s.coder_mcp_app_status_slug,
            state_file=str(s.agentapi_state_file) if s.agentapi_state_file else None,
        )
        hub = parts.pipeline.hub
        await self._first_contact(hub)
        parts.notifier.ready("watching agentapi" if hub.reachable else "waiting for agentapi")

    @staticmethod
    async def _preflight(clients: Clients) -> None:
        """agentapi answers a Host it does not allow with 400 whatever the sidecar does:
        that is a configuration error, said at once (exit 2), not retried for ever. Any
        other answer, or none yet, is the source's to deal with."""
        if clients.agentapi is None:
            return
        try:
            async with asyncio.timeout(_PREFLIGHT_S):
                await clients.agentapi.status()
        except AgentapiError as exc:
            if exc.host_refused:
                raise ConfigError(
                    "CODER_MCP_AI_AGENTAPI_URL",
                    "agentapi refuses this host (400 Invalid host header): use localhost, "
                    "127.0.0.1 or ::1, or start agentapi with --allowed-hosts naming it",
                ) from None
        except TimeoutError:
            pass

    @staticmethod
    def _token_watcher(parts: _Parts) -> Callable[[], Awaitable[None]] | None:
        """Re-read a rotated token file at once, so a 401 back-off does not outlive it."""
        token = parts.clients.token
        path = token.path if token is not None else None
        if token is None or path is None:
            return None
        users = [u for u in (parts.pipeline.uploader, parts.pipeline.relay) if u is not None]

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

    async def _shutdown(self, parts: _Parts) -> FlushOutcome:
        """Stop in order under one deadline; what became of the final snapshot."""
        s = self.settings
        deadline = Deadline(s.sidecar_shutdown_timeout)
        parts.notifier.stopping("flushing the final snapshot")
        parts.notifier.extend_timeout(s.sidecar_shutdown_timeout + 5)
        # 1. stop reading: from here the mirror is the final word.
        parts.stopping.set()
        if parts.statefile is not None:
            parts.statefile.stop()
        readers = [parts.tasks[name] for name in _READERS if name in parts.tasks]
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        pipeline = parts.pipeline
        # 2. the final snapshot, 3. the relay's optional last word, one deadline.
        outcome = FlushOutcome.OFF
        if pipeline.uploader is not None:
            flushed = await self._unless_forced(pipeline.uploader.flush(deadline.remaining()))
            # Cut short, the flush still spooled what it could: what became of it?
            outcome = flushed if flushed is not None else pipeline.uploader.conclude()
        if pipeline.relay is not None:
            await self._unless_forced(
                pipeline.relay.stop(s.sidecar_relay_on_stop, deadline.remaining())
            )
        # The sinks' loops ended with their stop; the watchdog ends here.
        for task in parts.tasks.values():
            task.cancel()
        await asyncio.gather(*parts.tasks.values(), return_exceptions=True)
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

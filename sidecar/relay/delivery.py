"""The relay's delivery: gets `RelayPolicy`'s wanted report to Coder with the fewest PATCHes.

One slot holding the newest wanted report, at most one PATCH per `min_interval`, retries
that always carry the newest report (the shared `Delivery` decides when), and dedupe
against what the server last *accepted*, so a reconnect's replay re-sends nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Final, Protocol

import structlog

from sidecar.backoff import Backoff, Deadline
from sidecar.coder.client import Outcome, Result
from sidecar.coder.delivery import Decision, Delivery, SinkEvents, Step, wait_event
from sidecar.coder.retry import RetryPolicy
from sidecar.log import remove_secrets
from sidecar.models import AgentError, AppState, Event
from sidecar.relay.policy import ErrorNews, RelayPolicy, StatusReport
from sidecar.runtime.metrics import Metrics
from sidecar.summary import fit_bytes

__all__ = ["Relay", "StatusClient", "retry_policy"]

log = structlog.get_logger(__name__)

_LOGGED_ERROR_CHARS: Final = 500
_EVENTS: Final = SinkEvents(
    prefix="relay",
    accepted="relay.patched",
    not_found="relay.not_found",
    no_route="relay.no_route",
    no_route_hint="this Coder has no app-status endpoint, or something in front of it "
    "hides it; checked again hourly",
    not_found_hint="Coder does not know the app-status endpoint (too old?) or a proxy is in "
    "the way",
)


def retry_policy(rng: random.Random | None = None) -> RetryPolicy:
    """The relay's default schedule. A status is cheap to send late (the newest one wins)
    and the server inserts a row for every attempt: retries start slower than a
    snapshot's, so that after an outage a fleet's relays come back spread over a minute
    rather than in step."""
    return RetryPolicy(transient=Backoff(base=5.0, cap=60.0, rng=rng))


class StatusClient(Protocol):
    """What the relay needs of sidecar.coder.client.CoderClient."""

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str
    ) -> Result: ...

    async def reload_token(self) -> bool: ...


class Relay:
    """Delivers RelayPolicy's wanted report. `observe` and `set_agent_reachable` are
    synchronous and cheap (the SSE reader calls them); all waiting happens in `run`."""

    __slots__ = (
        "_accepted",
        "_client",
        "_clock",
        "_delivery",
        "_grace",
        "_idle_settle",
        "_inflight",
        "_metrics",
        "_min_interval",
        "_policy",
        "_rejected",
        "_running",
        "_slug",
        "_stopped",
        "_stopping",
        "_unreachable_reported",
        "_unreachable_since",
        "_wake",
        "_wanted_since",
        "_wanted_state",
    )

    def __init__(
        self,
        *,
        client: StatusClient,
        slug: str,
        policy: RelayPolicy,
        metrics: Metrics,
        grace: float = 30.0,
        min_interval: float = 1.0,
        retry: RetryPolicy | None = None,
        idle_settle: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0, got {grace}")
        if not min_interval >= 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval}")
        self._client = client
        self._slug = slug
        self._policy = policy
        self._metrics = metrics
        self._grace = grace
        self._min_interval = min_interval
        self._delivery = Delivery(
            events=_EVENTS, credentials=client, retry=retry or retry_policy(), clock=clock
        )
        self._idle_settle = idle_settle
        self._clock = clock

        self._wanted_state: AppState | None = None
        self._wanted_since = float("-inf")
        self._accepted: StatusReport | None = None
        self._rejected: StatusReport | None = None
        self._unreachable_since: float | None = None
        self._unreachable_reported = False
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._running = False
        self._inflight: asyncio.Task[Result] | None = None

    # --- what the rest of the daemon sees ---------------------------------------------------

    @property
    def accepted(self) -> StatusReport | None:
        """The report the server last accepted (for diagnostics and tests)."""
        return self._accepted

    @property
    def pending(self) -> bool:
        """A wanted report is not yet accepted (and was not refused with a 400); for
        diagnostics and tests."""
        return self._due_report() is not None

    def observe(self, event: Event) -> None:
        if isinstance(event, AgentError):
            news, wanted = self._policy.observe_error(event)
            self._log_error(event, news)
        else:
            wanted = self._policy.observe(event)
        if wanted is not None:
            self._want(wanted)

    def _want(self, wanted: StatusReport) -> None:
        if wanted.state is not self._wanted_state:
            # The settle for an idle report runs from when the state turned, so text that
            # keeps changing cannot hold the report back for longer.
            self._wanted_state, self._wanted_since = wanted.state, self._clock()
        self._wake.set()

    @staticmethod
    def _log_error(event: AgentError, news: ErrorNews) -> None:
        fields = {"message": event.message[:_LOGGED_ERROR_CHARS], "time": event.time}
        if news is ErrorNews.WARNING:
            log.warning("relay.agent_warning", **fields)
        elif news is ErrorNews.FAILURE:
            log.error("relay.agent_error", **fields)
        elif news is ErrorNews.SUPERSEDED:
            # Replayed on the first connect, from a request since followed up.
            log.debug("relay.agent_error_superseded", **fields)

    def credentials_changed(self) -> None:
        """The token file was rotated: a 401 back-off in progress is pointless now."""
        if self._delivery.credentials_changed():
            self._wake.set()

    def set_agent_reachable(self, reachable: bool) -> None:
        if not reachable:
            if self._unreachable_since is None:
                self._unreachable_since = self._clock()
                self._wake.set()  # run() arms the grace timer
            return
        if self._unreachable_since is None:
            return
        self._unreachable_since = None
        if self._unreachable_reported:
            self._unreachable_reported = False
            log.info("relay.agent_reachable")
            wanted = self._policy.agent_reachable()
            if wanted is not None:
                self._want(wanted)
            self._wake.set()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("Relay.run() is already running")
        self._running = True
        self._stopped.clear()
        try:
            while not self._stopping:
                self._wake.clear()
                now = self._clock()
                timeout = self._check_grace(now)
                report = self._due_report()
                if report is not None:
                    due = self._delivery.ready_at(self._min_interval)
                    if report.state is AppState.IDLE:
                        # A turn's last words often land just after `stable`: wait a
                        # moment so one idle report carries them, not two.
                        due = max(due, self._wanted_since + self._idle_settle)
                    if due <= now:
                        await self._send(report)
                        continue
                    timeout = due - now if timeout is None else min(timeout, due - now)
                await wait_event(self._wake, timeout)
        finally:
            self._running = False
            self._stopped.set()

    def _check_grace(self, now: float) -> float | None:
        """Report the agent as not responding once the grace period is over; else the
        seconds until it will be (None when no timer runs)."""
        since = self._unreachable_since
        if since is None or self._unreachable_reported:
            return None
        left = since + self._grace - now
        if left > 0:
            return left
        self._unreachable_reported = True
        log.warning("relay.agent_unreachable", grace_s=self._grace)
        wanted = self._policy.agent_unreachable()
        if wanted is not None:
            self._want(wanted)
        return None

    def _due_report(self) -> StatusReport | None:
        wanted = self._policy.wanted
        if wanted is None or wanted == self._accepted or wanted == self._rejected:
            return None
        return wanted

    async def _send(self, report: StatusReport, *, stopping: bool = False) -> Decision | None:
        """One PATCH of `report`, recorded; None when stop() cut it short."""
        self._delivery.sending()
        # A task of its own, so stop() can abandon it without cancelling run().
        # A summary may quote the token (an agent that printed its environment).
        message = fit_bytes(remove_secrets(report.message))
        task = asyncio.create_task(
            self._client.patch_app_status(
                slug=self._slug, state=report.state, message=message, uri=report.uri
            )
        )
        self._inflight = task
        try:
            await asyncio.wait((task,))
        finally:
            self._inflight = None
            if not task.done():  # our caller was cancelled (a stop deadline)
                task.cancel()
                await asyncio.wait((task,))
        if task.cancelled():
            return None
        exc = task.exception()
        if exc is not None:
            # The client reports failures as values; anything else is a bug worth a
            # traceback, but not worth losing the relay over.
            log.error("relay.client_error", exc_info=exc)
            result = Result(Outcome.RETRY, None, type(exc).__name__, None, 0.0)
        else:
            result = task.result()
        self._metrics.relay_patches.labels(result=result.outcome.value).inc()
        decision = await self._delivery.record(
            result,
            stopping=stopping,
            state=str(report.state),
            message_bytes=len(report.message.encode()),
        )
        if decision.step is Step.ACCEPTED:
            self._accepted = report
        elif decision.step is Step.REFUSED:
            # The same report would be refused the same way (unknown slug, bad state):
            # wait for a different one.
            self._rejected = report
        return decision

    # --- stop -------------------------------------------------------------------------------

    async def stop(self, on_stop: AppState | None, timeout: float) -> bool:
        """Stop `run()`, abandoning a PATCH in flight. With `on_stop`, send that state
        (with the current summary) within `timeout`. True when it was delivered or nothing
        was needed. Safe to call twice."""
        deadline = Deadline(timeout, clock=self._clock)
        self._stopping = True
        self._wake.set()
        if self._inflight is not None:
            self._inflight.cancel()
        if self._running:
            try:
                async with asyncio.timeout(deadline.remaining()):
                    await self._stopped.wait()
            except TimeoutError:
                log.warning("relay.stop_timeout")
                return on_stop is None
        if on_stop is None:
            return True
        report = self._policy.stop_report(on_stop)
        if report == self._accepted:
            return True
        # The rate limit still holds; a back-off the server asked for gets one more try.
        self._delivery.lift_backoff()
        step = await self._delivery.settle(
            lambda: self._send(report, stopping=True), deadline, gap=self._min_interval
        )
        if step is Step.ACCEPTED:
            return True
        if step is Step.RETRY:
            log.warning("relay.stop_incomplete", state=str(report.state))
        return False

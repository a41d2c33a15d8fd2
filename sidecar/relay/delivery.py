"""The relay's delivery: gets `RelayPolicy`'s wanted report to Coder with the fewest PATCHes.

One slot holding the newest wanted report, at most one PATCH per `min_interval`, retries
that always carry the newest report (the shared `Delivery` decides when), and dedupe
against what the server last *accepted*, so a reconnect's replay re-sends nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Final, Protocol

import structlog

from sidecar.backoff import Backoff, Deadline
from sidecar.coder.client import Result
from sidecar.coder.delivery import Decision, Delivery, SlotLoop
from sidecar.coder.outcomes import Sink, Step
from sidecar.coder.retry import RetryPolicy
from sidecar.log import remove_secrets
from sidecar.models import AgentError, AppState, Event
from sidecar.relay.policy import ErrorNews, RelayPolicy, StatusReport
from sidecar.runtime.metrics import Metrics
from sidecar.summary import fit_bytes

__all__ = ["IDLE_SETTLE_S", "Relay", "StatusClient", "retry_policy"]

log = structlog.get_logger(__name__)

_LOGGED_ERROR_CHARS: Final = 500
# A turn's last words often land just after `stable`: an idle report waits this long so
# that one report carries them, not two.
IDLE_SETTLE_S: Final = 0.3


def retry_policy(rng: random.Random | None = None) -> RetryPolicy:
    """The relay's default schedule. A status is cheap to send late (the newest one wins)
    and the server inserts a row for every attempt: retries start slower than a
    snapshot's, so that after an outage a fleet's relays come back spread over a minute
    rather than in step."""
    return RetryPolicy(transient=Backoff(base=5.0, cap=60.0, rng=rng))


class StatusClient(Protocol):
    """What the relay needs of sidecar.coder.client.CoderClient."""

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str, timeout: float | None = None
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
        "_loop",
        "_metrics",
        "_min_interval",
        "_policy",
        "_rejected",
        "_slug",
        "_unreachable_reported",
        "_unreachable_since",
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
        idle_settle: float = IDLE_SETTLE_S,
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
            sink=Sink.STATUS, credentials=client, retry=retry or retry_policy(), clock=clock
        )
        self._loop = SlotLoop(self, self._delivery, clock=clock)
        self._idle_settle = idle_settle
        self._clock = clock

        self._wanted_state: AppState | None = None
        self._wanted_since = float("-inf")
        self._accepted: StatusReport | None = None
        self._rejected: StatusReport | None = None
        self._unreachable_since: float | None = None
        self._unreachable_reported = False

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
        self._loop.wake()

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
            self._loop.wake()

    def set_agent_reachable(self, reachable: bool) -> None:
        if not reachable:
            if self._unreachable_since is None:
                self._unreachable_since = self._clock()
                self._loop.wake()  # run() arms the grace timer
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
            self._loop.wake()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self._loop.run()

    def next_due(self, now: float) -> float | None:
        left = self._check_grace(now)
        due = None if left is None else now + left
        report = self._due_report()
        if report is not None:
            ready = self._delivery.ready_at(self._min_interval)
            if report.state is AppState.IDLE:
                # A turn's last words often land just after `stable`: wait a moment so
                # one idle report carries them, not two.
                ready = max(ready, self._wanted_since + self._idle_settle)
            due = ready if due is None else min(due, ready)
        return due

    async def send(self, timeout: float | None) -> Decision | None:
        report = self._due_report()
        return None if report is None else await self._send(report, timeout)

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

    async def _send(self, report: StatusReport, timeout: float | None) -> Decision:
        """One PATCH of `report`, recorded."""
        self._delivery.sending()
        # A summary may quote the token (an agent that printed its environment).
        message = fit_bytes(remove_secrets(report.message))
        result = await self._delivery.call(
            self._client.patch_app_status(
                slug=self._slug,
                state=report.state,
                message=message,
                uri=report.uri,
                timeout=timeout,
            )
        )
        self._metrics.relay_patches.labels(result=result.outcome.value).inc()
        decision = await self._delivery.record(
            result, state=str(report.state), message_bytes=len(report.message.encode())
        )
        if decision.step is Step.ACCEPTED:
            self._accepted = report
            self._metrics.relay_accepted(report.state)
        elif decision.step is Step.REFUSED:
            # The same report would be refused the same way (unknown slug, bad state):
            # wait for a different one.
            self._rejected = report
        return decision

    # --- stop -------------------------------------------------------------------------------

    async def stop(self, on_stop: AppState | None, timeout: float) -> bool:
        """Stop `run()`; a PATCH in flight may finish within `timeout`. With `on_stop`,
        send that state (with the current summary) within `timeout`, at the same rate
        limit. True when it was delivered or nothing was needed. Safe to call twice."""

        async def last_word(left: float | None) -> Decision | None:
            assert on_stop is not None
            report = self._policy.stop_report(on_stop)
            return None if report == self._accepted else await self._send(report, left)

        deadline = Deadline(timeout, clock=self._clock)
        step = await self._loop.stop(
            deadline, None if on_stop is None else last_word, gap=self._min_interval
        )
        if step is Step.RETRY:
            assert on_stop is not None
            log.warning("relay.stop_incomplete", state=str(on_stop))
        return step is None or step is Step.ACCEPTED

"""Getting one newest item to Coder: the outcome table applied, and the loop both sinks run.

Both sinks, log snapshots and app statuses, hold one slot (the newest item, never a queue)
and act on every answer by the one table in sidecar.coder.outcomes. `Delivery` applies it:
it logs the answer under the sink's stable names, re-reads a rejected token, keeps the
back-off deadline and the rate limit, and says what follows. `SlotLoop` is the sink's life:
a main loop that sends whenever the sink says an attempt is due and otherwise sleeps on a
wake event, and a stop that lets an attempt in flight finish within the deadline, ends the
main loop, then makes the last try until it is accepted or refused or the deadline comes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog

from sidecar.backoff import Deadline
from sidecar.coder.client import Result
from sidecar.coder.outcomes import RULES, Outcome, Rule, Sink, Step, words
from sidecar.coder.retry import RetryPolicy

__all__ = ["Credentials", "Decision", "Delivery", "SlotLoop", "SlotSink", "wait_event"]

log = structlog.get_logger(__name__)

_NEVER: Final = float("-inf")
_ERROR_CHARS: Final = 500


class Credentials(Protocol):
    """What a delivery needs of the client: re-reading a rotated token."""

    async def reload_token(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Decision:
    rule: Rule
    delay: float = 0.0  # a retry: seconds until the next attempt may go

    @property
    def step(self) -> Step:
        return self.rule.step

    @property
    def keep(self) -> bool:
        """The item is undelivered and the next attempt is not immediate: worth keeping
        somewhere safer than memory meanwhile."""
        return self.rule.step is Step.RETRY and self.delay > 0


async def wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait until `event` is set or `timeout` seconds pass (None: no limit)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass


class Delivery:
    """The outcome table and back-off state of one sink. Not shared: the two sinks fail
    independently."""

    __slots__ = (
        "_blocked",
        "_clock",
        "_credentials",
        "_last_sent_at",
        "_logged",
        "_not_before",
        "_sink",
        "retry",
    )

    def __init__(
        self,
        *,
        sink: Sink,
        credentials: Credentials,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._credentials = credentials
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._last_sent_at = _NEVER
        self._not_before = _NEVER
        self._blocked: Outcome | None = None
        self._logged: set[Outcome] = set()

    # --- when the next attempt may go -----------------------------------------------------

    def ready_at(self, gap: float = 0.0) -> float:
        """The earliest time (on the clock) for the next attempt: `gap` after the last one,
        and not inside a back-off."""
        return max(self._last_sent_at + gap, self._not_before)

    @property
    def blocked(self) -> Outcome | None:
        """The outcome whose back-off holds attempts back now, when its rule holds
        readiness back too; None otherwise."""
        if self._blocked is not None and self._clock() < self._not_before:
            return self._blocked
        return None

    @property
    def blocked_reason(self) -> str | None:
        """What `blocked` means, for a readiness probe."""
        blocked = self.blocked
        return None if blocked is None else RULES[blocked].readiness

    def credentials_changed(self) -> bool:
        """The token file was rotated. True when a back-off that a new token ends was
        lifted by it (the sink should wake up and try again)."""
        last = self.retry.last_outcome
        if last is None or not RULES[last].reload_token:
            return False
        self._not_before = _NEVER
        return True

    def final(self) -> None:
        """A stop is under way: every failure gets one more prompt try, and what seconds
        may heal is retried on the short schedule."""
        self._not_before = _NEVER
        self.retry.final = True

    # --- one attempt ----------------------------------------------------------------------

    def sending(self) -> int:
        """An attempt starts now; its number in the current run of failures, from 1."""
        self._last_sent_at = self._clock()
        return self.retry.failures + 1

    async def record(self, result: Result, **fields: Any) -> Decision:
        """Log `result` under the sink's stable names and decide what follows."""
        rule = RULES[result.outcome]
        fields.update(
            status=result.status,
            latency_ms=round(result.latency_ms, 1),
            attempt=self.retry.failures + 1,
        )
        if rule.step is not Step.RETRY:
            self.retry.succeeded()
            if rule.step is Step.ACCEPTED:
                self._not_before = _NEVER
                self._blocked = None
                self._logged.clear()
            else:
                fields.update(detail=result.detail)
            self._log(result, rule, fields)
            return Decision(rule)
        # The token first: whether it changed decides the wait, and so what is logged.
        changed = rule.reload_token and await self._reload_token()
        delay = self.retry.failed(result, token_changed=changed)
        fields.update(detail=result.detail, retry_in_s=round(delay, 2))
        if rule.reload_token:
            fields.update(token_changed=changed)
        if result.location is not None:
            fields.update(location=result.location)
        first = result.outcome not in self._logged
        self._logged.add(result.outcome)
        if first or not rule.once:
            self._log(result, rule, fields)
        self._not_before = self._clock() + delay
        self._blocked = result.outcome if rule.readiness is not None else None
        return Decision(rule, delay)

    def _log(self, result: Result, rule: Rule, fields: dict[str, Any]) -> None:
        said = words(self._sink, result.outcome)
        if said.event is None:
            return  # the sink tells this one itself
        if said.hint:
            fields.update(hint=said.hint)
        getattr(log, rule.level.value)(f"{self._sink.value}.{said.event}", **fields)

    async def call(self, request: Awaitable[Result]) -> Result:
        """Await the client's `request`. The client reports every failure as a value;
        anything it raises is a bug worth a traceback, but not worth losing the sink over:
        it counts as a call that got no answer."""
        try:
            return await request
        except Exception as exc:
            log.exception(f"{self._sink.value}.client_error")
            return Result.unanswered(type(exc).__name__)

    async def _reload_token(self) -> bool:
        try:
            return await self._credentials.reload_token()
        except Exception as exc:  # a token file that vanished must not end the sink
            log.error("token.reload_failed", error=str(exc)[:_ERROR_CHARS])
            return False


class SlotSink(Protocol):
    """What a sink tells its loop."""

    def next_due(self, now: float) -> float | None:
        """When (on the loop's clock) the next attempt should start: at once when that is
        not after `now`; None when there is nothing to send until the sink is woken."""

    async def send(self, timeout: float | None) -> Decision | None:
        """Send the newest item once, `timeout` bounding the request (None: the client's
        own), and record the answer; None when there was nothing to send."""


Attempt = Callable[[float | None], Awaitable[Decision | None]]


class SlotLoop:
    """A sink's life: `run` until `stop`. The sink calls `wake` when its slot changed."""

    __slots__ = (
        "_clock",
        "_delivery",
        "_done",
        "_inflight",
        "_running",
        "_sink",
        "_stopping",
        "_wake",
    )

    def __init__(
        self,
        sink: SlotSink,
        delivery: Delivery,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._delivery = delivery
        self._clock = clock
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._done.set()
        self._running = False
        self._stopping = False
        self._inflight: asyncio.Task[Decision | None] | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def run(self) -> None:
        """Send whenever an attempt is due, until `stop`."""
        if self._running:
            raise RuntimeError("SlotLoop.run() is already running")
        self._running = True
        self._done.clear()
        try:
            while not self._stopping:
                self._wake.clear()
                now = self._clock()
                due = self._sink.next_due(now)
                if due is not None and due <= now:
                    await self._attempt()
                    continue
                await wait_event(self._wake, None if due is None else due - now)
        finally:
            self._running = False
            self._done.set()

    async def _attempt(self) -> None:
        # A task of its own, so that stop() can bound it without cancelling run().
        task = asyncio.create_task(self._sink.send(None))
        self._inflight = task
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            task.cancel()  # run() itself was cancelled
            raise
        finally:
            self._inflight = None
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error

    async def stop(
        self, deadline: Deadline, last: Attempt | None = None, *, gap: float = 0.0
    ) -> Step | None:
        """End `run`: an attempt in flight may finish until `deadline`, then it is
        cancelled. With `last`, try it (it sends the newest item, or the sink's last word)
        until it is accepted or refused: that Step; RETRY when the deadline came first;
        None when it had nothing to send. Safe to call twice."""
        self._stopping = True
        self._wake.set()
        inflight = self._inflight
        if inflight is not None:
            await asyncio.wait((inflight,), timeout=deadline.remaining())
            if not inflight.done():
                inflight.cancel()
                await asyncio.wait((inflight,))
        await self._done.wait()
        if last is None:
            return None
        self._delivery.final()
        return await self._settle(last, deadline, gap)

    async def _settle(self, last: Attempt, deadline: Deadline, gap: float) -> Step | None:
        """Gives up when the next attempt could not start before `deadline`, not after."""
        while True:
            wait = max(0.0, self._delivery.ready_at(gap) - self._clock())
            if wait >= deadline.remaining():
                return Step.RETRY
            if wait > 0:
                await asyncio.sleep(wait)
                if deadline.expired():  # a loop that overslept: no attempt past it
                    return Step.RETRY
            try:
                async with asyncio.timeout(deadline.remaining()):
                    decision = await last(deadline.remaining())
            except TimeoutError:
                return Step.RETRY
            if decision is None or decision.step is not Step.RETRY:
                return None if decision is None else decision.step

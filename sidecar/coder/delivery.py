"""One outcome table for everything the sidecar sends to Coder.

Both sinks, log snapshots and app statuses, send one newest item at a time and act on
each answer alike: accepted; retried after a back-off (or when `Retry-After` says);
refused for good (a 400: wait for a different item); a 404 logged once and backed off
for minutes; a missing route backed off for an hour; a 401/403 answered by re-reading the
token file first, then retrying at once when it changed or backing off when it did not; a
redirect (never followed: the token must not go where it points) logged once with where
it points and backed off like a configuration problem. `Delivery` holds that table, the
one back-off deadline and the rate limit; a sink keeps only what it sends and when.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog

from sidecar.backoff import Deadline
from sidecar.coder.client import Outcome, Result
from sidecar.coder.retry import RetryPolicy

__all__ = ["Credentials", "Decision", "Delivery", "SinkEvents", "Step", "wait_event"]

log = structlog.get_logger(__name__)

_NEVER: Final = float("-inf")
_ERROR_CHARS: Final = 500


class Credentials(Protocol):
    """What a delivery needs of the client: re-reading a rotated token."""

    async def reload_token(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class SinkEvents:
    """A sink's stable log event names, and what a person should check. `no_route` None:
    the sink explains a missing route itself."""

    prefix: str
    accepted: str
    not_found: str
    not_found_hint: str
    no_route: str | None
    no_route_hint: str = ""
    unauthorized_hint: str = (
        "the agent token was rejected; it is re-read from CODER_AGENT_TOKEN_FILE when that is set"
    )
    redirect_hint: str = (
        "Coder answered with a redirect, which is never followed (the agent token must not "
        "go elsewhere): set CODER_AGENT_URL to the URL it points to"
    )


class Step(enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # final for this item: send it again and it is refused again
    RETRY = "retry"  # send the newest item again once `ready_at` has passed


@dataclass(frozen=True, slots=True)
class Decision:
    step: Step
    delay: float = 0.0  # RETRY: seconds until the next attempt may go

    @property
    def keep(self) -> bool:
        """The item is undelivered and the next attempt is not immediate: worth keeping
        somewhere safer than memory meanwhile."""
        return self.step is Step.RETRY and self.delay > 0


ACCEPTED: Final = Decision(Step.ACCEPTED)
REFUSED: Final = Decision(Step.REFUSED)


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
        "_clock",
        "_credentials",
        "_events",
        "_last_sent_at",
        "_logged",
        "_not_before",
        "_reason",
        "retry",
    )

    def __init__(
        self,
        *,
        events: SinkEvents,
        credentials: Credentials,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._events = events
        self._credentials = credentials
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._last_sent_at = _NEVER
        self._not_before = _NEVER
        self._reason: str | None = None
        # Outcomes logged once per run of failures: repeating them every back-off would
        # only bury the first, which says what to do.
        self._logged: set[Outcome] = set()

    # --- when the next attempt may go -----------------------------------------------------

    def ready_at(self, gap: float = 0.0) -> float:
        """The earliest time (on the clock) for the next attempt: `gap` after the last one,
        and not inside a back-off."""
        return max(self._last_sent_at + gap, self._not_before)

    @property
    def blocked_reason(self) -> str | None:
        """Why attempts are held back for long ('not_found', 'no_route', 'unauthorized',
        'redirect'), while that back-off lasts; None otherwise."""
        if self._reason is not None and self._clock() < self._not_before:
            return self._reason
        return None

    def credentials_changed(self) -> bool:
        """The token file was rotated. True when a 401 back-off was lifted by it (the sink
        should wake up and try again)."""
        if self.retry.last_outcome is not Outcome.UNAUTHORIZED:
            return False
        self._not_before = _NEVER
        return True

    def lift_backoff(self) -> None:
        """At stop every failure gets one more prompt try: a back-off of minutes would
        only waste the budget the final attempt has."""
        self._not_before = _NEVER

    # --- one attempt ----------------------------------------------------------------------

    def sending(self) -> int:
        """An attempt starts now; its number in the current run of failures, from 1."""
        self._last_sent_at = self._clock()
        return self.retry.failures + 1

    async def record(self, result: Result, *, stopping: bool = False, **fields: Any) -> Decision:
        """Log `result` once, under the sink's stable names, and decide what follows. At
        stop (`stopping`) every failure retries on the short transient schedule."""
        fields.update(
            status=result.status,
            latency_ms=round(result.latency_ms, 1),
            attempt=self.retry.failures + 1,
        )
        events = self._events
        outcome = result.outcome
        if outcome is Outcome.OK:
            log.info(events.accepted, **fields)
            self.retry.succeeded()
            self._not_before = _NEVER
            self._reason = None
            self._logged.clear()
            return ACCEPTED
        if outcome is Outcome.REJECTED:
            log.error(f"{events.prefix}.rejected", detail=result.detail, **fields)
            self.retry.succeeded()
            return REFUSED
        # The token first: whether it changed decides the wait, and so what is logged.
        changed = outcome is Outcome.UNAUTHORIZED and await self._reload_token()
        delay = self.retry.failed(result, token_changed=changed, stopping=stopping)
        fields.update(detail=result.detail, retry_in_s=round(delay, 2))
        first = outcome not in self._logged
        self._logged.add(outcome)
        if outcome is Outcome.RETRY:
            log.warning(f"{events.prefix}.retry", **fields)
        elif outcome is Outcome.NOT_FOUND:
            if first:
                log.error(events.not_found, hint=events.not_found_hint, **fields)
        elif outcome is Outcome.NO_ROUTE:
            if first and events.no_route is not None:
                log.error(events.no_route, hint=events.no_route_hint, **fields)
        elif outcome is Outcome.REDIRECT:
            if first:
                log.error(
                    f"{events.prefix}.redirected",
                    location=result.location,
                    hint=events.redirect_hint,
                    **fields,
                )
        else:
            log.error(
                f"{events.prefix}.unauthorized",
                token_changed=changed,
                hint=events.unauthorized_hint,
                **fields,
            )
        self._not_before = self._clock() + delay
        self._reason = None if outcome is Outcome.RETRY else outcome.value
        return Decision(Step.RETRY, delay)

    async def _reload_token(self) -> bool:
        try:
            return await self._credentials.reload_token()
        except Exception as exc:  # a token file that vanished must not end the sink
            log.error("token.reload_failed", error=str(exc)[:_ERROR_CHARS])
            return False

    # --- until a deadline -----------------------------------------------------------------

    async def settle(
        self,
        attempt: Callable[[], Awaitable[Decision | None]],
        deadline: Deadline,
        *,
        gap: float = 0.0,
    ) -> Step | None:
        """Run `attempt` (it sends the newest item and records the answer with
        `stopping=True`) until the item is accepted or refused: that Step. None when
        `attempt` found nothing to send; RETRY when the deadline came first. Gives up
        when the next attempt could not start before `deadline`, not after it."""
        while True:
            wait = self.ready_at(gap) - self._clock()
            if wait >= deadline.remaining():
                return Step.RETRY
            if wait > 0:
                await asyncio.sleep(wait)
                if deadline.expired():  # a loop that overslept: no attempt past it
                    return Step.RETRY
            try:
                async with asyncio.timeout(deadline.remaining()):
                    decision = await attempt()
            except TimeoutError:
                return Step.RETRY
            if decision is None or decision.step is not Step.RETRY:
                return None if decision is None else decision.step

"""How long to wait after a failed call to Coder: one schedule for snapshots and statuses.

Pure. The outcome decides the regime: a transient failure retries in seconds (or when
`Retry-After` says), a 404 in minutes (the task is unknown, which does not heal
quickly), a missing route in about an hour (a Coder without the endpoint changes only
when it is upgraded or reconfigured), a 401/403 at once when the token file has changed
and with a slow back-off otherwise, and a redirect (a configuration problem) slowly too.
"""

from __future__ import annotations

from typing import Final

from sidecar.backoff import Backoff
from sidecar.coder.client import Outcome, Result

NOT_FOUND_FLOOR_S: Final = 60.0
UNAUTHORIZED_FLOOR_S: Final = 1.0
NO_ROUTE_FLOOR_S: Final = 3000.0
# Outcomes that seconds cannot heal: at stop they are not retried within the budget.
_LASTING: Final = frozenset((Outcome.NO_ROUTE, Outcome.REDIRECT))


class RetryPolicy:
    """Back-off schedules plus the current run of failures. One instance per caller: the
    uploader and the relay fail independently."""

    __slots__ = (
        "_outcome",
        "_streak",
        "auth",
        "failures",
        "no_route",
        "no_route_floor",
        "not_found",
        "transient",
    )

    def __init__(
        self,
        *,
        transient: Backoff | None = None,
        not_found: Backoff | None = None,
        auth: Backoff | None = None,
        no_route: Backoff | None = None,
        no_route_floor: float = NO_ROUTE_FLOOR_S,
    ) -> None:
        self.transient = transient or Backoff(base=0.5, cap=30.0)
        self.not_found = not_found or Backoff(base=60.0, cap=540.0)
        # 401/403 and redirects: the configuration or the credentials must change.
        self.auth = auth or Backoff(base=5.0, cap=300.0)
        self.no_route = no_route or Backoff(base=600.0, cap=600.0)
        self.no_route_floor = no_route_floor
        self.failures = 0  # in a row, of any kind: what logs call the attempt
        self._outcome: Outcome | None = None
        self._streak = 0  # in a row with the same outcome: what the back-off grows on

    def failed(
        self, result: Result, *, token_changed: bool = False, stopping: bool = False
    ) -> float:
        """Record a failure and return the seconds to wait. The back-off grows only over
        failures of one kind, so a 401 after a run of refused connections starts short."""
        if result.outcome is not self._outcome:
            self._outcome, self._streak = result.outcome, 0
        delay = self.delay(result, self._streak, token_changed=token_changed, stopping=stopping)
        self._streak += 1
        self.failures += 1
        return delay

    @property
    def last_outcome(self) -> Outcome | None:
        """The outcome of the failure run in progress (None after a success)."""
        return self._outcome

    def succeeded(self) -> None:
        self.failures = self._streak = 0
        self._outcome = None

    def delay(
        self, result: Result, attempt: int, *, token_changed: bool = False, stopping: bool = False
    ) -> float:
        """Seconds before the next try; `attempt` counts failures so far, from 0. At stop
        (`stopping`) the transient schedule serves every failure that a retry within
        seconds may still heal: a back-off of minutes would only use up the budget that
        the spool is waiting for."""
        if result.outcome is Outcome.REJECTED or result.outcome is Outcome.OK:
            raise ValueError(f"{result.outcome.value} is final, not retried")
        if result.outcome is Outcome.UNAUTHORIZED and token_changed:
            return 0.0
        if result.outcome is Outcome.RETRY or (stopping and result.outcome not in _LASTING):
            if result.retry_after is not None:
                return result.retry_after
            return self.transient.delay(attempt)
        if result.outcome is Outcome.NOT_FOUND:
            return NOT_FOUND_FLOOR_S + self.not_found.delay(attempt)
        if result.outcome is Outcome.NO_ROUTE:
            return self.no_route_floor + self.no_route.delay(attempt)
        return UNAUTHORIZED_FLOOR_S + self.auth.delay(attempt)

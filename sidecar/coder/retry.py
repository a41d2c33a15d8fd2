"""How long to wait after a failed call to Coder: one schedule for snapshots and statuses.

Pure. The outcome's rule (sidecar.coder.outcomes) names the schedule; this module holds
the figures: a transient failure retries in seconds (or when `Retry-After` says), a task
unknown to the server in minutes, a missing route in about an hour, and a configuration
problem (a rejected token, a redirect, an answer that is not Coder's) slowly, except that a
rejected token retries at once when the token file has changed.

At stop (`final`), every failure that seconds may still heal retries on the transient
schedule: a back-off of minutes would only use up the budget that the spool waits for.
"""

from __future__ import annotations

import random
from typing import Final

from sidecar.backoff import Backoff
from sidecar.coder.client import Result
from sidecar.coder.outcomes import RULES, Outcome, Schedule, Step

NOT_FOUND_FLOOR_S: Final = 60.0
CONFIG_FLOOR_S: Final = 1.0
NO_ROUTE_FLOOR_S: Final = 3000.0


class RetryPolicy:
    """Back-off schedules plus the current run of failures. One instance per caller: the
    uploader and the relay fail independently."""

    __slots__ = ("_floors", "_outcome", "_schedules", "_streak", "failures", "final", "transient")

    def __init__(
        self,
        *,
        transient: Backoff | None = None,
        not_found: Backoff | None = None,
        auth: Backoff | None = None,
        no_route: Backoff | None = None,
        no_route_floor: float = NO_ROUTE_FLOOR_S,
        rng: random.Random | None = None,
    ) -> None:
        """Each schedule not given is the default, drawing from `rng`."""
        self.transient = transient or Backoff(base=0.5, cap=30.0, rng=rng)
        self._schedules: dict[Schedule, tuple[float, Backoff]] = {
            Schedule.NOT_FOUND: (
                NOT_FOUND_FLOOR_S,
                not_found or Backoff(base=60.0, cap=540.0, rng=rng),
            ),
            Schedule.CONFIG: (CONFIG_FLOOR_S, auth or Backoff(base=5.0, cap=300.0, rng=rng)),
            Schedule.NO_ROUTE: (
                no_route_floor,
                no_route or Backoff(base=600.0, cap=600.0, rng=rng),
            ),
        }
        self.final = False  # a stop is under way: see the module's docstring
        self.failures = 0  # in a row, of any kind: what logs call the attempt
        self._outcome: Outcome | None = None
        self._streak = 0  # in a row with the same outcome: what the back-off grows on

    def failed(self, result: Result, *, token_changed: bool = False) -> float:
        """Record a failure and return the seconds to wait. The back-off grows only over
        failures of one kind, so a 401 after a run of refused connections starts short."""
        if result.outcome is not self._outcome:
            self._outcome, self._streak = result.outcome, 0
        delay = self.delay(result, self._streak, token_changed=token_changed)
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

    def delay(self, result: Result, attempt: int, *, token_changed: bool = False) -> float:
        """Seconds before the next try; `attempt` counts failures so far, from 0."""
        rule = RULES[result.outcome]
        if rule.step is not Step.RETRY:
            raise ValueError(f"{result.outcome.value} is final, not retried")
        if rule.reload_token and token_changed:
            return 0.0
        schedule = rule.schedule
        if self.final and not rule.lasting:
            schedule = Schedule.TRANSIENT
        if schedule is Schedule.TRANSIENT:
            if result.retry_after is not None:
                return result.retry_after
            return self.transient.delay(attempt)
        floor, backoff = self._schedules[schedule]
        return floor + backoff.delay(attempt)

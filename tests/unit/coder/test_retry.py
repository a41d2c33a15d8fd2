from __future__ import annotations

import random

import pytest

from sidecar.backoff import Backoff
from sidecar.coder.client import Result
from sidecar.coder.outcomes import SNAPSHOT_STORED, Outcome, classify
from sidecar.coder.retry import (
    CONFIG_FLOOR_S,
    NO_ROUTE_FLOOR_S,
    NOT_FOUND_FLOOR_S,
    RetryPolicy,
)

UNKNOWN_TASK = "Resource not found or you do not have access to this resource"


def result(
    status: int | None, retry_after: float | None = None, message: str | None = None
) -> Result:
    if status == 404 and message is None:
        message = UNKNOWN_TASK
    outcome = classify(status, expect=SNAPSHOT_STORED, message=message)
    return Result(outcome, status, "", retry_after, 1.0)


def final(p: RetryPolicy) -> RetryPolicy:
    p.final = True
    return p


def policy() -> RetryPolicy:
    rng = random.Random(7)
    return RetryPolicy(
        transient=Backoff(base=0.5, cap=30, rng=rng),
        not_found=Backoff(base=60, cap=540, rng=rng),
        auth=Backoff(base=5, cap=300, rng=rng),
    )


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504])
def test_transient_failures_retry_in_seconds(status: int | None) -> None:
    p = policy()
    delays = [p.delay(result(status), attempt) for attempt in range(12)]
    assert all(0 <= d <= 30 for d in delays)
    assert max(delays[:2]) <= 1.0  # the first retries come quickly


def test_retry_after_wins_over_the_schedule() -> None:
    assert policy().delay(result(503, retry_after=42), 0) == 42
    assert policy().delay(result(429, retry_after=0), 5) == 0


def test_not_found_waits_minutes() -> None:
    p = policy()
    delays = [p.delay(result(404), attempt) for attempt in range(10)]
    assert all(NOT_FOUND_FLOOR_S <= d <= NOT_FOUND_FLOOR_S + 540 for d in delays)


@pytest.mark.parametrize("status", [401, 403])
def test_unauthorized(status: int) -> None:
    p = policy()
    assert p.delay(result(status), 3, token_changed=True) == 0
    delays = [p.delay(result(status), attempt) for attempt in range(10)]
    assert all(CONFIG_FLOOR_S <= d <= CONFIG_FLOOR_S + 300 for d in delays)


@pytest.mark.parametrize("status", [204, 400, 409, 413])
def test_final_outcomes_have_no_delay(status: int) -> None:
    with pytest.raises(ValueError, match="final"):
        policy().delay(result(status), 0)


def test_missing_route_waits_about_an_hour() -> None:
    p = policy()
    delays = [p.delay(result(404, message="Route not found."), attempt) for attempt in range(10)]
    assert all(NO_ROUTE_FLOOR_S <= d <= NO_ROUTE_FLOOR_S + 600 for d in delays)


@pytest.mark.parametrize("status", [301, 307, 308])
def test_redirect_waits_like_a_configuration_problem(status: int) -> None:
    p = policy()
    delays = [p.delay(result(status), attempt) for attempt in range(10)]
    assert all(CONFIG_FLOOR_S <= d <= CONFIG_FLOOR_S + 300 for d in delays)


@pytest.mark.parametrize(
    ("status", "message"), [(None, None), (503, None), (404, None), (401, None)]
)
def test_at_stop_seconds_may_heal_it_so_the_short_schedule_serves(
    status: int | None, message: str | None
) -> None:
    p = policy()
    final(p)
    assert all(p.delay(result(status), a) <= 30 for a in range(12))
    assert p.delay(result(status), 0) <= 0.5


def test_at_stop_retry_after_still_wins() -> None:
    assert final(policy()).delay(result(404, retry_after=7), 0) == 7


@pytest.mark.parametrize(
    ("status", "message"), [(404, "Route not found."), (404, ""), (308, None), (200, None)]
)
def test_at_stop_what_seconds_cannot_heal_keeps_its_schedule(
    status: int, message: str | None
) -> None:
    assert final(policy()).delay(result(status, message=message), 0) >= 1.0


def test_backoff_grows_only_over_failures_of_one_kind() -> None:
    p = RetryPolicy(
        transient=Backoff(base=1, cap=1000, rng=random.Random(1)),
        auth=Backoff(base=5, cap=300, rng=random.Random(1)),
    )
    for _ in range(6):
        p.failed(result(503))
    assert p.failures == 6
    assert p.last_outcome is Outcome.RETRY
    # A 401 after a run of 503s starts its own schedule from the beginning.
    assert p.failed(result(401)) <= CONFIG_FLOOR_S + 5
    assert p.failures == 7
    p.succeeded()
    assert p.failures == 0
    assert p.last_outcome is None


def test_a_changed_token_retries_at_once_whatever_the_run() -> None:
    p = policy()
    for _ in range(5):
        p.failed(result(401))
    assert p.failed(result(401), token_changed=True) == 0
    final(p)
    assert p.failed(result(401), token_changed=True) == 0


class Ceiling(random.Random):
    """Every delay at the top of its range, so that a schedule is exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_default_schedules() -> None:
    p = RetryPolicy(rng=Ceiling())
    assert [p.delay(result(503), n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [p.delay(result(404), n) - NOT_FOUND_FLOOR_S for n in range(5)] == [
        60,
        120,
        240,
        480,
        540,
    ]
    assert [p.delay(result(401), n) - CONFIG_FLOOR_S for n in range(7)] == [
        5,
        10,
        20,
        40,
        80,
        160,
        300,
    ]
    no_route = result(404, message="Route not found.")
    assert [p.delay(no_route, n) for n in range(3)] == [NO_ROUTE_FLOOR_S + 600] * 3
    assert p.transient.ceiling(7) == 30


def test_a_new_policy_has_no_failure_run() -> None:
    p = RetryPolicy()
    assert p.last_outcome is None
    assert p.failures == 0
    assert p.final is False  # no stop is under way


def test_a_failure_is_neither_a_changed_token_nor_a_stop_unless_said() -> None:
    p = policy()
    assert p.failed(result(401)) >= CONFIG_FLOOR_S
    assert p.failed(result(404)) >= NOT_FOUND_FLOOR_S


def test_the_backoff_steps_once_per_failure_and_restarts_for_a_new_kind() -> None:
    p = RetryPolicy(
        transient=Backoff(base=1, cap=1000, rng=Ceiling()),
        auth=Backoff(base=5, cap=300, rng=Ceiling()),
    )
    assert [p.failed(result(503)) for _ in range(4)] == [1, 2, 4, 8]
    assert [p.failed(result(401)) for _ in range(3)] == [
        CONFIG_FLOOR_S + 5,
        CONFIG_FLOOR_S + 10,
        CONFIG_FLOOR_S + 20,
    ]
    assert p.failed(result(503)) == 1
    p.succeeded()
    assert p.failed(result(503)) == 1

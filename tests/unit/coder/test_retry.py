from __future__ import annotations

import random

import pytest

from sidecar.backoff import Backoff
from sidecar.coder.client import Outcome, Result, classify
from sidecar.coder.retry import (
    NO_ROUTE_FLOOR_S,
    NOT_FOUND_FLOOR_S,
    UNAUTHORIZED_FLOOR_S,
    RetryPolicy,
)


def result(
    status: int | None, retry_after: float | None = None, message: str | None = None
) -> Result:
    return Result(classify(status, message), status, "", retry_after, 1.0)


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
    assert all(UNAUTHORIZED_FLOOR_S <= d <= UNAUTHORIZED_FLOOR_S + 300 for d in delays)


@pytest.mark.parametrize("status", [200, 204, 400, 409, 413])
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
    assert all(UNAUTHORIZED_FLOOR_S <= d <= UNAUTHORIZED_FLOOR_S + 300 for d in delays)


@pytest.mark.parametrize(
    ("status", "message"), [(None, None), (503, None), (404, None), (401, None)]
)
def test_at_stop_seconds_may_heal_it_so_the_short_schedule_serves(
    status: int | None, message: str | None
) -> None:
    p = policy()
    assert all(p.delay(result(status), a, stopping=True) <= 30 for a in range(12))
    assert p.delay(result(status), 0, stopping=True) <= 0.5


def test_at_stop_retry_after_still_wins() -> None:
    assert policy().delay(result(404, retry_after=7), 0, stopping=True) == 7


@pytest.mark.parametrize(("status", "message"), [(404, "Route not found."), (308, None)])
def test_at_stop_what_seconds_cannot_heal_keeps_its_schedule(
    status: int, message: str | None
) -> None:
    assert policy().delay(result(status, message=message), 0, stopping=True) >= 1.0


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
    assert p.failed(result(401)) <= UNAUTHORIZED_FLOOR_S + 5
    assert p.failures == 7
    p.succeeded()
    assert p.failures == 0
    assert p.last_outcome is None


def test_a_changed_token_retries_at_once_whatever_the_run() -> None:
    p = policy()
    for _ in range(5):
        p.failed(result(401))
    assert p.failed(result(401), token_changed=True) == 0
    assert p.failed(result(401), token_changed=True, stopping=True) == 0

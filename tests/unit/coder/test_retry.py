from __future__ import annotations

import random

import pytest

from sidecar.backoff import Backoff
from sidecar.coder.client import Result, classify
from sidecar.coder.retry import NOT_FOUND_FLOOR_S, UNAUTHORIZED_FLOOR_S, RetryPolicy


def result(status: int | None, retry_after: float | None = None) -> Result:
    return Result(classify(status), status, "", retry_after, 1.0)


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

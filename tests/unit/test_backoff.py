from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from sidecar.backoff import MAX_RETRY_AFTER, Backoff, Deadline, parse_retry_after

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# --- Backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_delays_within_full_jitter_bounds(seed: int) -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(seed))
    for attempt in range(20):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert backoff.ceiling(attempt) == ceiling
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter really spreads: not stuck at the bound nor at zero.
        assert min(delays) < ceiling * 0.25
        assert max(delays) > ceiling * 0.75


def test_same_seed_same_schedule() -> None:
    a = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    assert [a.delay(n) for n in range(30)] == [b.delay(n) for n in range(30)]


def test_cap_holds_for_huge_attempts_without_overflow() -> None:
    backoff = Backoff(base=2.0, cap=300.0, rng=random.Random(3))
    for attempt in (60, 100, 1023, 1024, 5000, 10**6):
        assert backoff.ceiling(attempt) == 300.0
        d = backoff.delay(attempt)
        assert 0.0 <= d <= 300.0
        assert math.isfinite(d)


def test_cap_reached_exactly_when_exponential_passes_it() -> None:
    backoff = Backoff(base=1.0, cap=10.0)
    assert [backoff.ceiling(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_zero_base_means_no_wait() -> None:
    backoff = Backoff(base=0.0, cap=10.0)
    assert [backoff.delay(n) for n in range(5)] == [0.0] * 5


def test_default_rng_works() -> None:
    backoff = Backoff(base=1.0, cap=4.0)
    assert all(0.0 <= backoff.delay(n) <= min(4.0, 2.0**n) for n in range(10))


@pytest.mark.parametrize(
    ("base", "cap"), [(-1.0, 1.0), (1.0, -1.0), (math.nan, 1.0), (1.0, math.nan)]
)
def test_invalid_parameters(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        Backoff(base=base, cap=cap)


def test_negative_attempt_rejected() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff(base=1.0, cap=2.0).delay(-1)


# --- Retry-After --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("0", 0.0), ("  7 ", 7.0), ("007", 7.0), ("86400", 86400.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_retry_after_absurd_seconds_are_capped() -> None:
    assert parse_retry_after("9" * 30, now=NOW) == MAX_RETRY_AFTER
    assert parse_retry_after("9" * 5000, now=NOW) == MAX_RETRY_AFTER


def test_retry_after_http_date_in_future() -> None:
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=90)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=NOW) == pytest.approx(90.0)
    assert parse_retry_after("Sat, 01 Mar 2025 12:01:30 GMT", now=NOW) == pytest.approx(90.0)


def test_retry_after_http_date_in_past_is_zero() -> None:
    assert parse_retry_after("Sat, 01 Mar 2025 11:00:00 GMT", now=NOW) == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=NOW) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        "Saturday, 01-Mar-25 12:00:30 GMT",  # RFC 850, obsolete but allowed by RFC 9110
        "Sat Mar  1 12:00:30 2025",  # asctime: no zone, means GMT
    ],
)
def test_retry_after_obsolete_date_formats(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(30.0)


def test_retry_after_seconds_with_leading_zeros_are_read_as_a_number() -> None:
    # Twelve characters, so the shortcut for absurdly long values must not take it.
    assert parse_retry_after("000000000005", now=NOW) == 5.0


def test_retry_after_date_with_a_numeric_offset_is_read_at_that_offset() -> None:
    # RFC 9110 wants GMT, but a server that sends an offset means that instant.
    assert parse_retry_after("Sat, 01 Mar 2025 13:01:30 +0100", now=NOW) == pytest.approx(90.0)


@pytest.fixture
def local_zone_east_of_utc() -> Iterator[None]:
    """The process's local time zone is UTC+05:30 (a POSIX TZ string: no tzdata needed)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "IST-5:30")
        time.tzset()
        yield
    time.tzset()


@pytest.mark.usefixtures("local_zone_east_of_utc")
@pytest.mark.parametrize(
    "value",
    ["Sat Mar  1 12:00:30 2025", "Sat, 01 Mar 2025 12:00:30 -0000"],
    ids=["asctime", "minus-zero"],
)
def test_retry_after_date_without_a_zone_is_gmt_not_local_time(value: str) -> None:
    assert time.localtime(NOW).tm_gmtoff == 5 * 3600 + 30 * 60
    assert parse_retry_after(value, now=NOW) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-5",
        "1.5",
        "1e3",
        "+10",
        "١٢٠",  # Arabic-Indic digits: int() accepts them, HTTP does not
        "Sat, 32 Mar 2025 12:00:00 GMT",
        "Mon, 99 Foo 1994 08:49:37 GMT",
        "12 abc",
    ],
)
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


# --- Deadline -----------------------------------------------------------------------------


def test_deadline_on_fake_clock() -> None:
    clock = FakeClock()
    deadline = Deadline(10.0, clock=clock)
    assert deadline.remaining() == 10.0
    assert not deadline.expired()
    clock.now += 4.0
    assert deadline.remaining() == pytest.approx(6.0)
    assert not deadline.expired()
    clock.now += 6.0
    assert deadline.remaining() == 0.0
    assert deadline.expired()
    clock.now += 100.0
    assert deadline.remaining() == 0.0  # never negative
    assert deadline.expired()


def test_zero_and_negative_timeouts_are_already_expired() -> None:
    clock = FakeClock()
    assert Deadline(0.0, clock=clock).expired()
    past = Deadline(-5.0, clock=clock)
    assert past.expired()
    assert past.remaining() == 0.0


def test_infinite_deadline_never_expires() -> None:
    clock = FakeClock()
    deadline = Deadline(math.inf, clock=clock)
    clock.now += 1e12
    assert not deadline.expired()
    assert deadline.remaining() == math.inf


def test_deadline_default_clock_is_monotonic() -> None:
    deadline = Deadline(3600.0)
    assert 3590.0 < deadline.remaining() <= 3600.0
    assert not deadline.expired()


def test_leading_zeros_of_delta_seconds_say_nothing() -> None:
    # Thirteen characters, five seconds: the length shortcut must not read it as huge.
    assert parse_retry_after("0000000000005", now=0.0) == 5.0
    assert parse_retry_after("0" * 40, now=0.0) == 0.0

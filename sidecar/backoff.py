"""Retry timing: exponential backoff with full jitter, Retry-After, and deadlines.

Pure: the random source and the clock are injected, so schedules are reproducible in tests.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = ["MAX_RETRY_AFTER", "Backoff", "Deadline", "parse_retry_after"]

# 2.0 ** 1024 overflows a float; past ~2**60 every realistic cap has long been reached.
_MAX_EXPONENT: Final = 1000
# A server asking for more than this is treated as asking for this: finite, so callers can
# hand it to asyncio timers, and far beyond any deadline they would combine it with.
MAX_RETRY_AFTER: Final = 1e9
_DELTA_SECONDS = re.compile(r"[0-9]+\Z")  # RFC 9110: 1*DIGIT, ASCII digits only


class Backoff:
    """Full jitter (AWS architecture blog): delay(n) is uniform in [0, min(cap, base*2**n)].

    Full jitter spreads out clients that failed together, which matters when many
    workspaces lose the same Coder server at once.
    """

    __slots__ = ("_base", "_cap", "_rng")

    def __init__(self, *, base: float, cap: float, rng: random.Random | None = None) -> None:
        # `not x >= 0` also rejects NaN. Zero is allowed: tests use it to retry at once.
        if not base >= 0:
            raise ValueError(f"base must be >= 0, got {base}")
        if not cap >= 0:
            raise ValueError(f"cap must be >= 0, got {cap}")
        self._base = base
        self._cap = cap
        self._rng = rng if rng is not None else random.Random()

    def ceiling(self, attempt: int) -> float:
        """The upper bound of delay(attempt)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        return min(self._cap, self._base * 2.0 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        return self._rng.uniform(0.0, self.ceiling(attempt))


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait according to a Retry-After header: delta-seconds ("120") or an
    HTTP date. `now` is wall-clock epoch seconds (time.time()), since an HTTP date is wall
    clock time. Never negative (a date in the past means "now"), at most MAX_RETRY_AFTER;
    None when absent or unparseable.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.match(value):
        # Compare as text length first: int() of a huge digit string is slow. Leading
        # zeros say nothing ("0000000000005" is 5 s).
        value = value.lstrip("0") or "0"
        if len(value) > 12:
            return MAX_RETRY_AFTER
        return min(float(int(value)), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (ValueError, TypeError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        # HTTP dates are always GMT; asctime format and "-0000" parse as naive.
        when = when.replace(tzinfo=UTC)
    try:
        seconds = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


class Deadline:
    """A point in time `timeout` seconds after construction, on an injected monotonic
    clock. One Deadline is shared by every stage of a flush, so the stages together
    never exceed the budget."""

    __slots__ = ("_at", "_clock")

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._at = clock() + timeout

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._at - self._clock())

    def expired(self) -> bool:
        return self._clock() >= self._at

"""Supervision of the daemon's long-running parts: a crash is restarted, a crash loop is not.

A part that raises is logged with its traceback and restarted after a pause: one bug in a
rare path must not end the daemon that keeps the conversation. A part that keeps
crashing is a failure to report, not to hide: past `limit` crashes within `window`
seconds the supervisor gives up on it and says so, and the daemon stops (with its final
flush) and exits 1.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

__all__ = ["Supervisor"]

log = structlog.get_logger(__name__)

CRASH_LIMIT: Final = 5
CRASH_WINDOW_S: Final = 60.0
RESTART_PAUSE_S: Final = 1.0


class Supervisor:
    __slots__ = ("_clock", "_gave_up", "_limit", "_on_give_up", "_pause", "_window")

    def __init__(
        self,
        *,
        on_give_up: Callable[[str], object],
        limit: int = CRASH_LIMIT,
        window: float = CRASH_WINDOW_S,
        pause: float = RESTART_PAUSE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._on_give_up = on_give_up
        self._limit = limit
        self._window = window
        self._pause = pause
        self._clock = clock
        self._gave_up: list[str] = []

    @property
    def gave_up(self) -> tuple[str, ...]:
        """The parts it stopped restarting."""
        return tuple(self._gave_up)

    async def supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` until it returns; restart it when it raises, until it crashes in a
        loop."""
        crashes: collections.deque[float] = collections.deque()
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                now = self._clock()
                crashes.append(now)
                while crashes and crashes[0] <= now - self._window:
                    crashes.popleft()
                if len(crashes) >= self._limit:
                    log.exception(
                        "task.crash_loop",
                        task=name,
                        crashes=len(crashes),
                        window_s=self._window,
                        note="not restarted again; the daemon stops",
                    )
                    self._gave_up.append(name)
                    self._on_give_up(name)
                    return
                log.exception("task.crashed", task=name, restart_in_s=self._pause)
            await asyncio.sleep(self._pause)

"""Supervisor: a crash is restarted after a pause, a crash loop is reported and ends.

On the virtual clock (tests.fakes.clock): the pauses and the window are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from sidecar.runtime.supervise import Supervisor
from tests.fakes.clock import on_virtual_clock


def now() -> Callable[[], float]:
    return asyncio.get_running_loop().time


class Part:
    """A part that crashes `crashes` times, then runs until cancelled (or returns)."""

    def __init__(self, crashes: int, *, returns: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.crashes = crashes
        self.returns = returns
        self.starts: list[float] = []

    async def run(self) -> None:
        self.starts.append(self.loop.time())
        if len(self.starts) <= self.crashes:
            raise RuntimeError(f"crash {len(self.starts)}")
        if not self.returns:
            await asyncio.Event().wait()


@on_virtual_clock
async def test_a_crash_is_logged_and_restarted_after_the_pause() -> None:
    gave_up: list[str] = []
    supervisor = Supervisor(on_give_up=gave_up.append, limit=5, window=60.0, pause=2.0, clock=now())
    part = Part(crashes=2)
    with capture_logs() as logs:
        task = asyncio.create_task(supervisor.supervise("uploader", part.run))
        await asyncio.sleep(10.0)
    assert part.starts == [0.0, 2.0, 4.0]
    crashed = [e for e in logs if e["event"] == "task.crashed"]
    assert [(e["task"], e["restart_in_s"], e["exc_info"]) for e in crashed] == [
        ("uploader", 2.0, True),
        ("uploader", 2.0, True),
    ]
    assert gave_up == []
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@on_virtual_clock
async def test_a_crash_loop_is_reported_and_not_restarted() -> None:
    gave_up: list[str] = []
    supervisor = Supervisor(on_give_up=gave_up.append, limit=3, window=60.0, pause=1.0, clock=now())
    part = Part(crashes=100)
    with capture_logs() as logs:
        await supervisor.supervise("relay", part.run)
    # Three crashes within the window: the third is the last start.
    assert part.starts == [0.0, 1.0, 2.0]
    assert gave_up == ["relay"]
    assert supervisor.gave_up == ("relay",)
    (loop,) = [e for e in logs if e["event"] == "task.crash_loop"]
    assert loop["log_level"] == "error"
    assert loop["crashes"] == 3
    assert [e["event"] for e in logs].count("task.crashed") == 2


@on_virtual_clock
async def test_crashes_spread_wider_than_the_window_are_restarted_for_ever() -> None:
    gave_up: list[str] = []
    # Three crashes a window would be a loop; one every 30 s in a 60 s window is two.
    supervisor = Supervisor(
        on_give_up=gave_up.append, limit=3, window=60.0, pause=30.0, clock=now()
    )
    part = Part(crashes=20)
    task = asyncio.create_task(supervisor.supervise("statefile", part.run))
    await asyncio.sleep(30.0 * 20 + 1)
    assert len(part.starts) == 21
    assert gave_up == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@on_virtual_clock
async def test_a_part_that_returns_is_done() -> None:
    supervisor = Supervisor(on_give_up=lambda _name: None, clock=now())
    part = Part(crashes=1, returns=True)
    await supervisor.supervise("token", part.run)
    assert part.starts == [0.0, 1.0]


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        Supervisor(on_give_up=lambda _name: None, limit=0)

"""An asyncio event loop on a virtual clock, for timing behaviour tested without waiting.

`loop.time()` starts at 0 and moves only when the loop has nothing to do: it then jumps
straight to the next timer instead of sleeping. Real I/O (sockets, pipes) is still polled,
without blocking, before every jump. So the times code under test sees are exactly the
ones it asked for, on a fast machine and on a loaded one alike, and a test of a 30 s
interval takes no time. Waiting for I/O with no timer left would wait forever on a real
loop; here it raises RuntimeError at once.

Only for code whose waits are timers and I/O that has already arrived (a datagram sent
on the loop's own thread, say): a thread or another process that has not answered yet
looks like nothing to do, and the clock jumps past it.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["VirtualClockLoop", "on_virtual_clock", "run_on_virtual_clock"]

T = TypeVar("T")
P = ParamSpec("P")


class _JumpingSelector(selectors.BaseSelector):
    """Real readiness first; when nothing is ready, advance the clock by the timeout the
    loop would have slept for."""

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.advance: Callable[[float], None] = lambda _seconds: None

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready:
            return ready
        if timeout is None:
            raise RuntimeError("virtual clock: nothing scheduled and nothing ready (deadlock)")
        if timeout > 0:
            self.advance(timeout)
        return []

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        self._now = 0.0
        selector.advance = self._advance

    def _advance(self, seconds: float) -> None:
        self._now += seconds

    def time(self) -> float:
        return self._now


def run_on_virtual_clock(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main), on a fresh VirtualClockLoop."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main)


def on_virtual_clock(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Runs an async test on a fresh VirtualClockLoop instead of pytest's loop. Waits
    that the code under test asks for take no time, and "nothing happened in N seconds"
    is exact: `await asyncio.sleep(N)` and look."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        run_on_virtual_clock(test(*args, **kwargs))

    return run

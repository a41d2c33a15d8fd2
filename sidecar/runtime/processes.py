"""Processes that are not our children: is it alive, signal it, wait for it to exit.

The standard library only (the `stop` hook imports it before anything heavy).
"""

from __future__ import annotations

import os
import select
import signal
import time
from typing import Final

__all__ = ["alive", "send", "wait_gone"]

_POLL_S: Final = 0.005


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def send(pid: int, sig: signal.Signals) -> str | None:
    """Send `sig` to `pid`; None when it was sent, else why not ("gone" when there is no
    such process)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return "gone"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` (not our child) has exited; False after `timeout` seconds. A
    signal that arrives meanwhile does not end the wait (the poll is resumed)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):
        fd = None  # an old kernel: ask every few milliseconds instead
    deadline = time.monotonic() + timeout
    if fd is not None:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(max(0, int(timeout * 1000))))
        finally:
            os.close(fd)
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True

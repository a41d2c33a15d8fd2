"""The signals that ask the sidecar to stop, and their handlers on the event loop.

SIGTERM: systemd, a container runtime or `timeout(1)`. SIGINT: Ctrl-C. SIGHUP: Coder's
agent cancels a `coder_script` that is still running (agent shutdown, script timeout) by
sending it to the script's whole process group, so a daemon started from one gets it when
the workspace stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Final

__all__ = ["STOP_SIGNALS", "stop_signals"]

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def stop_signals(handler: Callable[[str], object]) -> Iterator[None]:
    """Call `handler(signal name)` from the event loop for every stop signal while the
    block runs; the previous dispositions are back afterwards."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, handler, sig.name)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

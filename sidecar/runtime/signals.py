"""The signals the sidecar acts on, and the stray ones it must survive.

SIGTERM: systemd, a container runtime or `timeout(1)`. SIGINT: Ctrl-C. SIGHUP: Coder's
agent cancels a `coder_script` that is still running (agent shutdown, script timeout) by
sending it to the script's whole process group, so a daemon started from one gets it when
the workspace stops.

SIGUSR1 asks the daemon to post the newest snapshot now, as it asks agentapi to save its
state (a `kill -USR1` aimed at agentapi from a stale pid file, or a logrotate-style
script, may well reach the sidecar). Python's default for it, and for the others in
`STRAY_SIGNALS`, is to terminate the process without a word, and without the final
flush: here they are harmless.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Final

__all__ = [
    "FLUSH_SIGNAL",
    "STOP_SIGNALS",
    "STRAY_SIGNALS",
    "daemon_signals",
    "ignore_stray",
    "stop_signals",
]

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FLUSH_SIGNAL: Final = signal.SIGUSR1
# Signals whose default action ends a process that nothing asked to end.
STRAY_SIGNALS: Final = tuple(
    getattr(signal, name)
    for name in ("SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGPOLL", "SIGPWR")
    if hasattr(signal, name)
)


def ignore_stray() -> None:
    """Every command: a stray signal (SIGUSR1 included, until a handler gives it a
    meaning) does nothing."""
    for sig in (FLUSH_SIGNAL, *STRAY_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals(handler: Callable[[str], object]) -> Iterator[None]:
    """Call `handler(signal name)` from the event loop for every stop signal while the
    block runs; the previous dispositions are back afterwards."""
    with _on_loop(STOP_SIGNALS, handler):
        yield


@contextlib.contextmanager
def daemon_signals(
    *,
    stop: Callable[[str], object],
    flush_now: Callable[[str], object],
    stray: Callable[[str], object],
) -> Iterator[None]:
    """The daemon's handlers, on its event loop: stop, post the snapshot now, and a word
    about a stray signal."""
    with (
        _on_loop(STOP_SIGNALS, stop),
        _on_loop((FLUSH_SIGNAL,), flush_now),
        _on_loop(STRAY_SIGNALS, stray),
    ):
        yield


@contextlib.contextmanager
def _on_loop(
    signals: tuple[signal.Signals, ...], handler: Callable[[str], object]
) -> Iterator[None]:
    import asyncio  # here: `stop` imports this module for ignore_stray only

    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, handler, sig.name)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
            # remove_signal_handler leaves the default action: put back what was there
            # (SIG_IGN for a stray signal), except Ctrl-C's, which stays Python's own.
            if sig is not signal.SIGINT and previous[sig] is not None:
                signal.signal(sig, previous[sig])

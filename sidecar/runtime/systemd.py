"""sd_notify(3) written by hand: one datagram per call to the service manager's socket.

libsystemd is not a dependency (and its Python bindings need a compiler), and the
protocol is tiny: newline-separated ``KEY=value`` assignments sent as a single
AF_UNIX datagram to ``$NOTIFY_SOCKET``. The values arrive through the constructor
(Settings is the only reader of the environment).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket

import structlog

__all__ = ["Notifier"]

log = structlog.get_logger(__name__)


def _socket_address(path: str | None) -> bytes | None:
    """The sockaddr for ``path``, or None when it is unset or a form we cannot speak."""
    if not path:
        return None
    if path.startswith("@"):
        # Linux abstract namespace: sd_notify spells it "@name", the kernel wants "\0name".
        return b"\0" + os.fsencode(path[1:])
    if path.startswith("/"):
        return os.fsencode(path)
    # Newer managers also accept e.g. "vsock:…"; no unit of ours runs that way.
    return None


def _clean_value(value: str) -> str:
    # A newline inside a value would start a new assignment (STATUS text can come from
    # an agent's error message), so it is flattened rather than trusted.
    return value.replace("\r", " ").replace("\n", " ")


class Notifier:
    """Tells systemd about readiness, status, shutdown and liveness.

    Every method is a no-op returning False when the service was not started by a
    notify-aware manager. Send failures never raise: the daemon's job is the
    conversation, not systemd, so a failure is logged once per failure streak.
    """

    __slots__ = ("_address", "_failing", "_path", "_watchdog_usec")

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self._path = socket_path
        self._address = _socket_address(socket_path)
        self._watchdog_usec = watchdog_usec
        self._failing = False
        if socket_path and self._address is None:
            log.warning("systemd.notify_socket_unsupported", socket=socket_path)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str) -> bool:
        """Send the fields as one datagram; True if the kernel accepted it.

        Raises ValueError only for a malformed field name (a programming error).
        """
        if not fields:
            raise ValueError("notify() needs at least one field")
        for key in fields:
            if not key or "=" in key or "\n" in key:
                raise ValueError(f"invalid sd_notify field name: {key!r}")
        if self._address is None:
            return False
        payload = "".join(f"{key}={_clean_value(value)}\n" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Non-blocking: this runs on the event loop, and a manager that is not
                # draining its queue must cost us a failed ping, not a stalled loop.
                sock.setblocking(False)
                sock.sendto(payload.encode("utf-8"), self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "systemd.notify_failed",
                    socket=self._path,
                    fields=sorted(fields),
                    error=f"{type(exc).__name__}: {exc}",
                )
            return False
        if self._failing:
            self._failing = False
            log.info("systemd.notify_recovered", socket=self._path)
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY="1", STATUS=status)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self, status: str) -> bool:
        return self.notify(STOPPING="1", STATUS=status)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start/stop timeout fires (EXTEND_TIMEOUT_USEC)."""
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"extend_timeout needs a positive number of seconds, got {seconds!r}")
        return self.notify(EXTEND_TIMEOUT_USEC=str(math.ceil(seconds * 1_000_000)))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG="1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises."""
        if self._address is None or self._watchdog_usec is None or self._watchdog_usec <= 0:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    async def watchdog_loop(self, stop: asyncio.Event) -> None:
        """Ping the watchdog until ``stop`` is set; returns at once if there is no watchdog.

        The pings come from the event loop itself, so a loop that is blocked (or a task
        hogging it) stops them and systemd restarts the service — which is the point.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while not stop.is_set():
            self.watchdog()
            # A fixed grid keeps the cadence from drifting; after a stall longer than the
            # interval the grid restarts from now instead of bursting to catch up.
            now = loop.time()
            deadline += interval
            if deadline <= now:
                deadline = now + interval
            try:
                await asyncio.wait_for(stop.wait(), timeout=deadline - loop.time())
            except TimeoutError:
                continue

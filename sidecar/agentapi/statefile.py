"""Reads agentapi's --state-file, the conversation's last word when agentapi is down,
whenever agentapi rewrites it."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from sidecar.models import Conversation, Invalid, StateFileRead, parse_state_file
from sidecar.runtime.metrics import InvalidCounter
from sidecar.runtime.watch import watch_file

log = structlog.get_logger(__name__)

# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
# agentapi writes the whole conversation there; the mirror needs its newest messages, and
# no more of each than a snapshot can carry. A file larger than this is not read (the
# stream and /messages remain): reading it whole could cost the workspace gigabytes.
STATE_FILE_MAX_BYTES: Final = 32 * 1024 * 1024


class StateFileSource:
    __slots__ = (
        "_force_polling",
        "_invalid",
        "_last_stamp",
        "_not_regular_logged",
        "_on_read",
        "_path",
        "_stop",
    )

    def __init__(
        self,
        *,
        path: Path,
        on_read: Callable[[StateFileRead], None],
        invalid: InvalidCounter,
        force_polling: bool | None = None,
    ) -> None:
        self._path = path
        self._on_read = on_read
        self._invalid = invalid
        # None lets watchfiles honour WATCHFILES_FORCE_POLLING itself.
        self._force_polling = force_polling
        self._last_stamp: tuple[int, int] | None = None
        self._not_regular_logged = False
        self._stop = asyncio.Event()

    def read(self) -> StateFileRead | None:
        """Read and validate the file now; None (and a log line) when it is unusable.
        Blocking: the daemon calls it from a worker thread."""
        loaded = self._load(only_if_changed=False)
        if loaded is None:
            return None
        read, invalid = loaded
        for item in invalid:
            self._invalid(item, origin="statefile")
        return read

    def readable(self) -> bool:
        try:
            return stat.S_ISREG(self._path.stat().st_mode) and os.access(self._path, os.R_OK)
        except OSError:
            return False

    def _load(self, *, only_if_changed: bool) -> tuple[StateFileRead, list[Invalid]] | None:
        # One open, then fstat of that handle: agentapi replaces the file by rename, and a
        # stat by path could pair the old mtime with the new content.
        try:
            fd = os.open(self._path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("statefile.unreadable", path=str(self._path), error=exc.strerror)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._log_not_regular()
                return None
            self._not_regular_logged = False
            stamp = (st.st_ino, st.st_mtime_ns)
            if only_if_changed and stamp == self._last_stamp:
                return None
            if st.st_size > STATE_FILE_MAX_BYTES:
                self._log_too_large(st.st_size)
                return None
            with os.fdopen(os.dup(fd), "rb") as handle:
                body = handle.read(STATE_FILE_MAX_BYTES + 1)
            if len(body) > STATE_FILE_MAX_BYTES:
                self._log_too_large(len(body))
                return None
        except OSError as exc:
            log.warning("statefile.unreadable", path=str(self._path), error=exc.strerror)
            return None
        finally:
            os.close(fd)
        parsed = parse_state_file(body)
        if isinstance(parsed, Invalid):
            log.warning(
                "statefile.ignored",
                path=str(self._path),
                reason=parsed.reason,
                detail=parsed.detail,
            )
            return None
        self._last_stamp = stamp
        messages, invalid = parsed
        age = max(0.0, time.time() - st.st_mtime)
        return StateFileRead(Conversation(tuple(messages), None), age), invalid

    def _log_too_large(self, size: int) -> None:
        log.warning(
            "statefile.too_large",
            path=str(self._path),
            bytes=size,
            limit=STATE_FILE_MAX_BYTES,
            note="not read; the conversation still comes from the stream and /messages",
        )

    def _log_not_regular(self) -> None:
        # A FIFO or a device would block a reader or never end: it is never read.
        if not self._not_regular_logged:
            self._not_regular_logged = True
            log.error(
                "statefile.not_regular",
                path=str(self._path),
                hint="AGENTAPI_STATE_FILE must name agentapi's --state-file, a regular file",
            )

    async def _deliver(self) -> None:
        loaded = await asyncio.to_thread(self._load, only_if_changed=True)
        if loaded is None:
            return
        read, invalid = loaded
        for item in invalid:
            self._invalid(item, origin="statefile")
        log.info("statefile.read", path=str(self._path), messages=len(read.conversation.messages))
        self._on_read(read)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await watch_file(self._path, self._deliver, self._stop, force_polling=self._force_polling)

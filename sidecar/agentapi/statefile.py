"""Reads agentapi's --state-file, the conversation's last word when agentapi is down,
whenever agentapi rewrites it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from sidecar.agentapi.source import InvalidCounter
from sidecar.models import Conversation, Invalid, parse_state_file
from sidecar.runtime.watch import watch_file

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StateFileRead:
    conversation: Conversation
    mtime: float


class StateFileSource:
    __slots__ = ("_force_polling", "_invalid", "_last_stamp", "_on_read", "_path", "_stop")

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
        self._stop = asyncio.Event()

    def read(self) -> StateFileRead | None:
        """Read and validate the file now; None (and a log line) when it is unusable."""
        try:
            st = self._path.stat()
            body = self._path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("statefile.unreadable", path=str(self._path), error=exc.strerror)
            return None
        parsed = parse_state_file(body)
        if isinstance(parsed, Invalid):
            log.warning(
                "statefile.ignored",
                path=str(self._path),
                reason=parsed.reason,
                detail=parsed.detail,
            )
            return None
        messages, invalid = parsed
        for item in invalid:
            self._invalid(item, origin="statefile")
        self._last_stamp = (st.st_ino, st.st_mtime_ns)
        return StateFileRead(Conversation(tuple(messages), None, "statefile"), st.st_mtime)

    def readable(self) -> bool:
        return os.access(self._path, os.R_OK) and self._path.is_file()

    def _changed(self) -> bool:
        try:
            st = self._path.stat()
        except OSError:
            return False
        return (st.st_ino, st.st_mtime_ns) != self._last_stamp

    def _deliver(self) -> None:
        if not self._changed():
            return
        result = self.read()
        if result is not None:
            log.info(
                "statefile.read",
                path=str(self._path),
                messages=len(result.conversation.messages),
            )
            self._on_read(result)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await watch_file(self._path, self._deliver, self._stop, force_polling=self._force_polling)

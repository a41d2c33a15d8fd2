"""An on-disk slot for the one snapshot body that could not be delivered.

One file per task (`<task>.json`), replaced atomically: a crash at any point leaves either
the old body or the new one, never a torn file. A file that does not parse is moved aside
rather than deleted, so a person can still look at it.

The spool knows what its file holds, so the uploader only says what it wants kept
(`keep`), what the server now holds (`delivered`) and what has nowhere to go (`drop`); the
rule that no older words may outlive newer ones on disk is kept here.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, NamedTuple
from uuid import UUID

import structlog

from sidecar.models import Invalid, Message, validate_message

log = structlog.get_logger(__name__)

_TEMP_PREFIX: Final = ".spool-"
_TEMP_SUFFIX: Final = ".tmp"


class Spooled(NamedTuple):
    body: bytes
    messages: tuple[Message, ...]
    written_at: float  # the file's mtime: the conversation was current then


class Spool:
    __slots__ = ("_dir", "_holds", "_on_write", "_path")

    def __init__(
        self, directory: Path, task_id: UUID, *, on_write: Callable[[], object] = lambda: None
    ) -> None:
        self._dir = directory
        self._path = directory / f"{task_id}.json"
        self._on_write = on_write  # counts writes (sidecar_spool_writes_total)
        self._holds: bytes | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def holds(self) -> bytes | None:
        """The body the file holds, as far as this process knows (loaded or written)."""
        return self._holds

    def keep(self, body: bytes) -> bool:
        """Have the file hold `body`; True when it does. When it cannot, an older body is
        removed: left there, the next start would deliver it over newer words."""
        if body == self._holds:
            return True
        if self.save(body):
            self._holds = body
            self._on_write()
            return True
        if self._holds is not None:
            self._holds = None
            self.clear(reason="older than the conversation that could not be kept")
        return False

    def delivered(self, body: bytes) -> None:
        """The server holds `body`: the file is not needed. One that cannot be removed is
        overwritten with `body`, so that no later start delivers older words over it."""
        if self._holds is None:
            return
        self._holds = None
        if not self.clear():
            self.keep(body)

    def drop(self, reason: str) -> None:
        """The body has nowhere to go (a server without a Tasks API)."""
        if self._holds is not None:
            self._holds = None
            self.clear(reason=reason)

    def load(self) -> Spooled | None:
        """The spooled body, or None. Never raises for a bad file: it is set aside."""
        try:
            with self._path.open("rb") as handle:
                written_at = os.fstat(handle.fileno()).st_mtime
                body = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("spool.unreadable", path=str(self._path), error=exc.strerror)
            return None
        parsed = _parse(body)
        if not isinstance(parsed, str):
            self._holds = body
            return Spooled(body, parsed, written_at)
        problem = parsed
        aside = self._path.with_name(f"{self._path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self._path, aside)
        except OSError as exc:
            log.warning("spool.corrupt", path=str(self._path), problem=problem, error=exc.strerror)
        else:
            log.warning("spool.corrupt", path=str(self._path), problem=problem, moved_to=str(aside))
        return None

    def save(self, body: bytes) -> bool:
        """Write atomically: temp file, fsync, rename, fsync the directory."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(body)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self._path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(self._dir)
        except OSError as exc:
            log.error("spool.write_failed", path=str(self._path), error=exc.strerror)
            return False
        log.info("spool.written", path=str(self._path), bytes=len(body))
        return True

    def writable_problem(self) -> str | None:
        return writable_problem(self._dir)

    def remove_stale_temps(self, older_than: float = 60.0) -> None:
        """Remove temp files a write left behind when its process was killed mid-way
        (younger ones may belong to a write in progress)."""
        now = time.time()
        with contextlib.suppress(OSError):
            for tmp in self._dir.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    if now - tmp.lstat().st_mtime > older_than:
                        tmp.unlink()
                        log.info("spool.temp_removed", path=str(tmp))

    def clear(self, *, reason: str | None = None) -> bool:
        """Remove the file: its body was delivered, or (with `reason`) it is dropped.
        False when a file is still there."""
        try:
            self._path.unlink()
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("spool.clear_failed", path=str(self._path), error=exc.strerror)
            return False
        _fsync_dir(self._dir)
        if reason is None:
            log.info("spool.cleared", path=str(self._path))
        else:
            log.warning("spool.dropped", path=str(self._path), reason=reason)
        return True


def writable_problem(directory: Path) -> str | None:
    """Why no body could be kept in `directory` (None when one could), found by creating
    and removing a file there."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _parse(body: bytes) -> tuple[Message, ...] | str:
    """The body's messages, or what is wrong with it."""
    try:
        obj = json.loads(body)
    except ValueError:
        return "not JSON"
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        return "not a snapshot body"
    if not obj["messages"]:
        return "empty conversation"
    messages = []
    for item in obj["messages"]:
        # A message Coder cannot read back would poison the task's logs: never post it.
        checked = validate_message(item, "content")
        if isinstance(checked, Invalid):
            return f"invalid message ({checked.reason})"
        messages.append(checked)
    return tuple(messages)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

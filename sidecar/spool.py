"""What the state directory keeps of a task's conversation: two slots of one body each.

* `<task>.json`, the spool: the newest body that could not be delivered, delivered on the
  next start unless something newer is accepted first.
* `<task>.accepted.json`, the record of the body Coder accepted last: what the server
  holds, so that a later start (with agentapi's conversation begun again, or the same one
  replayed) neither posts less over it nor posts it again, and can continue it.

Each file is replaced atomically (sidecar.statedir): a crash leaves the old body or the
new one. A file that does not parse is moved aside rather than deleted, so a person can
still look at it; one that is not ours (a symlink, a FIFO, another user's, too large) is
refused and never read.

The spool knows what its files hold, so the uploader only says what it wants kept
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

from sidecar import statedir
from sidecar.models import Invalid, Message, validate_message

log = structlog.get_logger(__name__)

_TEMP_PREFIX: Final = ".spool-"
_TEMP_SUFFIX: Final = ".tmp"


class Spooled(NamedTuple):
    body: bytes
    messages: tuple[Message, ...]


class Kept(NamedTuple):
    """What a start finds of the task's conversation in the state directory."""

    pending: Spooled | None  # undelivered: delivered unless something newer is first
    accepted: Spooled | None  # what Coder holds

    @property
    def held(self) -> Spooled | None:
        """The newest body built before this start (the snapshot to continue)."""
        return self.pending or self.accepted


NOTHING_KEPT: Final = Kept(None, None)


class Spool:
    __slots__ = ("_accepted", "_dir", "_holds", "_on_write", "_path", "_recorded")

    def __init__(
        self, directory: Path, task_id: UUID, *, on_write: Callable[[], object] = lambda: None
    ) -> None:
        self._dir = directory
        self._path = directory / f"{task_id}.json"
        self._accepted = directory / f"{task_id}.accepted.json"
        self._on_write = on_write  # counts writes of the spool (sidecar_spool_writes_total)
        self._holds: bytes | None = None
        self._recorded: bytes | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def accepted_path(self) -> Path:
        return self._accepted

    @property
    def holds(self) -> bytes | None:
        """The body the spool holds, as far as this process knows (loaded or written)."""
        return self._holds

    # --- start ----------------------------------------------------------------------------

    def recover(self) -> Kept:
        """The spool and the record at a start. A spooled body that Coder holds already
        (its removal failed once the server took it) is not pending."""
        accepted = self.load_accepted()
        pending = self.load()
        if pending is not None and accepted is not None and pending.body == accepted.body:
            self.delivered(pending.body)
            pending = None
        return Kept(pending, accepted)

    def load(self) -> Spooled | None:
        """The spooled body, or None. Never raises for a bad file: it is set aside."""
        loaded = self._read(self._path, "spool")
        if loaded is not None:
            self._holds = loaded.body
        return loaded

    def load_accepted(self) -> Spooled | None:
        """The body Coder accepted last, as recorded; None when there is no record."""
        loaded = self._read(self._accepted, "accepted record")
        if loaded is not None:
            self._recorded = loaded.body
        return loaded

    def _read(self, path: Path, what: str) -> Spooled | None:
        try:
            body = statedir.read_owned(path)
        except statedir.Unsafe as exc:
            log.error("spool.refused", path=str(path), what=what, problem=str(exc))
            return None
        except OSError as exc:
            log.warning("spool.unreadable", path=str(path), error=exc.strerror)
            return None
        if body is None:
            return None
        parsed = _parse(body)
        if not isinstance(parsed, str):
            return Spooled(body, parsed)
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(path, aside)
        except OSError as exc:
            log.warning("spool.corrupt", path=str(path), problem=parsed, error=exc.strerror)
        else:
            log.warning("spool.corrupt", path=str(path), problem=parsed, moved_to=str(aside))
        return None

    # --- while running --------------------------------------------------------------------

    def keep(self, body: bytes) -> bool:
        """Have the spool hold `body`; True when it does. When it cannot, an older body is
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
        """The server holds `body`: it is recorded, and the spool is not needed. A spool
        that cannot be removed is overwritten with `body`, so that no later start delivers
        older words over it."""
        if body != self._recorded and self._write(self._accepted, body, "accepted record"):
            self._recorded = body
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

    def save(self, body: bytes) -> bool:
        """Write the spool atomically; True when it holds `body`."""
        if not self._write(self._path, body, "spool"):
            return False
        log.info("spool.written", path=str(self._path), bytes=len(body))
        return True

    def _write(self, path: Path, body: bytes, what: str) -> bool:
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            statedir.write(path, body, temp_prefix=_TEMP_PREFIX)
        except statedir.Unsafe as exc:
            log.error("spool.refused", path=str(path), what=what, problem=str(exc))
            return False
        except OSError as exc:
            log.error("spool.write_failed", path=str(path), what=what, error=exc.strerror)
            return False
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
        """Remove the spool: its body was delivered, or (with `reason`) it is dropped.
        False when a file is still there."""
        try:
            self._path.unlink()
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("spool.clear_failed", path=str(self._path), error=exc.strerror)
            return False
        statedir.fsync_directory(self._dir)
        if reason is None:
            log.info("spool.cleared", path=str(self._path))
        else:
            log.warning("spool.dropped", path=str(self._path), reason=reason)
        return True


def writable_problem(directory: Path) -> str | None:
    """Why no body could be kept in `directory` (None when one could): a directory that
    is not the sidecar's to use, or one where no file can be created."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        statedir.check_directory(directory)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
        os.close(fd)
        os.unlink(tmp)
    except statedir.Unsafe as exc:
        return str(exc)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _parse(body: bytes) -> tuple[Message, ...] | str:
    """The body's messages, or what is wrong with it."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
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


def state_dir_refused(directory: Path) -> bool:
    """A state directory of another user's, or one others may write to, is not used at
    all: what is read there would be posted as the task's log, and its lock names a pid
    that `stop` signals. Creates the directory when it is missing."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        statedir.check_directory(directory)
    except statedir.Unsafe as exc:
        log_unsafe(directory, exc)
        return True
    except OSError:
        return False  # unusable rather than unsafe: the lock and the spool say so
    return False


_UNSAFE_DIR: Final = (
    "SIDECAR_STATE_DIR must be a directory of this user that no other user can write to; "
    "until it is, nothing is kept there, read from it, or locked in it"
)


def log_unsafe(path: Path, exc: statedir.Unsafe, hint: str = _UNSAFE_DIR) -> None:
    log.error("state_dir.unsafe", path=str(path), problem=str(exc), hint=hint)


def open_spool(
    directory: Path, task_id: UUID, *, on_write: Callable[[], object] = lambda: None
) -> tuple[Spool | None, Kept]:
    """The task's spool and what a start finds in it; no spool in a refused directory."""
    if state_dir_refused(directory):
        return None, NOTHING_KEPT
    spool = Spool(directory, task_id, on_write=on_write)
    problem = spool.writable_problem()
    if problem is not None:
        log.error(
            "spool.unwritable",
            path=str(directory),
            error=problem,
            hint="set SIDECAR_STATE_DIR to a writable directory: a snapshot that cannot be "
            "delivered at stop would be lost",
        )
    spool.remove_stale_temps()
    kept = spool.recover()
    if kept.pending is not None:
        log.info("spool.recovered", path=str(spool.path), bytes=len(kept.pending.body))
    return spool, kept

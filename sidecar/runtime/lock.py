"""One daemon per state directory: an flock on `daemon.lock` that also names its holder.

The file holds a line of JSON: `{"pid": N}` while the daemon runs, and what became of its
final snapshot once it stops (`{"pid": N, "snapshot": "delivered", "exit": 0}`), which is
how `coder-task-sidecar stop` learns the outcome of a process that is not its child.

Light on purpose: `stop` reads it before (and often without) importing anything heavy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Final

from sidecar import statedir

__all__ = ["LOCK_NAME", "DaemonLock", "LockHeld", "read_record", "running_daemon"]

LOCK_NAME: Final = "daemon.lock"
_PID_READS: Final = 50
_PID_READ_GAP_S: Final = 0.01


class LockHeld(Exception):
    """Another daemon holds the lock; `pid` is its process id (None if not yet written)."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"held by pid {pid}" if pid else "held by another process")
        self.pid = pid


def read_record(directory: Path) -> dict[str, Any]:
    """What the lock file says (empty when it is missing, unreadable or not ours)."""
    try:
        obj = json.loads(statedir.read_owned(directory / LOCK_NAME) or b"")
    except (OSError, ValueError, RecursionError, statedir.Unsafe):
        return {}
    return obj if isinstance(obj, dict) else {}


def _pid_of(record: dict[str, Any]) -> int | None:
    pid = record.get("pid")
    return pid if type(pid) is int and pid > 0 else None


def running_daemon(directory: Path) -> int | None:
    """The pid of the daemon that holds the lock in `directory`, or None when none does.
    Takes the lock only for an instant to find out (a shared lock, so it never blocks)."""
    try:
        fd = statedir.open_owned(directory / LOCK_NAME, os.O_RDONLY)
    except (OSError, statedir.Unsafe):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        held = True
    else:
        held = False
    finally:
        os.close(fd)
    if not held:
        return None
    # The holder writes its pid right after taking the lock: give it a moment.
    for _ in range(_PID_READS):
        pid = _pid_of(read_record(directory))
        if pid is not None:
            return pid
        time.sleep(_PID_READ_GAP_S)
    return None


class DaemonLock:
    """Held for the daemon's lifetime; released when the process ends, however it ends."""

    __slots__ = ("_fd", "_path")

    def __init__(self, directory: Path) -> None:
        self._path = directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self._path

    def acquire(self) -> None:
        """Take the lock and write our pid. Raises LockHeld when another process has it,
        statedir.Unsafe when the directory or the file is not ours (a symlink planted
        there must never be written through), OSError when the directory cannot hold the
        file."""
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        statedir.check_directory(self._path.parent)
        fd = statedir.open_owned(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(_pid_of(read_record(self._path.parent))) from None
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._write({"pid": os.getpid()})

    def record(self, **outcome: Any) -> None:
        """Write how the daemon ended, for whoever asked it to stop."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self._write({"pid": os.getpid(), **outcome})

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock

    def _write(self, record: dict[str, Any]) -> None:
        assert self._fd is not None
        data = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

"""Files in the state directory, opened as OpenSSH and systemd open theirs.

`SIDECAR_STATE_DIR` may name a shared path. What the sidecar reads there it posts to Coder
as the task's log (the spool) or acts on (the lock names a pid that `stop` signals), so a
directory that another user owns or that others may write to is refused, and so is a file
in it that is not a regular file of ours: a symlink is never followed (`O_NOFOLLOW`), and
what was opened is checked (`fstat`: regular, owned by us, not larger than a snapshot can
be). A FIFO or a device is refused without blocking. A write goes to a temporary file that
is renamed over the target; where the directory no longer allows that (turned read-only),
an existing file of ours is rewritten in place, so that no stale body outlives a newer one.

The standard library only: `stop` uses it before it knows whether it needs anything else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Final

__all__ = ["MAX_FILE_BYTES", "Unsafe", "check_directory", "open_owned", "read_owned", "write"]

# A snapshot body is at most 64 KiB; the lock's record a line. Anything larger is not ours.
MAX_FILE_BYTES: Final = 65_536 + 1024
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_TEMP_SUFFIX: Final = ".tmp"


class Unsafe(Exception):
    """A path the sidecar will not use; the message says why and what to do."""


def _owner_problem(st: os.stat_result, what: str) -> str | None:
    if st.st_uid != os.geteuid():
        return f"{what} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & stat.S_IWOTH:
        return f"{what} is writable by every user (chmod o-w)"
    return None


def check_directory(directory: Path) -> None:
    """Raises Unsafe when `directory` may not hold the sidecar's files, OSError when it
    cannot be looked at (FileNotFoundError: it does not exist yet)."""
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise Unsafe(f"{directory} is not a directory")
    problem = _owner_problem(st, str(directory))
    if problem is not None:
        raise Unsafe(problem)


def open_owned(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open `path` without following a symlink and without blocking on a FIFO; the file
    must be a regular file of ours. Raises Unsafe, or OSError (FileNotFoundError when it
    does not exist and `flags` does not create it)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unsafe(f"{path} is a symbolic link, which is never followed") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe(f"{path} is not a regular file")
        problem = _owner_problem(st, str(path))
        if problem is not None:
            raise Unsafe(problem)
        # Non-blocking was only for the open: reads and writes of a regular file wait.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_owned(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The file's bytes; None when it does not exist. Raises Unsafe (also for a file
    larger than `limit`: nothing of the sidecar's is), or OSError."""
    try:
        fd = open_owned(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(handle.fileno()).st_size > limit:
            raise Unsafe(f"{path} is larger than {limit} bytes: not a file of the sidecar's")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise Unsafe(f"{path} is larger than {limit} bytes: not a file of the sidecar's")
    return data


def write(path: Path, data: bytes, *, temp_prefix: str) -> None:
    """Replace `path` with `data`: a temporary file, fsync, rename, fsync the directory,
    so that a crash leaves the old bytes or the new ones. Where the directory refuses new
    files, an existing file of ours is rewritten in place. Raises OSError or Unsafe."""
    import tempfile  # here: the `stop` hook reads, and never writes, this way

    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix, suffix=_TEMP_SUFFIX)
    except PermissionError:
        _rewrite_in_place(path, data)
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def _rewrite_in_place(path: Path, data: bytes) -> None:
    fd = open_owned(path, os.O_WRONLY)  # FileNotFoundError: nothing to rewrite
    with os.fdopen(fd, "wb") as handle:
        handle.truncate(0)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | _CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

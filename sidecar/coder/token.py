"""The agent token: from CODER_AGENT_TOKEN, or from a file that is re-read when it changes.

The token never reaches a log: every value this source hands out is registered with the
log redactor first.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path
from typing import Final

import structlog

from sidecar.log import register_secret

log = structlog.get_logger(__name__)


class TokenError(Exception):
    """The token file cannot be used; the message names the problem, never the token."""


# Coder's tokens are visible ASCII; anything else cannot go into an HTTP header as is.
_TOKEN = re.compile(r"[\x21-\x7e]+")
# Far above any real token: a file this large is not one (or is /dev/zero).
_MAX_TOKEN_FILE_BYTES: Final = 4096
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def check_token(raw: str) -> str | None:
    """The token with surrounding whitespace trimmed; None when nothing is left. Raises
    ValueError (never quoting the token) when what is left cannot be one."""
    token = raw.strip()
    if not token:
        return None
    if not _TOKEN.fullmatch(token):
        raise ValueError(
            "holds a space, control or non-ASCII character after trimming (two lines, or a "
            "byte-order mark?)"
        )
    return token


def read_token_file(path: Path) -> str:
    # Non-blocking open and a regular-file check: a FIFO or a device would hang or never
    # end the read.
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise TokenError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TokenError(f"{path} is not a regular file")
        data = os.read(fd, _MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_TOKEN_FILE_BYTES:
        raise TokenError(f"{path} is larger than {_MAX_TOKEN_FILE_BYTES} bytes: not a token")
    try:
        token = check_token(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise TokenError(f"{path} is not UTF-8 text") from None
    except ValueError as exc:
        raise TokenError(f"{path} {exc}") from None
    if token is None:
        raise TokenError(f"{path} is empty")
    return token


class TokenSource:
    __slots__ = ("_lock", "_path", "_stamp", "_value")

    def __init__(self, *, value: str | None = None, path: Path | None = None) -> None:
        if (value is None) == (path is None):
            raise ValueError("exactly one of value and path")
        self._lock = threading.Lock()
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        if path is not None:
            self._value = read_token_file(path)
            self._stamp = self._stat()
            self._warn_if_exposed()
        else:
            assert value is not None
            self._value = value
        register_secret(self._value)

    @property
    def path(self) -> Path | None:
        return self._path

    def value(self) -> str:
        return self._value

    def _stat(self) -> tuple[int, int, int] | None:
        assert self._path is not None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _warn_if_exposed(self) -> None:
        assert self._path is not None
        try:
            mode = self._path.stat().st_mode
        except OSError:
            return
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            log.warning(
                "token.file_exposed",
                path=str(self._path),
                mode=oct(stat.S_IMODE(mode)),
                hint="chmod o-rw the token file",
            )

    def reload(self, *, force: bool = False) -> bool:
        """Re-read the file when it changed (or always, with force); True if the token
        changed. A file that became unreadable or empty keeps the old token."""
        if self._path is None:
            return False
        with self._lock:
            stamp = self._stat()
            if not force and stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                token = read_token_file(self._path)
            except TokenError as exc:
                log.warning("token.reload_failed", error=str(exc))
                return False
            if token == self._value:
                return False
            register_secret(token)
            self._value = token
            self._warn_if_exposed()
        log.info("token.reloaded", path=str(self._path))
        return True

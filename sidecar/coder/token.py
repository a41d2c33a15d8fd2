"""The agent token: from CODER_AGENT_TOKEN, or from a file that is re-read when it changes.

The token never reaches a log: every value this source hands out is registered with the
log redactor first.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import structlog

from sidecar.log import register_secret

log = structlog.get_logger(__name__)


class TokenError(Exception):
    """The token file cannot be used; the message names the problem, never the token."""


def read_token_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    token = text.strip()
    if not token:
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

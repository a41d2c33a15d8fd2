"""`stop`: the template's `run_on_stop` hook, in three steps, each bounded in time.

1. agentapi saves its state file: SIGUSR1 (agentapi writes that file only then and at a
   graceful exit), then wait until the file has been rewritten.
2. The daemon that holds the newest conversation flushes it: SIGTERM, then wait for it
   to exit and read what became of its final snapshot from its lock file. Without a
   daemon, read agentapi, else the state file, else the spool, and post as `snapshot`.
3. agentapi is stopped: SIGTERM, then wait for it to exit.

With a daemon running, nothing beyond the standard library is imported (not even
structlog, whose import costs as much as the rest of the hook): it runs inside the
workspace's stop grace period. Its lines have the daemon's shape (JSON when the output is
not a terminal), so one reader serves both.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

from sidecar.config import StopConfig, load_stop_config
from sidecar.runtime.lock import read_record, running_daemon
from sidecar.slot import FlushOutcome
from sidecar.variables import LogFormat, LogLevel

# agentapi saves a conversation in milliseconds; this only bounds a hung one.
STATE_SAVE_WAIT_S: Final = 3.0
# Beyond its own shutdown budget, the daemon needs a moment to exit.
DAEMON_EXIT_MARGIN_S: Final = 5.0
AGENTAPI_EXIT_WAIT_S: Final = 5.0
_POLL_S: Final = 0.005


def stop(env: Mapping[str, str]) -> int:
    """0 when the snapshot was delivered or there was nothing to deliver; 1 when it could
    not be (it is spooled, or lost). Raises ConfigError."""
    config = load_stop_config(env)
    log.configure(config.log_level, config.log_format)
    agentapi = _agentapi(config.agentapi_pid_file)
    try:
        if agentapi is not None and config.agentapi_state_file is not None:
            _save_state(agentapi, config.agentapi_state_file)
        daemon = running_daemon(config.state_dir)
        if daemon is not None:
            return _stop_daemon(daemon, config)
        log.info("stop.no_daemon", state_dir=str(config.state_dir), note="posting the snapshot")
        return _snapshot(env)
    finally:
        if agentapi is not None:
            _stop_agentapi(agentapi)


# --- agentapi -----------------------------------------------------------------------------


def _agentapi(pid_file: Path | None) -> int | None:
    """agentapi's pid from its pid file, when that process is alive and is agentapi."""
    if pid_file is None:
        return None
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        log.info("stop.agentapi_not_running", pid_file=str(pid_file), reason="no usable pid file")
        return None
    if pid <= 1 or not _alive(pid):
        log.info("stop.agentapi_not_running", pid_file=str(pid_file), pid=pid)
        return None
    # A stale pid file may name a process that took the pid over: never signal it.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = None  # no /proc to tell by: trust the pid file
    if cmdline is not None and b"agentapi" not in cmdline:
        log.warning("stop.agentapi_pid_reused", pid_file=str(pid_file), pid=pid)
        return None
    return pid


def _save_state(pid: int, state_file: Path) -> None:
    before = _stamp(state_file)
    started = time.monotonic()
    if not _signal(pid, signal.SIGUSR1, "agentapi"):
        return
    deadline = started + STATE_SAVE_WAIT_S
    while time.monotonic() < deadline:
        if _stamp(state_file) not in (before, None):
            log.info(
                "stop.agentapi_saved",
                state_file=str(state_file),
                ms=round((time.monotonic() - started) * 1000, 1),
            )
            return
        time.sleep(_POLL_S)
    log.warning(
        "stop.agentapi_save_timeout",
        state_file=str(state_file),
        waited_s=STATE_SAVE_WAIT_S,
        note="agentapi did not rewrite its state file (older than v0.12.0?)",
    )


def _stop_agentapi(pid: int) -> None:
    if not _signal(pid, signal.SIGTERM, "agentapi"):
        return
    if _wait_gone(pid, AGENTAPI_EXIT_WAIT_S):
        log.info("stop.agentapi_stopped", pid=pid)
    else:
        log.warning("stop.agentapi_still_running", pid=pid, waited_s=AGENTAPI_EXIT_WAIT_S)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


# --- the daemon ---------------------------------------------------------------------------


def _stop_daemon(pid: int, config: StopConfig) -> int:
    started = time.monotonic()
    if not _signal(pid, signal.SIGTERM, "daemon"):
        return 1
    wait = config.shutdown_timeout + DAEMON_EXIT_MARGIN_S
    if not _wait_gone(pid, wait):
        log.error("stop.daemon_still_running", pid=pid, waited_s=wait)
        return 1
    record: dict[str, Any] = read_record(config.state_dir)
    snapshot = record.get("snapshot") if record.get("pid") == pid else None
    ms = round((time.monotonic() - started) * 1000, 1)
    if not isinstance(snapshot, str):
        log.error("stop.daemon_outcome_unknown", pid=pid, ms=ms, note="it ended without a word")
        return 1
    log.info("stop.daemon_stopped", pid=pid, snapshot=snapshot, exit=record.get("exit"), ms=ms)
    try:
        return 0 if FlushOutcome(snapshot).delivered else 1
    except ValueError:
        log.error("stop.daemon_outcome_unknown", pid=pid, snapshot=snapshot[:40])
        return 1


def _snapshot(env: Mapping[str, str]) -> int:
    # Only here does the hook need the HTTP stack and the full settings.
    import asyncio

    from sidecar.log import configure
    from sidecar.oneshot import snapshot_once
    from sidecar.settings import load_settings

    settings = load_settings(env)
    configure(settings.sidecar_log_level.value, settings.sidecar_log_format)
    return asyncio.run(snapshot_once(settings))


# --- processes ----------------------------------------------------------------------------


def _signal(pid: int, sig: signal.Signals, what: str) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        log.info(f"stop.{what}_gone", pid=pid)
        return False
    except OSError as exc:
        log.error(f"stop.{what}_not_signalled", pid=pid, signal=sig.name, error=exc.strerror)
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` (not our child) has exited; False after `timeout` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):
        fd = None  # an old kernel: ask every few milliseconds instead
    if fd is not None:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(max(0, int(timeout * 1000))))
        finally:
            os.close(fd)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


# --- its log ------------------------------------------------------------------------------


class _Log:
    """One line per step, shaped like the daemon's structlog lines."""

    _LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40}

    def __init__(self) -> None:
        self._out: TextIO = sys.stderr
        self._threshold = self._LEVELS["info"]
        self._json = True

    def configure(self, level: LogLevel, fmt: LogFormat) -> None:
        self._threshold = self._LEVELS[level.value]
        self._json = fmt == "json" or (fmt == "auto" and not self._out.isatty())

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if self._LEVELS[level] < self._threshold:
            return
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        if self._json:
            line = json.dumps({"event": event, "level": level, "timestamp": stamp, **fields})
        else:
            pairs = " ".join(f"{key}={value!r}" for key, value in fields.items())
            line = f"{stamp} [{level:<8}] {event:<30} {pairs}".rstrip()
        print(line, file=self._out, flush=True)


log = _Log()

"""`stop`: the template's `run_on_stop` hook. Its steps run side by side where they can,
each bounded in time:

1. agentapi is asked to save its state file (SIGUSR1; agentapi ≥ v0.12 writes that file
   only then and at a graceful exit, and skips the write when nothing changed), and,
   without waiting for it,
2. the daemon that holds the newest conversation flushes it: SIGTERM, then wait for it to
   exit and read what became of its final snapshot from its lock file. Without a daemon,
   read agentapi and post as `snapshot`; only when agentapi does not answer, and its state
   file is the snapshot's source, is the SIGUSR1 rewrite waited for.
3. agentapi is stopped: SIGTERM, once (its handler stops listening after the first: a
   second one would kill it mid-save), then wait for it to exit, its own final save
   included.

SIGTERM, SIGHUP and SIGUSR1 arriving meanwhile (a supervisor, `timeout`, a script aimed at
another pid) do not cut the hook short: it finishes its bounded steps, so agentapi is
never left running, and says that the signal came.

With a daemon running, nothing beyond the standard library is imported (not even
structlog, whose import costs as much as the rest of the hook): it runs inside the
workspace's stop grace period. Its lines have the daemon's shape (JSON when the output is
not a terminal), so one reader serves both.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from sidecar import statedir
from sidecar.config import StopConfig, load_stop_config
from sidecar.runtime.lock import read_record, running_daemon
from sidecar.runtime.processes import alive, send, wait_gone
from sidecar.slot import FlushOutcome
from sidecar.variables import LogFormat, LogLevel

# agentapi saves a conversation in milliseconds; this only bounds a hung one.
STATE_SAVE_WAIT_S: Final = 3.0
# Beyond its own shutdown budget, the daemon needs a moment to exit.
DAEMON_EXIT_MARGIN_S: Final = 5.0
# agentapi's graceful exit: its final save, then up to 5 s for the agent to close and 5 s
# for its HTTP server to shut down. The wait grows with the configured shutdown budget.
AGENTAPI_EXIT_WAIT_S: Final = 5.0
_POLL_S: Final = 0.005
_PID_FILE_MAX_BYTES: Final = 64
# Signals that must not end the hook half way (SIGINT stays the person's own).
_HELD_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


def stop(env: Mapping[str, str]) -> int:
    """0 when the snapshot was delivered or there was nothing to deliver; 1 when it could
    not be (it is spooled, or lost). Raises ConfigError."""
    config = load_stop_config(env)
    log.configure(config.log_level, config.log_format)
    with _held_signals():
        agentapi = _agentapi(config.agentapi_pid_file)
        save = _ask_to_save(agentapi, config)
        try:
            daemon = _daemon(config.state_dir)
            if daemon is not None:
                return _stop_daemon(daemon, config)
            log.info("stop.no_daemon", state_dir=str(config.state_dir), note="posting the snapshot")
            return _snapshot(env, save.wait if save is not None else None)
        finally:
            if agentapi is not None:
                _stop_agentapi(agentapi, save, config.shutdown_timeout)


# --- agentapi -----------------------------------------------------------------------------


def _agentapi(pid_file: Path | None) -> int | None:
    """agentapi's pid from its pid file, when that process is alive and is agentapi."""
    if pid_file is None:
        return None
    try:
        raw = statedir.read_owned(pid_file, limit=_PID_FILE_MAX_BYTES)
        pid = int((raw or b"").decode("ascii").strip())
    except statedir.Unsafe as exc:
        # A pid named by a file that is not ours is not ours to signal.
        log.warning("stop.agentapi_pid_file_refused", pid_file=str(pid_file), problem=str(exc))
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        log.info("stop.agentapi_not_running", pid_file=str(pid_file), reason="no usable pid file")
        return None
    if pid <= 1 or not alive(pid):
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


class _SaveRequest:
    """SIGUSR1 sent at `asked`; the state file as it stood before."""

    __slots__ = ("_asked", "_before", "_path", "_reported")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._before = _stamp(path)
        self._asked = time.monotonic()
        self._reported = False

    @property
    def rewritten(self) -> bool:
        return _stamp(self._path) not in (self._before, None)

    def wait(self) -> None:
        """Wait (within the bound since SIGUSR1) for the rewrite: the state file is the
        snapshot's source. agentapi skips a save when nothing changed since its last one,
        so the file as it is may be all there is."""
        deadline = self._asked + STATE_SAVE_WAIT_S
        while not self.rewritten and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        self.report()

    def report(self) -> None:
        if self._reported:
            return
        self._reported = True
        ms = round((time.monotonic() - self._asked) * 1000, 1)
        if self.rewritten:
            log.info("stop.agentapi_saved", state_file=str(self._path), ms=ms)
        else:
            log.info(
                "stop.agentapi_save_skipped",
                state_file=str(self._path),
                ms=ms,
                note="agentapi did not rewrite its state file (nothing changed since its "
                "last save, or it is older than v0.12.0)",
            )


def _ask_to_save(agentapi: int | None, config: StopConfig) -> _SaveRequest | None:
    if agentapi is None or config.agentapi_state_file is None:
        return None
    if not config.agentapi_save_state:
        log.info("stop.agentapi_save_off", note="AGENTAPI_SAVE_STATE is false")
        return None
    request = _SaveRequest(config.agentapi_state_file)
    if not _signal(agentapi, signal.SIGUSR1, "agentapi"):
        return None
    return request


def _stop_agentapi(pid: int, save: _SaveRequest | None, budget: float) -> None:
    if not _signal(pid, signal.SIGTERM, "agentapi"):
        return
    wait = max(AGENTAPI_EXIT_WAIT_S, budget + 2)
    if wait_gone(pid, wait):
        log.info("stop.agentapi_stopped", pid=pid)
        if save is not None:
            save.report()
    else:
        log.warning("stop.agentapi_still_running", pid=pid, waited_s=wait)


def _stamp(path: Path) -> tuple[int, int] | None:
    """The state file's identity: agentapi replaces it by rename (its `<file>.tmp` is
    never looked at), so a rewrite changes the inode or the mtime."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


# --- the daemon ---------------------------------------------------------------------------


def _daemon(state_dir: Path) -> int | None:
    """The daemon holding the state directory's lock, if the directory is ours to trust
    (another user's lock file could name any pid)."""
    try:
        statedir.check_directory(state_dir)
    except FileNotFoundError:
        return None
    except (statedir.Unsafe, OSError) as exc:
        log.error("stop.state_dir_refused", state_dir=str(state_dir), problem=str(exc))
        return None
    return running_daemon(state_dir)


def _stop_daemon(pid: int, config: StopConfig) -> int:
    started = time.monotonic()
    if not _signal(pid, signal.SIGTERM, "daemon"):
        return 1
    wait = config.shutdown_timeout + DAEMON_EXIT_MARGIN_S
    if not wait_gone(pid, wait):
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


def _snapshot(env: Mapping[str, str], wait_for_save: Callable[[], None] | None) -> int:
    # Only here does the hook need the HTTP stack and the full settings.
    import asyncio

    from sidecar.log import configure
    from sidecar.oneshot import snapshot_once
    from sidecar.settings import load_settings

    settings = load_settings(env)
    configure(settings.sidecar_log_level.value, settings.sidecar_log_format)
    return asyncio.run(snapshot_once(settings, wait_for_save=wait_for_save, interruptible=False))


# --- processes ----------------------------------------------------------------------------


def _signal(pid: int, sig: signal.Signals, what: str) -> bool:
    problem = send(pid, sig)
    if problem == "gone":
        log.info(f"stop.{what}_gone", pid=pid)
    elif problem is not None:
        log.error(f"stop.{what}_not_signalled", pid=pid, signal=sig.name, error=problem)
    return problem is None


@contextlib.contextmanager
def _held_signals() -> Iterator[None]:
    def note(signum: int, _frame: FrameType | None) -> None:
        log.warning(
            "stop.signal_held",
            signal=signal.Signals(signum).name,
            note="finishing the stop first, so that agentapi is not left running",
        )

    previous = {sig: signal.signal(sig, note) for sig in _HELD_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- its log ------------------------------------------------------------------------------


class _Log:
    """One line per step, shaped like the daemon's structlog lines. A line that cannot be
    written (the reader of stderr went away) is dropped: it must not stop the hook."""

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
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        if self._json:
            line = json.dumps({"event": event, "level": level, "timestamp": stamp, **fields})
        else:
            pairs = " ".join(f"{key}={value!r}" for key, value in fields.items())
            line = f"{stamp} [{level:<8}] {event:<30} {pairs}".rstrip()
        with contextlib.suppress(OSError, ValueError):
            print(line, file=self._out, flush=True)


log = _Log()

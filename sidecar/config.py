"""The environment: the one place that reads it, validated once at startup.

Two readers. `load_settings` builds the full `Settings` (sidecar.settings, pydantic) that
the daemon, `snapshot` and `check` run on. `load_stop_config` reads only what the `stop`
hook needs to find and signal processes, without importing pydantic or the HTTP stack:
the hook runs inside the workspace's stop grace period.

A bad value becomes a `ConfigError` naming the variable; values are never echoed (a
token, a password in a URL).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

if TYPE_CHECKING:
    from sidecar.settings import Settings

__all__ = [
    "SHUTDOWN_TIMEOUT_BOUNDS",
    "ConfigError",
    "LogFormat",
    "LogLevel",
    "StopConfig",
    "load_settings",
    "load_stop_config",
    "state_dir_from",
    "unknown_variables",
]

LogFormat = Literal["auto", "console", "json"]
_LOG_FORMATS: Final[dict[str, LogFormat]] = {"auto": "auto", "console": "console", "json": "json"}
SHUTDOWN_TIMEOUT_BOUNDS: Final = (1.0, 600.0)
_DEFAULT_SHUTDOWN_TIMEOUT: Final = 10.0


class ConfigError(Exception):
    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def state_dir_from(configured: Path | None, xdg_state_home: Path | None, home: Path | None) -> Path:
    """SIDECAR_STATE_DIR, else $XDG_STATE_HOME/coder-task-sidecar, else
    ~/.local/state/coder-task-sidecar. Raises RuntimeError or KeyError when there is no
    home to derive it from (a container running as a uid unknown to /etc/passwd)."""
    if configured is not None:
        return configured
    base = xdg_state_home or (home or Path.home()) / ".local" / "state"
    return base / "coder-task-sidecar"


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build Settings from `env` (the commands pass os.environ) or raise ConfigError."""
    from sidecar.settings import build

    return build(env)


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """`SIDECAR_*` variables that no setting reads (a typo, most likely), each with the
    closest known name, or None when nothing is close."""
    from sidecar.settings import unknown

    return unknown(env)


class StopConfig(NamedTuple):
    """What `stop` needs before it knows whether it needs anything more. (A NamedTuple:
    the dataclasses module costs the hook a few milliseconds to import.)"""

    state_dir: Path
    agentapi_pid_file: Path | None
    agentapi_state_file: Path | None
    shutdown_timeout: float
    log_level: LogLevel
    log_format: LogFormat


def load_stop_config(env: Mapping[str, str]) -> StopConfig:
    """The few variables `stop` reads first, with the same rules `Settings` applies to
    them (a value that is only blanks counts as unset). Raises ConfigError."""

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def path(name: str) -> Path | None:
        value = get(name)
        return Path(value) if value is not None else None

    low, high = SHUTDOWN_TIMEOUT_BOUNDS
    timeout = _DEFAULT_SHUTDOWN_TIMEOUT
    raw_timeout = get("SIDECAR_SHUTDOWN_TIMEOUT")
    if raw_timeout is not None:
        try:
            timeout = float(raw_timeout)
        except ValueError:
            timeout = math.nan
        if not low <= timeout <= high:
            raise ConfigError(
                "SIDECAR_SHUTDOWN_TIMEOUT", f"must be a number of seconds from {low:g} to {high:g}"
            )
    level = (get("SIDECAR_LOG_LEVEL") or "info").lower()
    if level not in {member.value for member in LogLevel}:
        raise ConfigError("SIDECAR_LOG_LEVEL", "must be one of debug, info, warning, error")
    fmt = _LOG_FORMATS.get((get("SIDECAR_LOG_FORMAT") or "auto").lower())
    if fmt is None:
        raise ConfigError("SIDECAR_LOG_FORMAT", "must be one of auto, console, json")
    try:
        state_dir = state_dir_from(path("SIDECAR_STATE_DIR"), path("XDG_STATE_HOME"), path("HOME"))
    except (RuntimeError, KeyError):
        raise ConfigError(
            "SIDECAR_STATE_DIR", "is required when neither XDG_STATE_HOME nor HOME is set"
        ) from None
    return StopConfig(
        state_dir=state_dir,
        agentapi_pid_file=path("AGENTAPI_PID_FILE"),
        agentapi_state_file=path("AGENTAPI_STATE_FILE"),
        shutdown_timeout=timeout,
        log_level=LogLevel(level),
        log_format=fmt,
    )

"""The light reader of the environment: what the `stop` hook needs, and typo warnings.

`stop` runs inside the workspace's stop grace period and, with a daemon running, needs
only a few paths and the log settings: it reads them here, by the same table and rules
as the full `Settings` (sidecar.settings), without importing pydantic or the HTTP stack.
A bad value becomes a `ConfigError` naming the variable; values are never echoed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from sidecar.variables import (
    LOG_FORMAT,
    LOG_FORMATS,
    LOG_LEVEL,
    SHUTDOWN_TIMEOUT,
    VARIABLES,
    ConfigError,
    LogFormat,
    LogLevel,
    get,
    go_bool,
    state_dir_from,
)

__all__ = ["StopConfig", "load_stop_config", "unknown_variables"]

_PREFIX = "SIDECAR_"


class StopConfig(NamedTuple):
    """What `stop` needs before it knows whether it needs anything more."""

    state_dir: Path
    agentapi_pid_file: Path | None
    agentapi_state_file: Path | None
    agentapi_save_state: bool
    shutdown_timeout: float
    log_level: LogLevel
    log_format: LogFormat


def load_stop_config(env: Mapping[str, str]) -> StopConfig:
    """The few variables `stop` reads first. Raises ConfigError."""

    def path(name: str) -> Path | None:
        value = get(env, name)
        return Path(value) if value is not None else None

    raw_timeout = get(env, SHUTDOWN_TIMEOUT.name)
    timeout = (
        SHUTDOWN_TIMEOUT.default if raw_timeout is None else SHUTDOWN_TIMEOUT.parse(raw_timeout)
    )
    return StopConfig(
        state_dir=state_dir_from(path("SIDECAR_STATE_DIR"), path("XDG_STATE_HOME"), path("HOME")),
        agentapi_pid_file=path("AGENTAPI_PID_FILE"),
        agentapi_state_file=path("AGENTAPI_STATE_FILE"),
        agentapi_save_state=save_state(get(env, "AGENTAPI_SAVE_STATE")),
        shutdown_timeout=timeout,
        log_level=log_level(get(env, LOG_LEVEL.name)),
        log_format=log_format(get(env, LOG_FORMAT.name)),
    )


def save_state(raw: str | None) -> bool:
    """AGENTAPI_SAVE_STATE, agentapi's own flag: true unless it says false."""
    return True if raw is None else go_bool("AGENTAPI_SAVE_STATE", raw)


def log_level(raw: str | None) -> LogLevel:
    """SIDECAR_LOG_LEVEL, any case; info when unset."""
    try:
        return LogLevel((raw or LogLevel.INFO).lower())
    except ValueError:
        choices = ", ".join(level.value for level in LogLevel)
        raise ConfigError(LOG_LEVEL.name, f"must be one of {choices}") from None


def log_format(raw: str | None) -> LogFormat:
    """SIDECAR_LOG_FORMAT, any case; auto when unset."""
    value = (raw or "auto").lower()
    for fmt in LOG_FORMATS:
        if fmt == value:
            return fmt
    raise ConfigError(LOG_FORMAT.name, f"must be one of {', '.join(LOG_FORMATS)}")


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """`SIDECAR_*` variables that no setting reads (a typo, most likely), each with the
    closest known name, or None when nothing is close."""
    import difflib  # here: the `stop` hook never needs it

    known = sorted(var.name for var in VARIABLES if var.name.startswith(_PREFIX))
    # Compared without the prefix, which every name shares and which would make any two
    # of them look alike.
    suffixes = [name.removeprefix(_PREFIX) for name in known]
    unknown = []
    for name in sorted(env):
        upper = name.upper()
        if upper.startswith(_PREFIX) and upper not in known:
            close = difflib.get_close_matches(
                upper.removeprefix(_PREFIX), suffixes, n=1, cutoff=0.7
            )
            unknown.append((name, _PREFIX + close[0] if close else None))
    return unknown

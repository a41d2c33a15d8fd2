"""The table of environment variables: name, kind, default and bounds, in one place.

A leaf: the standard library only. Both readers use it, the pydantic `Settings`
(sidecar.settings) and the light reader of the `stop` hook (sidecar.config), so a bound
or a default is written once and says the same thing wherever it is checked. The README's
variables table shows these values (tests/unit/test_readme.py holds the two together).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal, NamedTuple

__all__ = [
    "AGENTAPI_PROBE_INTERVAL",
    "HTTP_TIMEOUT",
    "INTERNAL",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "RELAY_GRACE",
    "SHUTDOWN_TIMEOUT",
    "SNAPSHOT_INTERVAL",
    "SNAPSHOT_MAX_BYTES",
    "SNAPSHOT_MAX_MESSAGES",
    "VARIABLES",
    "ConfigError",
    "Count",
    "LogFormat",
    "LogLevel",
    "Seconds",
    "Variable",
    "field_name",
    "state_dir_from",
]


class ConfigError(Exception):
    """A variable's value cannot be used; `problem` never quotes the value."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


LogFormat = Literal["auto", "console", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("auto", "console", "json")


# Named tuples, not dataclasses: the `stop` hook imports this module, and the dataclasses
# module costs it a few milliseconds.
class Seconds(NamedTuple):
    """A duration with a floor and a ceiling: a typo (1e-9, 1e9) must not become a flood
    on the server or a wait that never ends."""

    name: str
    default: float
    low: float
    high: float

    @property
    def problem(self) -> str:
        return f"must be a number of seconds from {self.low:g} to {self.high:g}"

    def parse(self, raw: str) -> float:
        """`raw` as seconds, or ConfigError (the same rule pydantic applies in Settings)."""
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not self.low <= value <= self.high:
            raise ConfigError(self.name, self.problem)
        return value


class Count(NamedTuple):
    name: str
    default: int
    low: int
    high: int

    @property
    def problem(self) -> str:
        return f"must be a whole number from {self.low} to {self.high}"


class Variable(NamedTuple):
    """Any other variable: its meaning is checked by Settings' own validators."""

    name: str


SNAPSHOT_INTERVAL: Final = Seconds("SIDECAR_SNAPSHOT_INTERVAL", 30.0, 1.0, 3600.0)
SHUTDOWN_TIMEOUT: Final = Seconds("SIDECAR_SHUTDOWN_TIMEOUT", 10.0, 1.0, 600.0)
HTTP_TIMEOUT: Final = Seconds("SIDECAR_HTTP_TIMEOUT", 10.0, 1.0, 300.0)
AGENTAPI_PROBE_INTERVAL: Final = Seconds("SIDECAR_AGENTAPI_PROBE_INTERVAL", 5.0, 1.0, 300.0)
RELAY_GRACE: Final = Seconds("SIDECAR_RELAY_GRACE", 30.0, 1.0, 3600.0)
SNAPSHOT_MAX_MESSAGES: Final = Count("SIDECAR_SNAPSHOT_MAX_MESSAGES", 10, 1, 1000)
# Coder reads the body through a 65,536-byte limit: a lower ceiling may be configured
# (behind a proxy, say), never a higher one.
SNAPSHOT_MAX_BYTES: Final = Count("SIDECAR_SNAPSHOT_MAX_BYTES", 65_536, 1024, 65_536)
LOG_LEVEL: Final = Variable("SIDECAR_LOG_LEVEL")
LOG_FORMAT: Final = Variable("SIDECAR_LOG_FORMAT")

VARIABLES: Final[tuple[Seconds | Count | Variable, ...]] = (
    Variable("CODER_AGENT_URL"),
    Variable("CODER_AGENT_TOKEN"),
    Variable("CODER_AGENT_TOKEN_FILE"),
    Variable("CODER_TASK_ID"),
    Variable("CODER_MCP_APP_STATUS_SLUG"),
    Variable("CODER_MCP_AI_AGENTAPI_URL"),
    Variable("AGENTAPI_STATE_FILE"),
    Variable("AGENTAPI_PID_FILE"),
    Variable("AGENTAPI_SAVE_STATE"),
    SNAPSHOT_INTERVAL,
    SNAPSHOT_MAX_MESSAGES,
    SNAPSHOT_MAX_BYTES,
    Variable("SIDECAR_STATE_DIR"),
    SHUTDOWN_TIMEOUT,
    Variable("SIDECAR_HTTP_ADDR"),
    HTTP_TIMEOUT,
    LOG_LEVEL,
    LOG_FORMAT,
    AGENTAPI_PROBE_INTERVAL,
    RELAY_GRACE,
    Variable("SIDECAR_RELAY_SCREEN_ACTIVITY"),
    Variable("SIDECAR_RELAY_URI"),
    Variable("SIDECAR_RELAY_ON_STOP"),
    Variable("SIDECAR_DRY_RUN"),
    Variable("HTTPS_PROXY"),
    Variable("HTTP_PROXY"),
    Variable("NO_PROXY"),
    Variable("XDG_STATE_HOME"),
    Variable("HOME"),
    Variable("NOTIFY_SOCKET"),
    Variable("WATCHDOG_USEC"),
)
# Read to derive defaults or to speak the service manager's protocol: not the sidecar's
# own settings, and so not in its documentation.
INTERNAL: Final = frozenset(("XDG_STATE_HOME", "HOME", "NOTIFY_SOCKET", "WATCHDOG_USEC"))

BY_FIELD: Final[Mapping[str, Seconds | Count | Variable]] = {
    var.name.lower(): var for var in VARIABLES
}


def field_name(var: Seconds | Count | Variable) -> str:
    """The Settings field that holds `var`."""
    return var.name.lower()


_GO_TRUE: Final = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_GO_FALSE: Final = frozenset(("0", "f", "F", "FALSE", "false", "False"))


def go_bool(name: str, raw: str) -> bool:
    """A boolean as Go's strconv.ParseBool reads it (agentapi's own variables are read
    that way), or ConfigError."""
    if raw in _GO_TRUE:
        return True
    if raw in _GO_FALSE:
        return False
    raise ConfigError(name, "must be true or false (Go's spellings: 1, t, true, 0, f, false)")


def get(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value with surrounding blanks trimmed; None when unset or blank
    (a template that fills a variable from an empty Terraform value sets it empty)."""
    value = env.get(name, "").strip()
    return value or None


def state_dir_from(configured: Path | None, xdg_state_home: Path | None, home: Path | None) -> Path:
    """SIDECAR_STATE_DIR, else $XDG_STATE_HOME/coder-task-sidecar, else
    ~/.local/state/coder-task-sidecar. Raises ConfigError when there is no home to derive
    it from (a container running as a uid unknown to /etc/passwd)."""
    if configured is not None:
        return configured
    if xdg_state_home is not None:
        return xdg_state_home / "coder-task-sidecar"
    try:
        base = home or Path.home()
    except (RuntimeError, KeyError):
        raise ConfigError(
            "SIDECAR_STATE_DIR", "is required when neither XDG_STATE_HOME nor HOME is set"
        ) from None
    return base / ".local" / "state" / "coder-task-sidecar"

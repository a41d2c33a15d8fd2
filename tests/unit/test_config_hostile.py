"""Values from the environment as real workspaces (and hostile users) set them.

Every bad value is a ConfigError naming the variable, without quoting the value; nothing
else ever escapes `load_settings`, whatever the value of whatever variable.
"""

from __future__ import annotations

import math
import os
import string
from pathlib import Path
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.coder.token import TokenSource
from sidecar.config import unknown_variables
from sidecar.settings import Settings, load_settings
from sidecar.variables import ConfigError

TOKEN: Final = "5f3b2a1c-0d4e-4f6a-8b7c-9d0e1f2a3b4c"
BASE: Final = {"CODER_AGENT_URL": "https://coder.example.com", "CODER_AGENT_TOKEN": TOKEN}
SECRET: Final = "Zq9S3cr3tMark"
DURATIONS: Final = {
    "SIDECAR_SNAPSHOT_INTERVAL": (1.0, 3600.0),
    "SIDECAR_SHUTDOWN_TIMEOUT": (1.0, 600.0),
    "SIDECAR_HTTP_TIMEOUT": (1.0, 300.0),
    "SIDECAR_AGENTAPI_PROBE_INTERVAL": (1.0, 300.0),
    "SIDECAR_RELAY_GRACE": (1.0, 3600.0),
}


def refused(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value


def error_of(env: dict[str, str]) -> ConfigError | None:
    """The ConfigError for `env`, or None when it is accepted; anything else escapes."""
    try:
        load_settings(env)
    except ConfigError as error:
        return error
    return None


# --- the token ---------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["\n", "\r\n", " ", "\t", "  \n\n", "\x0b\x0c"])
def test_token_with_surrounding_whitespace_is_trimmed(padding: str) -> None:
    settings = load_settings({**BASE, "CODER_AGENT_TOKEN": padding + TOKEN + padding})
    assert settings.coder_agent_token is not None
    assert settings.coder_agent_token.get_secret_value() == TOKEN


@pytest.mark.parametrize(
    "token",
    [
        f"{TOKEN}\n{TOKEN}",  # a two-line value
        f"\ufeff{TOKEN}",  # a byte-order mark
        f"{TOKEN}\x7f",
        f"{TOKEN[:8]} {TOKEN[8:]}",
        f"{TOKEN}\x00",
        f"{TOKEN}\x1b[0m",
        f"{TOKEN}é",
        f"{TOKEN}\udcff",  # an undecodable byte in the environment
        f"{TOKEN}\u200b",
    ],
)
def test_token_that_still_holds_a_control_character_is_refused(token: str) -> None:
    error = refused({**BASE, "CODER_AGENT_TOKEN": token})
    assert error.variable == "CODER_AGENT_TOKEN"
    assert TOKEN not in str(error)


@pytest.mark.parametrize("content", [TOKEN + "\n", "\n  " + TOKEN + "  \r\n"])
def test_token_file_is_trimmed(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    path.chmod(0o600)
    settings = load_settings({**BASE, "CODER_AGENT_TOKEN": "", "CODER_AGENT_TOKEN_FILE": str(path)})
    assert TokenSource(path=settings.coder_agent_token_file).value() == TOKEN


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"{TOKEN}\n{TOKEN}\n".encode(), "control"),
        (b"\xef\xbb\xbf" + TOKEN.encode(), "control"),
        (b"\xff\xfe" + TOKEN.encode(), "UTF-8"),
        (b"x" * 5000, "larger than"),
        (b"", "empty"),
        (b" \n\t ", "empty"),
    ],
)
def test_token_file_that_cannot_hold_a_token_is_refused(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    error = refused({**BASE, "CODER_AGENT_TOKEN": "", "CODER_AGENT_TOKEN_FILE": str(path)})
    assert error.variable == "CODER_AGENT_TOKEN_FILE"
    assert problem in error.problem
    assert TOKEN not in str(error)


def test_token_file_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    error = refused({**BASE, "CODER_AGENT_TOKEN": "", "CODER_AGENT_TOKEN_FILE": str(fifo)})
    assert error.variable == "CODER_AGENT_TOKEN_FILE"
    assert "not a regular file" in error.problem


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/"])
def test_token_file_that_is_a_device_or_directory_is_refused(path: str) -> None:
    error = refused({**BASE, "CODER_AGENT_TOKEN": "", "CODER_AGENT_TOKEN_FILE": path})
    assert error.variable == "CODER_AGENT_TOKEN_FILE"
    assert "not a regular file" in error.problem


# --- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["CODER_AGENT_URL", "CODER_MCP_AI_AGENTAPI_URL"])
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"https://user:{SECRET}@coder.example.com", "password"),
        (f"https://{SECRET}@coder.example.com", "password"),
        (f"https://:{SECRET}@coder.example.com", "password"),
        (f"https://coder.example.com/?token={SECRET}", "query"),
        ("https://coder.example.com/?", "query"),
        (f"https://coder.example.com/#{SECRET}", "fragment"),
        ("https://coder.example.com:0", "port"),
        ("https://coder.example.com:65536", "port"),
        ("https://coder.example.com:99999999999", "port"),
        ("https://coder.example.com:-1", "port"),
        ("https://coder.example.com:http", "port"),
        ("https://[::1", "URL"),
        (f"https://coder.example.com/{SECRET} x", "spaces"),
        (f"https://coder.example.com/{SECRET}\nx", "control"),
        ("https://coder.example.com/\x1b", "control"),
        ("https://coder.example.com/\udcff", "control"),
        ("ftp://coder.example.com", "http"),
        ("coder.example.com", "http"),
        ("https://", "host"),
        ("https:///path", "host"),
    ],
)
def test_url_problems_are_named_without_quoting_the_url(
    variable: str, url: str, problem: str
) -> None:
    error = refused({**BASE, variable: url})
    assert error.variable == variable
    assert problem in error.problem
    assert SECRET not in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "https://coder.example.com",
        "https://coder.example.com/",
        "https://coder.example.com:8443/prefix",
        "http://127.0.0.1:3000",
        "http://[::1]:3000",
        "  https://coder.example.com  ",
    ],
)
def test_good_urls_are_kept_without_a_trailing_slash(url: str) -> None:
    settings = load_settings({**BASE, "CODER_AGENT_URL": url})
    assert settings.coder_agent_url == url.strip().rstrip("/")


# --- durations ---------------------------------------------------------------------------


def outside(value: str, low: float, high: float) -> bool:
    """Whether `value` is no number of seconds from `low` to `high`."""
    try:
        seconds = float(value)
    except ValueError:
        return True
    return not (math.isfinite(seconds) and low <= seconds <= high)


@pytest.mark.parametrize("variable", sorted(DURATIONS))
@pytest.mark.parametrize(
    "value", ["1e-9", "0", "0.999", "-1", "1e9", "1e400", "inf", "-inf", "nan", "soon", "5s"]
)
def test_durations_outside_their_bounds_are_refused(variable: str, value: str) -> None:
    low, high = DURATIONS[variable]
    assert outside(value, low, high), f"{value} is within [{low:g}, {high:g}]: not a case here"
    error = refused({**BASE, variable: value})
    assert error.variable == variable
    assert error.problem == f"must be a number of seconds from {low:g} to {high:g}"


@pytest.mark.parametrize("variable", sorted(DURATIONS))
def test_durations_at_their_bounds_are_accepted(variable: str) -> None:
    low, high = DURATIONS[variable]
    for value in (low, high):
        settings = load_settings({**BASE, variable: f"{value:g}"})
        assert getattr(settings, variable.lower()) == value


def test_every_duration_has_bounds() -> None:
    durations = {
        name.upper() for name, field in Settings.model_fields.items() if field.annotation is float
    }
    assert durations == set(DURATIONS)


# --- names -------------------------------------------------------------------------------


def test_unknown_sidecar_variables_are_named_with_the_closest_known_one() -> None:
    env = {
        **BASE,
        "SIDECAR_SNAPSHOT_INTERVALL": "5",
        "SIDECAR_SHUTDOWN_TIMOUT": "5",
        "SIDECAR_NONSENSE_THING": "1",
        "SIDECAR_STATE_DIR": "/tmp/x",
        "NOT_OURS": "x",
    }
    assert unknown_variables(env) == [
        ("SIDECAR_NONSENSE_THING", None),
        ("SIDECAR_SHUTDOWN_TIMOUT", "SIDECAR_SHUTDOWN_TIMEOUT"),
        ("SIDECAR_SNAPSHOT_INTERVALL", "SIDECAR_SNAPSHOT_INTERVAL"),
    ]


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("CODER_TASK_ID", "coder_task_id"),
        ("CODER_MCP_APP_STATUS_SLUG", "coder_mcp_app_status_slug"),
        ("AGENTAPI_STATE_FILE", "agentapi_state_file"),
        ("SIDECAR_HTTP_ADDR", "sidecar_http_addr"),
        ("SIDECAR_RELAY_ON_STOP", "sidecar_relay_on_stop"),
    ],
)
def test_a_variable_set_but_blank_counts_as_unset(
    blank: str, variable: str, attribute: str
) -> None:
    assert getattr(load_settings({**BASE, variable: blank}), attribute) is None


def test_no_state_dir_anywhere_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Path.home() falls back to the password database, which may not know the user
    # (a container running as an arbitrary uid).
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", no_home)
    assert refused(dict(BASE)).variable == "SIDECAR_STATE_DIR"


# --- anything at all -----------------------------------------------------------------------

VARIABLES: Final = sorted(name.upper() for name in Settings.model_fields)
# What an environment can hold: anything but NUL; undecodable bytes arrive as surrogates.
ENV_TEXT: Final = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=()), max_size=40
) | st.sampled_from(["0", "-1", "1e309", "nan", "true", "[::1]:0", ":", "http://", "\n"])


@settings(max_examples=400, deadline=None)
@given(variable=st.sampled_from(VARIABLES), value=ENV_TEXT, marked=st.booleans())
def test_any_value_of_any_variable_is_accepted_or_named(
    variable: str, value: str, marked: bool
) -> None:
    if marked:
        value = value + SECRET
    error = error_of({**BASE, "SIDECAR_STATE_DIR": "/tmp/x", variable: value})
    if error is not None:
        assert error.variable in VARIABLES
        assert SECRET not in str(error)
        assert "\n" not in str(error)


def test_the_printable_alphabet_never_escapes_as_anything_but_a_configuration_error() -> None:
    for variable in VARIABLES:
        for char in string.printable:
            error = error_of({**BASE, "SIDECAR_STATE_DIR": "/tmp/x", variable: char * 3})
            assert error is None or error.variable in VARIABLES

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import pytest

from sidecar.settings import DRY_RUN_CODER_URL, load_settings
from sidecar.variables import ConfigError, LogLevel

TASK = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
TOKEN = "5f3b2a1c-0d4e-4f6a-8b7c-9d0e1f2a3b4c"
BASE = {"CODER_AGENT_URL": "https://coder.example.com/", "CODER_AGENT_TOKEN": TOKEN}


def test_defaults() -> None:
    s = load_settings({**BASE, "HOME": "/home/coder"})
    assert s.coder_agent_url == "https://coder.example.com"
    assert s.coder_task_id is None
    assert s.coder_mcp_app_status_slug is None
    assert s.coder_mcp_ai_agentapi_url == "http://localhost:3284"
    assert s.sidecar_snapshot_interval == 30
    assert s.sidecar_snapshot_max_messages == 10
    assert s.sidecar_snapshot_max_bytes == 65_536
    assert s.sidecar_shutdown_timeout == 10
    assert s.sidecar_http_addr is None
    assert s.http_addr is None
    assert s.sidecar_log_level is LogLevel.INFO
    assert s.sidecar_log_format == "auto"
    assert s.state_dir == Path("/home/coder/.local/state/coder-task-sidecar")


def test_all_variables() -> None:
    s = load_settings(
        {
            **BASE,
            "CODER_TASK_ID": TASK,
            "CODER_MCP_APP_STATUS_SLUG": "claude-code",
            "CODER_MCP_AI_AGENTAPI_URL": "http://127.0.0.1:4000",
            "AGENTAPI_STATE_FILE": "/tmp/state.json",
            "SIDECAR_SNAPSHOT_INTERVAL": "1.5",
            "SIDECAR_SNAPSHOT_MAX_MESSAGES": "20",
            "SIDECAR_STATE_DIR": "/var/lib/sidecar",
            "SIDECAR_SHUTDOWN_TIMEOUT": "3",
            "SIDECAR_HTTP_ADDR": "127.0.0.1:9464",
            "SIDECAR_LOG_LEVEL": "DEBUG",
            "SIDECAR_LOG_FORMAT": "JSON",
        }
    )
    assert s.coder_task_id == UUID(TASK)
    assert s.coder_mcp_app_status_slug == "claude-code"
    assert s.agentapi_state_file == Path("/tmp/state.json")
    assert s.sidecar_snapshot_interval == 1.5
    assert s.sidecar_snapshot_max_messages == 20
    assert s.state_dir == Path("/var/lib/sidecar")
    assert s.http_addr == ("127.0.0.1", 9464)
    assert s.sidecar_log_level is LogLevel.DEBUG
    assert s.sidecar_log_format == "json"


def test_xdg_state_home() -> None:
    s = load_settings({**BASE, "XDG_STATE_HOME": "/xdg"})
    assert s.state_dir == Path("/xdg/coder-task-sidecar")


def test_settings_are_frozen() -> None:
    s = load_settings(BASE)
    with pytest.raises(Exception, match="frozen"):
        s.sidecar_snapshot_interval = 1


def test_empty_values_count_as_unset() -> None:
    s = load_settings({**BASE, "CODER_TASK_ID": "", "SIDECAR_HTTP_ADDR": ""})
    assert s.coder_task_id is None
    assert s.sidecar_http_addr is None


def test_token_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(f"  {TOKEN}\n")
    f.chmod(0o600)
    s = load_settings({"CODER_AGENT_URL": "http://c", "CODER_AGENT_TOKEN_FILE": str(f)})
    assert s.coder_agent_token_file == f


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({}, "CODER_AGENT_URL", "is required"),
        ({"CODER_AGENT_TOKEN": TOKEN}, "CODER_AGENT_URL", "is required"),
        ({"CODER_AGENT_URL": "http://c"}, "CODER_AGENT_TOKEN", "CODER_AGENT_TOKEN_FILE"),
        ({**BASE, "CODER_AGENT_URL": "ftp://c"}, "CODER_AGENT_URL", "http"),
        ({**BASE, "CODER_AGENT_URL": "coder.example.com"}, "CODER_AGENT_URL", "http"),
        (
            {**BASE, "CODER_MCP_AI_AGENTAPI_URL": "localhost:3284"},
            "CODER_MCP_AI_AGENTAPI_URL",
            "http",
        ),
        ({**BASE, "CODER_TASK_ID": "not-a-uuid"}, "CODER_TASK_ID", "UUID"),
        ({**BASE, "SIDECAR_SNAPSHOT_INTERVAL": "0"}, "SIDECAR_SNAPSHOT_INTERVAL", "from 1 to"),
        ({**BASE, "SIDECAR_SNAPSHOT_INTERVAL": "-1"}, "SIDECAR_SNAPSHOT_INTERVAL", "from 1 to"),
        ({**BASE, "SIDECAR_SNAPSHOT_INTERVAL": "soon"}, "SIDECAR_SNAPSHOT_INTERVAL", "number"),
        ({**BASE, "SIDECAR_SNAPSHOT_INTERVAL": "nan"}, "SIDECAR_SNAPSHOT_INTERVAL", "number"),
        (
            {**BASE, "SIDECAR_SNAPSHOT_MAX_MESSAGES": "0"},
            "SIDECAR_SNAPSHOT_MAX_MESSAGES",
            "from 1 to 1000",
        ),
        ({**BASE, "SIDECAR_SNAPSHOT_MAX_BYTES": "70000"}, "SIDECAR_SNAPSHOT_MAX_BYTES", "65536"),
        ({**BASE, "SIDECAR_SHUTDOWN_TIMEOUT": "0"}, "SIDECAR_SHUTDOWN_TIMEOUT", "from 1 to 600"),
        ({**BASE, "SIDECAR_LOG_LEVEL": "loud"}, "SIDECAR_LOG_LEVEL", "debug"),
        ({**BASE, "SIDECAR_LOG_FORMAT": "xml"}, "SIDECAR_LOG_FORMAT", "json"),
        ({**BASE, "SIDECAR_HTTP_ADDR": "nonsense"}, "SIDECAR_HTTP_ADDR", ""),
        ({**BASE, "SIDECAR_RELAY_ON_STOP": "paused"}, "SIDECAR_RELAY_ON_STOP", "idle"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], variable: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.variable == variable
    assert fragment in info.value.problem


@pytest.mark.parametrize("content", ["", "  \n"])
def test_empty_token_file(tmp_path: Path, content: str) -> None:
    f = tmp_path / "token"
    f.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings({"CODER_AGENT_URL": "http://c", "CODER_AGENT_TOKEN_FILE": str(f)})
    assert info.value.variable == "CODER_AGENT_TOKEN_FILE"
    assert "empty" in info.value.problem


def test_undecodable_token_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as info:
        load_settings({"CODER_AGENT_URL": "http://c", "CODER_AGENT_TOKEN_FILE": str(f)})
    assert info.value.variable == "CODER_AGENT_TOKEN_FILE"


def test_missing_token_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            {"CODER_AGENT_URL": "http://c", "CODER_AGENT_TOKEN_FILE": str(tmp_path / "nope")}
        )
    assert info.value.variable == "CODER_AGENT_TOKEN_FILE"
    assert "cannot read" in info.value.problem


def test_token_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CODER_AGENT_URL": "http://c", "CODER_AGENT_TOKEN_FILE": str(tmp_path)})
    assert info.value.variable == "CODER_AGENT_TOKEN_FILE"


def test_error_never_echoes_values() -> None:
    secret = "sekrit-value-0123456789"
    for env in (
        {**BASE, "CODER_AGENT_URL": secret},
        {**BASE, "CODER_TASK_ID": secret},
        {**BASE, "SIDECAR_SNAPSHOT_INTERVAL": secret},
        {**BASE, "SIDECAR_LOG_LEVEL": secret},
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(env)
        assert secret not in str(info.value)
        assert "sekrit" not in str(info.value)


def test_unrelated_environment_is_ignored() -> None:
    s = load_settings({**BASE, "PATH": "/bin", "SIDECAR_UNKNOWN_KNOB": "1"})
    assert s.coder_agent_url == "https://coder.example.com"


@pytest.mark.parametrize("spelling", ["1", "true", "TRUE", "yes", "on", " t "])
def test_dry_run_needs_neither_url_nor_token(spelling: str) -> None:
    s = load_settings({"SIDECAR_DRY_RUN": spelling, "HOME": "/home/coder"})
    assert s.sidecar_dry_run is True
    assert s.coder_agent_url == DRY_RUN_CODER_URL
    assert s.coder_agent_token is None
    assert s.coder_agent_token_file is None


def test_dry_run_keeps_a_configured_url_and_skips_an_unreadable_token_file() -> None:
    s = load_settings(
        {
            "SIDECAR_DRY_RUN": "1",
            "CODER_AGENT_URL": "https://coder.example.com",
            "CODER_AGENT_TOKEN_FILE": "/nonexistent/agent-token",
            "HOME": "/home/coder",
        }
    )
    assert s.coder_agent_url == "https://coder.example.com"


@pytest.mark.parametrize("spelling", ["0", "false", "no", "off"])
def test_dry_run_off_still_requires_url_and_token(spelling: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"SIDECAR_DRY_RUN": spelling, "HOME": "/home/coder"})
    assert caught.value.variable == "CODER_AGENT_URL"
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {"SIDECAR_DRY_RUN": spelling, "CODER_AGENT_URL": "https://c", "HOME": "/home/coder"}
        )
    assert caught.value.variable == "CODER_AGENT_TOKEN"


def test_dry_run_with_a_bad_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"SIDECAR_DRY_RUN": "maybe", "HOME": "/home/coder"})
    # The flag is judged first: it decides whether the URL is required at all.
    assert caught.value.variable == "SIDECAR_DRY_RUN"
    assert "must be true or false" in caught.value.problem

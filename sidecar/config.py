"""Settings: the one reader of the environment, validated once at startup.

A bad value becomes a `ConfigError` naming the variable; input values are never echoed
(pydantic's own messages would quote the token).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.addr import parse_http_addr
from sidecar.coder.token import TokenError, read_token_file
from sidecar.models import SNAPSHOT_MAX_BYTES, AppState


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


PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True, case_sensitive=False, extra="ignore", env_ignore_empty=True
    )

    coder_agent_url: str
    coder_agent_token: SecretStr | None = None
    coder_agent_token_file: Path | None = None
    coder_task_id: UUID | None = None
    coder_mcp_app_status_slug: str | None = None
    coder_mcp_ai_agentapi_url: str = "http://localhost:3284"
    agentapi_state_file: Path | None = None

    sidecar_snapshot_interval: PositiveSeconds = 5.0
    sidecar_snapshot_max_messages: Annotated[int, Field(gt=0, le=1000)] = 10
    # A lower ceiling may be configured (e.g. behind a proxy); never a higher one.
    sidecar_snapshot_max_bytes: Annotated[int, Field(ge=1024, le=SNAPSHOT_MAX_BYTES)] = (
        SNAPSHOT_MAX_BYTES
    )
    sidecar_state_dir: Path | None = None
    sidecar_shutdown_timeout: PositiveSeconds = 10.0
    sidecar_http_addr: str | None = None
    sidecar_http_timeout: PositiveSeconds = 10.0
    sidecar_log_level: LogLevel = LogLevel.INFO
    sidecar_log_format: Literal["auto", "console", "json"] = "auto"
    sidecar_agentapi_probe_interval: PositiveSeconds = 5.0

    sidecar_relay_grace: PositiveSeconds = 30.0
    sidecar_relay_screen_activity: bool = False
    sidecar_relay_uri: str = ""
    sidecar_relay_on_stop: AppState | None = None

    # Read only to derive defaults or for the service manager's protocol.
    xdg_state_home: Path | None = None
    home: Path | None = None
    notify_socket: str | None = None
    watchdog_usec: Annotated[int, Field(gt=0)] | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings hands over the environment explicitly; nothing is read behind it.
        return (init_settings,)

    @field_validator("coder_agent_url", "coder_mcp_ai_agentapi_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("sidecar_log_level", "sidecar_log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("sidecar_http_addr")
    @classmethod
    def _addr(cls, value: str | None) -> str | None:
        if value is not None:
            parse_http_addr(value)
        return value

    @field_validator("coder_mcp_app_status_slug")
    @classmethod
    def _slug(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _token_present(self) -> Settings:
        if self.coder_agent_token is None and self.coder_agent_token_file is None:
            raise ValueError("one of CODER_AGENT_TOKEN or CODER_AGENT_TOKEN_FILE is required")
        return self

    @property
    def state_dir(self) -> Path:
        if self.sidecar_state_dir is not None:
            return self.sidecar_state_dir
        base = self.xdg_state_home or (self.home or Path.home()) / ".local" / "state"
        return base / "coder-task-sidecar"

    @property
    def http_addr(self) -> tuple[str, int] | None:
        return parse_http_addr(self.sidecar_http_addr) if self.sidecar_http_addr else None


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build Settings from `env` (the daemon passes os.environ) or raise ConfigError."""
    # Only our own variables are passed in, so an unrelated malformed variable (say a
    # HOME that is not a path) cannot stop the daemon.
    known = {name.upper() for name in Settings.model_fields}
    values = {k.lower(): v for k, v in env.items() if k.upper() in known and v.strip()}
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise _config_error(exc) from None
    if settings.coder_agent_token is None and settings.coder_agent_token_file is not None:
        try:
            read_token_file(settings.coder_agent_token_file)
        except TokenError as exc:
            raise ConfigError("CODER_AGENT_TOKEN_FILE", str(exc)) from None
    return settings


def _config_error(exc: ValidationError) -> ConfigError:
    error = exc.errors(include_input=False, include_url=False, include_context=False)[0]
    loc = [str(part) for part in error["loc"] if isinstance(part, str)]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc:
        # Model-level errors (the token rule) name their variables in the message.
        return ConfigError("CODER_AGENT_TOKEN", message)
    variable = loc[0].upper()
    if error["type"] == "missing":
        message = "is required"
    elif error["type"].startswith("uuid"):
        message = "must be a UUID"
    return ConfigError(variable, message)

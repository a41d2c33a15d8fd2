"""Settings: every variable the daemon, `snapshot` and `check` read, validated once.

`load_settings` builds them from the environment it is handed. The names, defaults and
bounds come from the one table in sidecar.variables, which the `stop` hook's light reader
(sidecar.config) uses too. A bad value becomes a `ConfigError` naming the variable; input
values are never echoed (pydantic's own messages would quote the token).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import (
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.addr import parse_http_addr
from sidecar.coder.proxy import SUPPORTED_SCHEMES, ProxyConfig, parse_proxy
from sidecar.coder.token import TokenError, check_token, read_token_file
from sidecar.config import log_format, log_level, save_state
from sidecar.models import AppState
from sidecar.variables import (
    AGENTAPI_PROBE_INTERVAL,
    BY_FIELD,
    HTTP_TIMEOUT,
    RELAY_GRACE,
    SHUTDOWN_TIMEOUT,
    SNAPSHOT_INTERVAL,
    SNAPSHOT_MAX_BYTES,
    SNAPSHOT_MAX_MESSAGES,
    VARIABLES,
    ConfigError,
    Count,
    LogFormat,
    LogLevel,
    Seconds,
    state_dir_from,
)

__all__ = ["DRY_RUN_CODER_URL", "Settings", "load_settings"]

# Whitespace and control characters (C0, DEL, C1) and lone surrogates (undecodable bytes
# in the environment): never part of a usable URL.
_URL_UNSAFE = re.compile("[\x00-\x20\x7f-\x9f\ud800-\udfff]")


def _checked(read: Callable[[str], object], value: Any) -> Any:
    """`value` read as the light reader reads it, its problem as pydantic wants it."""
    if not isinstance(value, str):
        return value
    try:
        return read(value.strip())
    except ConfigError as exc:
        raise ValueError(exc.problem) from None


def _bounded(var: Seconds | Count) -> FieldInfo:
    """The table's bounds as pydantic checks them (NaN and infinities refused)."""
    if isinstance(var, Seconds):
        return FieldInfo(ge=var.low, le=var.high, allow_inf_nan=False)
    return FieldInfo(ge=var.low, le=var.high)


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
    agentapi_pid_file: Path | None = None
    agentapi_save_state: bool = True

    sidecar_snapshot_interval: Annotated[float, _bounded(SNAPSHOT_INTERVAL)] = (
        SNAPSHOT_INTERVAL.default
    )
    sidecar_snapshot_max_messages: Annotated[int, _bounded(SNAPSHOT_MAX_MESSAGES)] = (
        SNAPSHOT_MAX_MESSAGES.default
    )
    sidecar_snapshot_max_bytes: Annotated[int, _bounded(SNAPSHOT_MAX_BYTES)] = (
        SNAPSHOT_MAX_BYTES.default
    )
    sidecar_state_dir: Path | None = None
    sidecar_shutdown_timeout: Annotated[float, _bounded(SHUTDOWN_TIMEOUT)] = (
        SHUTDOWN_TIMEOUT.default
    )
    sidecar_http_addr: str | None = None
    sidecar_http_timeout: Annotated[float, _bounded(HTTP_TIMEOUT)] = HTTP_TIMEOUT.default
    sidecar_log_level: LogLevel = LogLevel.INFO
    sidecar_log_format: LogFormat = "auto"
    sidecar_agentapi_probe_interval: Annotated[float, _bounded(AGENTAPI_PROBE_INTERVAL)] = (
        AGENTAPI_PROBE_INTERVAL.default
    )

    sidecar_relay_grace: Annotated[float, _bounded(RELAY_GRACE)] = RELAY_GRACE.default
    sidecar_relay_screen_activity: bool = False
    sidecar_relay_uri: str = ""
    sidecar_relay_on_stop: AppState | None = None
    # Coder replaced by a printer (sidecar.dryrun): no token, no URL, nothing kept.
    sidecar_dry_run: bool = False

    # Proxies for requests to Coder, with the meaning Coder's agent (Go) gives them; see
    # sidecar.coder.proxy. Secret: a proxy URL may hold a password.
    https_proxy: SecretStr | None = None
    http_proxy: SecretStr | None = None
    no_proxy: str | None = None

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
        # The messages never quote the value: it may hold a password.
        value = value.strip()
        if _URL_UNSAFE.search(value):
            raise ValueError("must not contain spaces or control characters")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise ValueError("is not a valid URL (is the port a number from 1 to 65535?)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "must not hold a user name or password (remove 'user:password@'; the agent "
                "token is what authenticates)"
            )
        if "?" in value or "#" in value:
            raise ValueError(
                "must not have a query string or fragment ('?…', '#…'): the API paths are "
                "appended to it"
            )
        if port == 0:
            raise ValueError("must have a port from 1 to 65535")
        return value.rstrip("/")

    @field_validator("coder_agent_token", mode="before")
    @classmethod
    def _token(cls, value: Any) -> Any:
        # Trimmed as the token file is: a Kubernetes secret made from a file ends in "\n".
        return check_token(value) if isinstance(value, str) else value

    @field_validator("https_proxy", "http_proxy")
    @classmethod
    def _proxy_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_proxy(value.get_secret_value())
        return value

    @field_validator("sidecar_log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        return _checked(log_level, value)

    @field_validator("agentapi_save_state", mode="before")
    @classmethod
    def _save_state(cls, value: Any) -> Any:
        return _checked(save_state, value)

    @field_validator("sidecar_dry_run", mode="before")
    @classmethod
    def _dry_run(cls, value: Any) -> Any:
        return _checked(_dry_run, value)

    @field_validator("sidecar_log_format", mode="before")
    @classmethod
    def _log_format(cls, value: Any) -> Any:
        return _checked(log_format, value)

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
        if self.sidecar_dry_run:
            return self
        if self.coder_agent_token is None and self.coder_agent_token_file is None:
            raise ValueError("one of CODER_AGENT_TOKEN or CODER_AGENT_TOKEN_FILE is required")
        return self

    @property
    def state_dir(self) -> Path:
        return state_dir_from(self.sidecar_state_dir, self.xdg_state_home, self.home)

    @property
    def proxy(self) -> ProxyConfig:
        return ProxyConfig.parse(
            https_proxy=self.https_proxy.get_secret_value() if self.https_proxy else None,
            http_proxy=self.http_proxy.get_secret_value() if self.http_proxy else None,
            no_proxy=self.no_proxy,
        )

    @property
    def http_addr(self) -> tuple[str, int] | None:
        return parse_http_addr(self.sidecar_http_addr) if self.sidecar_http_addr else None


def load_settings(env: Mapping[str, str]) -> Settings:
    """Settings from `env` (the commands pass os.environ), or ConfigError."""
    # Only our own variables are passed in, so an unrelated malformed variable (say a
    # HOME that is not a path) cannot stop the daemon.
    known = {var.name for var in VARIABLES}
    values = {k.lower(): v for k, v in env.items() if k.upper() in known and v.strip()}
    # Go reads exactly HTTPS_PROXY, else https_proxy (likewise the others); the lower-casing
    # above would take any spelling and let whichever `env` lists last win.
    proxy_names = _proxy_names(env)
    values = {k: v for k, v in values.items() if k not in _PROXY_FIELDS}
    values.update({field: env[name] for field, name in proxy_names.items()})
    if _dry_run(values.get("sidecar_dry_run")):
        # Never contacted: a dry run prints what it would send there.
        values.setdefault("coder_agent_url", DRY_RUN_CODER_URL)
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        error = _config_error(exc)
        # Named as spelled in the environment: https_proxy, not HTTPS_PROXY.
        raise ConfigError(
            proxy_names.get(error.variable.lower(), error.variable), error.problem
        ) from None
    _check_coder_proxy(settings, proxy_names)
    if (
        not settings.sidecar_dry_run
        and settings.coder_agent_token is None
        and settings.coder_agent_token_file is not None
    ):
        try:
            read_token_file(settings.coder_agent_token_file)
        except TokenError as exc:
            raise ConfigError("CODER_AGENT_TOKEN_FILE", str(exc)) from None
    settings.state_dir  # noqa: B018 (computed now, so that it cannot fail later)
    return settings


_PROXY_FIELDS: Final = ("https_proxy", "http_proxy", "no_proxy")
DRY_RUN_CODER_URL: Final = "https://coder.invalid"
_BOOL: Final = TypeAdapter(bool)


def _dry_run(raw: str | None) -> bool:
    """SIDECAR_DRY_RUN, judged before the rest (it decides what else is required) by
    pydantic's own reading of a boolean, the one every other flag gets."""
    value = (raw or "").strip()
    if not value:
        return False
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        raise ConfigError(
            "SIDECAR_DRY_RUN", "must be true or false (1, yes, on / 0, no, off)"
        ) from None


def _proxy_names(env: Mapping[str, str]) -> dict[str, str]:
    """Field -> the variable it is read from: the upper-case name when it is set, else the
    lower-case one (Go's getEnvAny)."""
    names = {}
    for field in _PROXY_FIELDS:
        for name in (field.upper(), field):
            if env.get(name, "").strip():
                names[field] = name
                break
    return names


def _check_coder_proxy(settings: Settings, proxy_names: Mapping[str, str]) -> None:
    """A proxy that requests to Coder would take but aiohttp cannot speak (socks5) is an
    error now rather than endless retries. One that only other URLs would take is left
    alone: the agent beside the sidecar may well use it."""
    decision = settings.proxy.decide(settings.coder_agent_url)
    if decision.proxy is not None and decision.proxy.scheme not in SUPPORTED_SCHEMES:
        assert decision.variable is not None
        raise ConfigError(
            proxy_names[decision.variable.lower()],
            f"{decision.proxy.scheme}:// proxies are not supported for requests to Coder; "
            "use an http:// or https:// proxy",
        )


def _config_error(exc: ValidationError) -> ConfigError:
    error = exc.errors(include_input=False, include_url=False, include_context=False)[0]
    loc = [str(part) for part in error["loc"] if isinstance(part, str)]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc:
        # Model-level errors (the token rule) name their variables in the message.
        return ConfigError("CODER_AGENT_TOKEN", message)
    variable = loc[0].upper()
    var = BY_FIELD.get(loc[0])
    if error["type"] == "missing":
        message = "is required"
    elif error["type"].startswith("uuid"):
        message = "must be a UUID"
    elif isinstance(var, Seconds | Count):
        message = var.problem
    return ConfigError(variable, message)

"""structlog setup: console on a TTY, JSON lines otherwise; secrets redacted everywhere."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

from sidecar.variables import LogFormat

REDACTED: Final = "[redacted]"
# What takes a secret's place in anything sent to Coder (a conversation in which the agent
# ran `env`, a status summary quoting it): the credential never leaves the workspace.
SECRET_MARKER: Final = "[secret removed by coder-task-sidecar]"  # noqa: S105 (a marker)

# Secrets are few (the token and its rotations) and must be scrubbed from any value that a
# log line might carry, e.g. an exception text that quotes a header.
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    if len(value) >= 4:
        _secrets.add(value)


def redact(text: str, marker: str = REDACTED) -> str:
    """`text` with every registered secret replaced by `marker`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, marker)
    return text


def remove_secrets(text: str) -> str:
    """`text` as it may leave the workspace."""
    return redact(text, SECRET_MARKER)


def _redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if not _secrets:
        return event_dict
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
        elif value is not None and not isinstance(value, int | float | bool):
            text = str(value)
            cleaned = redact(text)
            if cleaned != text:
                event_dict[key] = cleaned
    return event_dict


def configure(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

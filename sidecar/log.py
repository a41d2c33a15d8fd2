"""structlog setup: console on a TTY, JSON lines otherwise; secrets redacted everywhere."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Mapping, MutableMapping
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


class LineWriter:
    """structlog's logger: one line to `stream` per event. A line that cannot be written
    (EPIPE: the reader of stderr went away, as Coder's agent does with a script's output
    after 10 s) is dropped, and so is every later one: logging must never stop the
    delivery it reports on."""

    __slots__ = ("_broken", "_stream")

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._broken = False

    @property
    def broken(self) -> bool:
        return self._broken

    def msg(self, message: str) -> None:
        if self._broken:
            return
        try:
            self._stream.write(message + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed
            self._broken = True

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg


Tap = Callable[[Mapping[str, Any]], None]


def configure(
    level: str = "info",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
    *,
    tap: Tap | None = None,
) -> None:
    """`tap` sees every event that is logged, redacted, before it is rendered (the demo
    tells a person what the daemon does from it)."""
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
            *([_tapping(tap)] if tap is not None else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_factory(LineWriter(out)),
        cache_logger_on_first_use=False,
    )


def _tapping(tap: Tap) -> structlog.typing.Processor:
    def processor(
        _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        # Logging must never break the delivery it reports on, a listener's bug included.
        with contextlib.suppress(Exception):
            tap(event_dict)
        return event_dict

    return processor


def _factory(writer: LineWriter) -> Callable[..., LineWriter]:
    def make(*_args: Any) -> LineWriter:
        return writer

    return make

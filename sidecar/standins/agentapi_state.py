"""agentapi's `--state-file`, written and read as `lib/screentracker/pty_conversation.go`
does (agentapi ≥ 0.12.0, terminal transport only).

Writing (`SaveState`): create the directory (0700), open `<file>.tmp` (truncate, 0600),
encode `{"version": 1, "messages": [{"id", "message", "role", "time"}], "initial_prompt",
"initial_prompt_sent"}` with Go's encoder (HTML characters escaped, a trailing newline),
fsync, close, rename over the file; the temp file is removed when a step fails.

Reading (`loadStateLocked`) decodes the first JSON value the file holds (Go's
`json.Decoder`: trailing bytes are never read), ignores unknown fields, takes a missing or
null field as Go's zero value, and refuses a version other than 1. A missing file is not an
error worth telling; any other failure becomes the `agent_error` warning
"Failed to restore previous session: …" (the wording after the colon is Go's; the decoder
details here are Python's).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sidecar.standins import gojson

__all__ = [
    "RESTORE_FAILED",
    "STATE_VERSION",
    "LoadFailed",
    "StateMessage",
    "encode_state",
    "read_state",
    "temp_path",
    "write_atomically",
]

STATE_VERSION: Final = 1
RESTORE_FAILED: Final = "Failed to restore previous session: "
GO_ZERO_TIME: Final = "0001-01-01T00:00:00Z"
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})\Z"
)


@dataclass(frozen=True, slots=True)
class StateMessage:
    """One message of a state file, with the file's field names."""

    id: int
    message: str
    role: str
    time: str


@dataclass(frozen=True, slots=True)
class LoadFailed:
    """Why a state file could not be loaded; `announce` is False only for a missing file
    (agentapi logs that and stays quiet)."""

    reason: str
    announce: bool

    @property
    def warning(self) -> str:
        """The `agent_error` message agentapi emits (level `warning`)."""
        return RESTORE_FAILED + self.reason


def temp_path(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    return target.with_name(target.name + ".tmp")


def encode_state(
    messages: Sequence[StateMessage],
    *,
    initial_prompt: str = "",
    initial_prompt_sent: bool = False,
    version: int = STATE_VERSION,
) -> bytes:
    state = {
        "version": version,
        "messages": [
            {"id": m.id, "message": m.message, "role": m.role, "time": m.time} for m in messages
        ],
        "initial_prompt": initial_prompt,
        "initial_prompt_sent": initial_prompt_sent,
    }
    return gojson.encode(state, escape_html=True)


def write_atomically(path: str | os.PathLike[str], data: bytes, *, delay: float = 0.0) -> None:
    """Temp file, fsync, rename. `delay` seconds pass between writing the temp file and
    the fsync (a slow disk): a process killed meanwhile leaves `<file>.tmp` behind."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = temp_path(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if delay > 0:
                time.sleep(delay)
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def read_state(path: str | os.PathLike[str]) -> list[StateMessage] | LoadFailed:
    target = Path(path)
    if not target.exists():
        return LoadFailed("No previous state to load (file does not exist)", announce=False)
    try:
        raw = target.read_bytes()
    except OSError as exc:
        return LoadFailed(f"failed to open state file: {exc.strerror}", announce=True)
    try:
        state = _decode_first_value(raw.decode("utf-8", "replace"))
        messages = _messages(state)
    except ValueError as exc:
        return LoadFailed(
            f"failed to unmarshal state (corrupted or invalid JSON): {exc}", announce=True
        )
    version = state.get("version") if isinstance(state, dict) else None
    version = 0 if version is None else version
    if version != STATE_VERSION:
        return LoadFailed(
            f"unsupported state file version {version} (expected {STATE_VERSION})",
            announce=True,
        )
    return messages


def _decode_first_value(text: str) -> Any:
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise ValueError("EOF")
    value, _end = json.JSONDecoder().raw_decode(stripped)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"cannot unmarshal {type(value).__name__} into AgentState")
    if isinstance(value, dict) and "version" in value:
        version = value["version"]
        if version is not None and (type(version) is not int):
            raise ValueError("cannot unmarshal version into int")
    return value


def _messages(state: Any) -> list[StateMessage]:
    listed = state.get("messages") if isinstance(state, dict) else None
    if listed is None:
        return []
    if not isinstance(listed, list):
        raise ValueError("cannot unmarshal messages into []ConversationMessage")
    return [_message(item) for item in listed]


def _message(item: Any) -> StateMessage:
    if item is None:
        return StateMessage(0, "", "", GO_ZERO_TIME)
    if not isinstance(item, dict):
        raise ValueError("cannot unmarshal a message that is not an object")
    identifier = item.get("id")
    if identifier is not None and type(identifier) is not int:
        raise ValueError("cannot unmarshal id into int")
    when = _text(item, "time") or GO_ZERO_TIME
    if _RFC3339.match(when) is None:
        raise ValueError(f"parsing time {when!r} as RFC 3339")
    return StateMessage(
        id=identifier or 0, message=_text(item, "message"), role=_text(item, "role"), time=when
    )


def _text(item: dict[str, Any], name: str) -> str:
    """A string field; null or missing is Go's zero value, the empty string."""
    value = item.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"cannot unmarshal {name} into string")
    return value

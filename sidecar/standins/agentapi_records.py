"""What the agentapi stand-in holds and sends: its messages and errors, the constants it
shares with agentapi, and `/events` framing with each subscriber's buffer.

`GET /events` is Server-Sent Events: `event: <type>\\ndata: <json>\\n\\n` (Go's encoder:
`<`, `>`, `&` escaped), no `id:` lines, no keepalive comments.

Each subscriber has a bounded buffer (1,024 events, like agentapi's channel). When a new
event finds it full the subscriber is unsubscribed: it still receives what was buffered,
then the response ends — the same as the Go server closing the channel.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any, Final, Literal

from sidecar.standins import gojson

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "EVENTS_MODES",
    "MAX_STORED_ERRORS",
    "REAL_PTY_SEND_DURATION",
    "SSE_WRITE_TIMEOUT",
    "SUBSCRIBER_BUFFER",
    "TRANSPORTS",
    "VERSIONS",
    "WELCOME_SCREEN",
    "AgentError",
    "AgentMessage",
    "SaveOutcome",
    "SendRejected",
    "Subscriber",
    "sse_frame",
]

SUBSCRIBER_BUFFER: Final = 1024  # agentapi's defaultSubscriptionBufSize
MAX_STORED_ERRORS: Final = 100  # agentapi's maxStoredErrors
SSE_WRITE_TIMEOUT: Final = 5.0  # huma's sse.WriteTimeout
# A terminal send waits for the echoed input to hold still for 1 s, then for the screen
# to react to the carriage return.
REAL_PTY_SEND_DURATION: Final = 1.0
DEFAULT_ALLOWED_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]")
VERSIONS: Final = ("0.11", "0.12", "main")
TRANSPORTS: Final = ("pty", "acp")
EVENTS_MODES: Final = ("normal", "no_headers", "headers_then_silence", "endless_line")
WELCOME_SCREEN: Final = (
    "╭───────────────────────────────────────────╮\n"
    "│ ✻ Welcome to Claude Code!                 │\n"
    "│                                           │\n"
    "│   /help for help, /status for your setup  │\n"
    "╰───────────────────────────────────────────╯\n"
    "\n"
    '> Try "write a test for <filepath>"'
)

SaveOutcome = Literal["saved", "unchanged", "unsupported"]


@dataclass(frozen=True, slots=True)
class AgentMessage:
    id: int
    role: str
    content: str
    time: str

    def as_message_update(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "message": self.content, "time": self.time}


@dataclass(frozen=True, slots=True)
class AgentError:
    level: str
    message: str
    time: str

    def as_json_obj(self) -> dict[str, Any]:
        return {"message": self.message, "level": self.level, "time": self.time}


class SendRejected(Exception):
    """A `POST /message` that agentapi answers with a 500: the Go error's text."""


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame as huma's sse package writes it (Go's encoder, HTML escaped)."""
    return b"event: " + event.encode() + b"\ndata: " + gojson.encode(data, escape_html=True) + b"\n"


class Subscriber:
    """One /events client: a bounded buffer of frames not yet written to its socket."""

    __slots__ = ("_wakeup", "abort", "buffer", "closing", "limit", "stalled")

    def __init__(self, limit: int) -> None:
        self.buffer: collections.deque[tuple[bytes, bool]] = collections.deque()
        self.limit = limit
        self.closing = False  # unsubscribed: send what is buffered, then end the response
        self.abort = False  # connection dropped now, buffered frames discarded
        self.stalled = False  # a write outlived the write deadline
        self._wakeup = asyncio.Event()

    def offer(self, frame: bytes, *, counts: bool) -> bool:
        """Queue a frame; False when the buffer was full (the caller unsubscribes)."""
        if len(self.buffer) >= self.limit:
            return False
        self.buffer.append((frame, counts))
        self._wakeup.set()
        return True

    def close(self, *, abort: bool) -> None:
        self.closing = True
        self.abort = self.abort or abort
        self._wakeup.set()

    async def wait(self) -> None:
        await self._wakeup.wait()
        self._wakeup.clear()

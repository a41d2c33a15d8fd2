"""FakeAgentapi: an in-process agentapi speaking its HTTP protocol, as coder/agentapi's
source behaves (v0.11.8, v0.12.1 and the unreleased main after it).

Endpoints, bodies and the `/events` stream follow agentapi's OpenAPI document and its
server code (`lib/httpapi/server.go`, `events.go`, `lib/screentracker/`, `x/acpio/`). The
stand-in is put together from parts, each documenting what it plays:

* `agentapi_records`: messages, errors, constants, SSE framing, each subscriber's buffer;
* `agentapi_core`: the state, and the emitter that announces every change on `/events`;
* `agentapi_sends`: `POST /message` and the busy lock it holds;
* `agentapi_statefile`: restarts, and the `--state-file` loads and saves;
* `agentapi_http`: the routes, the Host check, the SSE pump, the fault knobs.

Versions and transports (`version`, `transport`):

* "0.11": `/status` has no `transport`; there are no `agent_error` events and no state
  file. A send holds the conversation's own lock, so nothing reaches `/events` until it
  ends, and the "agent is busy" check comes before the "empty message" one.
* "0.12" (v0.12.x) with transport "pty": ids are list indexes. With `message0` the
  conversation starts as agentapi's does, with message 0: an agent message, empty until
  the agent draws its first screen (`show_first_screen`). Every update of a terminal
  message also moves its `time`.
* "0.12" with transport "acp": ids come from a counter (no message 0), a prompt adds the
  user message and an empty agent placeholder that reach `/events` with the first chunk,
  a failed prompt removes the placeholder without an event, updates keep the time, and
  there is no state file.
* "main": as "0.12", but `/status` (and `status_change`) stays `running` until the agent
  is ready (`agent_ready()`).

Mutators are plain synchronous methods; call them on the event loop's thread (from a
test, a benchmark, or a handler). Knobs are public attributes that can be flipped at any
time: `events_available`, `fail_requests`, `drop_every_k`, `allowed_hosts`, `events_mode`,
`hang_paths` (see `agentapi_http`), `deliver_live` (see `agentapi_core`), `send_duration`
(see `agentapi_sends`) and `sse_write_timeout`.

`FakeAgentapi.real()` builds the fake with agentapi's own defaults (message 0 holding a
welcome screen, sends that take as long as agentapi's); the plain constructor keeps the
simpler conversation most tests start from (no message 0, instant sends).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sidecar.standins.agentapi_http import AgentapiHttp
from sidecar.standins.agentapi_records import (
    DEFAULT_ALLOWED_HOSTS,
    EVENTS_MODES,
    MAX_STORED_ERRORS,
    REAL_PTY_SEND_DURATION,
    SSE_WRITE_TIMEOUT,
    SUBSCRIBER_BUFFER,
    TRANSPORTS,
    VERSIONS,
    WELCOME_SCREEN,
    AgentError,
    AgentMessage,
    SaveOutcome,
    SendRejected,
    sse_frame,
)
from sidecar.standins.agentapi_statefile import AgentapiStateFile
from sidecar.standins.server import rfc3339

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
    "FakeAgentapi",
    "SaveOutcome",
    "SendRejected",
    "sse_frame",
]


class FakeAgentapi(AgentapiHttp, AgentapiStateFile):
    """An agentapi server: conversation state, mutators, fault knobs, request counters."""

    @classmethod
    def real(
        cls,
        *,
        version: str = "0.12",
        transport: str = "pty",
        screen: str | None = WELCOME_SCREEN,
        **kwargs: Any,
    ) -> FakeAgentapi:
        """agentapi as it runs: a terminal conversation starts with message 0 showing
        `screen` (None: message 0 still empty, the agent not ready, status `running`), a
        terminal send holds the busy lock for a second, an ACP one for the whole turn
        (until `release_send()`)."""
        pty = transport == "pty"
        kwargs.setdefault("send_duration", REAL_PTY_SEND_DURATION if pty else None)
        if pty and screen is None:
            kwargs.setdefault("ready", False)
            kwargs.setdefault("status", "running")
        fake = cls(version=version, transport=transport, message0=pty, **kwargs)
        if pty and screen is not None:
            fake.show_first_screen(screen)
        return fake

    # --- mutators --------------------------------------------------------------------

    def add_message(
        self,
        role: str,
        content: str,
        *,
        time: datetime | None = None,
        raw_time: str | None = None,
    ) -> int:
        """Append a message (any role, so tests can inject invalid ones); returns its id.
        `raw_time` is sent as it is (a time no datetime can hold, e.g. February 30)."""
        message = AgentMessage(
            id=self._new_id(),
            role=role,
            content=content,
            time=raw_time if raw_time is not None else rfc3339(time or self._now()),
        )
        self._messages.append(message)
        self._changed(len(self._messages) - 1)
        return message.id

    def update_last(self, content: str, *, raw_time: str | None = None) -> None:
        """Update the newest message in place (same id), as agentapi does while the agent
        streams; a terminal update also moves its time (to `raw_time` if given, a time
        agentapi never writes). Like agentapi, an unchanged message emits nothing."""
        if not self._messages:
            raise ValueError("update_last: the conversation is empty")
        self._rewrite_index(len(self._messages) - 1, content, raw_time)

    def rewrite(self, message_id: int, content: str) -> None:
        """Rewrite an earlier message (screen diffing, coder/agentapi#205): announced
        with a `message_update` for that id; a terminal rewrite also moves its time."""
        for index, message in enumerate(self._messages):
            if message.id == message_id:
                self._rewrite_index(index, content)
                return
        raise KeyError(f"rewrite: no message {message_id}")

    def remove_messages(self, *message_ids: int) -> None:
        """Remove messages without an event, as agentapi's emitter never announces a
        removal: only a replay or `/messages` shows it. (A removal before other messages
        shifts them, and agentapi's index-by-index diff then announces those.)"""
        doomed = set(message_ids)
        missing = doomed - {m.id for m in self._messages}
        if missing:
            raise KeyError(f"remove_messages: no message {sorted(missing)}")
        first = next(i for i, m in enumerate(self._messages) if m.id in doomed)
        self._messages = [m for m in self._messages if m.id not in doomed]
        self._changed(first)

    def show_first_screen(self, screen: str = WELCOME_SCREEN) -> None:
        """The agent draws its first screen: message 0 (empty until now) becomes it."""
        if not self.message0 or [(m.id, m.content) for m in self._messages] != [(0, "")]:
            raise ValueError("show_first_screen: the conversation is not an empty message 0 alone")
        self._rewrite_index(0, screen)

    def inject_raw(self, data: bytes) -> None:
        """Send arbitrary bytes to every current subscriber (malformed-frame tests)."""
        self._broadcast(data, counts=False)

"""FakeAgentapi: an in-process agentapi speaking its HTTP protocol, as coder/agentapi's
source behaves (v0.11.8, v0.12.1 and the unreleased main after it).

Endpoints, bodies and the `/events` stream follow agentapi's OpenAPI document and its
server code (`lib/httpapi/server.go`, `events.go`, `lib/screentracker/`, `x/acpio/`):

* `GET /status`, `GET /messages`, `POST /message` answer JSON bodies carrying huma's
  `$schema` link, ended by a newline (huma's encoder); errors are
  `application/problem+json` (huma's ErrorModel). A failed send is huma's answer to a plain
  Go error: 500, detail "unexpected error occurred", the error in `errors[0].message`.
* Every request first passes agentapi's Host check: the Host header's name (port ignored)
  must be one of `allowed_hosts`, else 400 `text/plain` "Invalid host header. Allowed
  hosts: …" (Go's `http.Error`). The default is agentapi's: localhost, 127.0.0.1, [::1].
* `GET /events` is Server-Sent Events: `event: <type>\\ndata: <json>\\n\\n` (Go's encoder:
  `<`, `>`, `&` escaped), no `id:` lines, no keepalive comments. On connect it replays, in
  agentapi's order (`EventEmitter.currentStateAsEvents`): one `message_update` per message
  the emitter holds, one `status_change`, then the stored `agent_error` events (at most
  100, oldest first). Then live events follow.
* Each subscriber has a bounded buffer (1,024 events, like agentapi's channel). When a
  new event finds it full the subscriber is unsubscribed: it still receives what was
  buffered, then the response ends — the same as the Go server closing the channel. A
  subscriber whose socket write stalls for `sse_write_timeout` seconds (huma's 5 s write
  deadline) is dropped and its connection aborted.

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

The busy lock (`POST /message` type `user`): the send holds the server's lock for
`send_duration` seconds (None: until `release_send()`); `GET /status` and `GET /messages`
wait on it, `/events` keeps flowing (except in 0.11). A terminal send turns the status
`running` at once and adds the user message (timed at the send's start) when it ends; an
ACP send is the whole turn: `running` until it ends, then `stable`. `begin_send()` plays
the same send without an HTTP client. A slow state save (`save_state(delay=…)`) holds the
conversation's lock, on which `/status` and `/messages` wait too.

Mutators are plain synchronous methods; call them on the event loop's thread (from a
test, a benchmark, or a handler). Every mutation goes through the emitter as agentapi's
does (`EmitMessages` compares the list index by index): a changed or new index is
announced with a `message_update`, a removed one never is; the replay shows the emitter's
list, `/messages` the conversation's. Knobs are public attributes that can be flipped at
any time: `events_available`, `fail_requests`, `drop_every_k`, `allowed_hosts`,
`send_duration`, `sse_write_timeout`, and for a misbehaving agentapi:

* `events_mode` (read when a `/events` request arrives): "normal"; "no_headers" (the
  request is held, no response starts); "headers_then_silence" (headers, then nothing at
  all, not even the replay); "endless_line" (the replay, then a `data:` line that never
  ends, written as fast as the client reads). None of the three subscribes to events or
  counts in `stream_connects`; `requests["/events"]` counts every request.
* `hang_paths`: requests to these paths are held without an answer until
  `release_hung()` (or until the client gives up); then they are answered normally.
* `deliver_live`: False stops live events from reaching open streams (a subscriber
  stuck inside agentapi); the replay of a new stream still carries the whole state.

`FakeAgentapi.real()` builds the fake with agentapi's own defaults (message 0 holding a
welcome screen, sends that take as long as agentapi's); the plain constructor keeps the
simpler conversation most tests start from (no message 0, instant sends).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal

from aiohttp import web

from tests.fakes import gojson
from tests.fakes.agentapi_state import (
    RESTORE_FAILED,
    LoadFailed,
    StateMessage,
    encode_state,
    read_state,
    write_atomically,
)
from tests.fakes.server import Notifier, rfc3339, utc_now

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "EVENTS_MODES",
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

SUBSCRIBER_BUFFER: Final = 1024  # agentapi's defaultSubscriptionBufSize
MAX_STORED_ERRORS: Final = 100  # agentapi's maxStoredErrors
SSE_WRITE_TIMEOUT: Final = 5.0  # huma's sse.WriteTimeout
# A terminal send waits for the echoed input to hold still for 1 s, then for the screen
# to react to the carriage return.
REAL_PTY_SEND_DURATION: Final = 1.0
DEFAULT_ALLOWED_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]")
VERSIONS: Final = ("0.11", "0.12", "main")
TRANSPORTS: Final = ("pty", "acp")
WELCOME_SCREEN: Final = (
    "╭───────────────────────────────────────────╮\n"
    "│ ✻ Welcome to Claude Code!                 │\n"
    "│                                           │\n"
    "│   /help for help, /status for your setup  │\n"
    "╰───────────────────────────────────────────╯\n"
    "\n"
    '> Try "write a test for <filepath>"'
)
_WHITESPACE: Final = " \t\n\r\f\v"  # msgfmt.WhiteSpaceChars
_MAX_WRITE_BATCH: Final = 64  # frames per socket write; keeps the buffer semantics close
EVENTS_MODES: Final = ("normal", "no_headers", "headers_then_silence", "endless_line")
_ENDLESS_PIECE: Final = b"x" * 65536
_CHANGING: Final = "message can only be sent when the agent is waiting for user input"
_EMPTY: Final = "message must not be empty"
_PTY_TIMEOUT: Final = "failed to wait for processing to start: timeout waiting for condition"

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


class _Subscriber:
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


class FakeAgentapi:
    """An agentapi server: conversation state, mutators, fault knobs, request counters."""

    def __init__(
        self,
        *,
        agent_type: str = "claude",
        transport: str = "pty",
        status: str = "stable",
        subscriber_buffer: int = SUBSCRIBER_BUFFER,
        now: Callable[[], datetime] = utc_now,
        version: str = "0.12",
        message0: bool = False,
        ready: bool = True,
        allowed_hosts: Iterable[str] = DEFAULT_ALLOWED_HOSTS,
        send_duration: float | None = 0.0,
        sse_write_timeout: float = SSE_WRITE_TIMEOUT,
    ) -> None:
        """`version`: "0.11", "0.12" or "main"; `transport`: "pty" or "acp" (0.12 on).
        `message0`: a terminal conversation that starts with agentapi's message 0.
        `ready`: the agent has shown its input prompt (only "main" reports it).
        `allowed_hosts`: agentapi's --allowed-hosts ("*" lets every Host in).
        `send_duration`: seconds a user message holds the busy lock (None: until
        `release_send()`). `sse_write_timeout`: how long one SSE write may stall."""
        if version not in VERSIONS:
            raise ValueError(f"version {version!r} is not one of {VERSIONS}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of {TRANSPORTS}")
        if transport == "acp" and (version == "0.11" or message0):
            raise ValueError("the ACP transport came with 0.12 and has no message 0")
        self.agent_type = agent_type
        self.transport = transport
        self.version = version
        self.message0 = message0
        self._now = now
        self._status = status
        self._ready = asyncio.Event()  # the agent has shown its input prompt
        if ready:
            self._ready.set()
        self._messages: list[AgentMessage] = self._fresh_conversation()
        self._next_id = 0  # ACP's message counter
        self._errors: collections.deque[AgentError] = collections.deque(maxlen=MAX_STORED_ERRORS)
        # the emitter's own copy: what the replay shows and live events are diffed against
        self._emitted: list[AgentMessage] = list(self._messages)
        self._emitted_status = self._reported_status()
        self._emitter_paused = False
        self._changes = 0  # every conversation change; a save records the count it wrote
        self._saved_changes = 0
        self._subscribers: dict[_Subscriber, None] = {}  # insertion-ordered set
        self._subscriber_buffer = subscriber_buffer
        self._notifier = Notifier()
        # the server's lock (POST /message) and the conversation's (a state save; in 0.11
        # also a send): /status and /messages wait on both
        self._server_lock = asyncio.Lock()
        self._conversation_lock = asyncio.Lock()
        self._send_task: asyncio.Task[None] | None = None
        self._send_release: asyncio.Future[str | None] | None = None
        self._prompting = False
        # knobs
        self.events_available = True
        self.fail_requests = False
        self.drop_every_k: int | None = None
        self.events_mode = "normal"
        self.hang_paths: set[str] = set()
        self.deliver_live = True
        self.allowed_hosts: tuple[str, ...] = tuple(allowed_hosts)
        self.send_duration = send_duration
        self.sse_write_timeout = sse_write_timeout
        self._release = asyncio.Event()
        # counters
        self.requests: collections.Counter[str] = collections.Counter()
        self.stream_connects = 0
        self.stalled_drops = 0  # subscribers dropped for a stalled write
        self.endless_bytes = 0  # bytes of endless `data:` lines written so far
        self.app = self._build_app()

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

    # --- state -----------------------------------------------------------------------

    @property
    def messages(self) -> tuple[AgentMessage, ...]:
        """The conversation as `GET /messages` shows it."""
        return tuple(self._messages)

    @property
    def announced(self) -> tuple[AgentMessage, ...]:
        """The emitter's list: what a new `/events` stream replays."""
        return tuple(self._emitted)

    @property
    def status(self) -> str:
        """The status as `GET /status` reports it."""
        return self._reported_status()

    @property
    def errors(self) -> tuple[AgentError, ...]:
        return tuple(self._errors)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def busy(self) -> bool:
        """A send (or a save) holds a lock that `/status` and `/messages` wait on."""
        return self._server_lock.locked() or self._conversation_lock.locked()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def dirty(self) -> bool:
        """Something changed since the last save (agentapi's `dirty`)."""
        return self._changes != self._saved_changes

    @property
    def has_state_file(self) -> bool:
        return self.version != "0.11" and self.transport == "pty"

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

    def set_status(self, status: str) -> None:
        """Set `running`/`stable` (anything else is served as is, for invalid-input tests);
        like agentapi, only a change emits `status_change`."""
        self._status = status
        self._sync_status()

    def add_error(self, level: str, message: str) -> None:
        """Store and emit an `agent_error`. agentapi itself only ever emits the warning
        `restore_failed()` plays; `error` is for tests of what a client makes of one."""
        if self.version == "0.11":
            raise ValueError("agentapi 0.11 has no agent_error events")
        error = AgentError(level=level, message=message, time=rfc3339(self._now()))
        self._errors.append(error)
        self._publish("agent_error", error.as_json_obj())

    def restore_failed(self, reason: str = "failed to open state file: permission denied") -> None:
        """The one `agent_error` agentapi emits: a state file it could not load."""
        self.add_error("warning", RESTORE_FAILED + reason)

    def restart(
        self,
        messages: Iterable[tuple[str, str]] = (),
        *,
        status: str = "stable",
        ready: bool = True,
    ) -> None:
        """Simulate an agentapi restart: every open stream cut without a clean end, no
        stored errors, a send in flight dropped, and a new history with ids from 0 —
        `messages` if given, else what a new agentapi holds (message 0 alone, or
        nothing). `ready=False` plays the agent still starting (see `agent_ready`)."""
        if self._send_task is not None:
            self._send_task.cancel()
        now = rfc3339(self._now())
        given = [
            AgentMessage(id=i, role=role, content=content, time=now)
            for i, (role, content) in enumerate(messages)
        ]
        self._messages = given or self._fresh_conversation()
        self._next_id = len(self._messages)
        self._errors.clear()
        self._status = status
        self._set_ready(ready)
        self._prompting = False
        self._changes = self._saved_changes = 0
        self.drop_streams(abort=True)
        self._emitted = list(self._messages)
        self._emitted_status = self._reported_status()

    def agent_ready(self, state: str | os.PathLike[str] | None = None) -> bool:
        """The agent shows its input prompt: agentapi now loads `state` (its state file)
        once, as `load_state` does, and "main" stops reporting `running` for it. Returns
        whether a state was loaded."""
        self._set_ready(True)
        loaded = self.load_state(state) if state is not None else False
        self._sync_status()
        return loaded

    def load_state(
        self, source: str | os.PathLike[str] | Sequence[AgentMessage | StateMessage]
    ) -> bool:
        """agentapi loading its state file: the whole conversation is replaced and every
        loaded message is announced (`message_update` each; Go's times never compare
        equal, so the emitter sees each one change); nothing is announced for messages the
        shorter list no longer has. A missing file changes nothing; an unreadable one
        emits the `restore_failed` warning. `source` may be the messages themselves."""
        if not self.has_state_file:
            raise ValueError("this agentapi has no state file")
        if isinstance(source, (str, os.PathLike)):
            loaded = read_state(source)
            if isinstance(loaded, LoadFailed):
                if loaded.announce:
                    self.restore_failed(loaded.reason)
                return False
            source = loaded
        self._messages = [_as_agent_message(m) for m in source]
        self._changes += 1
        self._saved_changes = self._changes  # agentapi clears its dirty flag on a load
        self._sync_messages(0, force=True)
        return True

    def drop_streams(self, *, abort: bool = True) -> None:
        """Cut every open /events stream. `abort=True` closes the connection (the client
        sees an incomplete response); False ends each response cleanly."""
        for sub in list(self._subscribers):
            sub.close(abort=abort)
            self._unsubscribe(sub)

    def inject_raw(self, data: bytes) -> None:
        """Send arbitrary bytes to every current subscriber (malformed-frame tests)."""
        self._broadcast(data, counts=False)

    # --- sends -------------------------------------------------------------------------

    def begin_send(self, content: str) -> asyncio.Task[None]:
        """Play `POST /message` (type user) without an HTTP client: the returned task
        ends when agentapi would answer, raising SendRejected for a 500."""
        task = asyncio.get_running_loop().create_task(self._send(content))
        self._send_task = task
        task.add_done_callback(self._send_done)
        return task

    def release_send(self, error: str | None = None) -> None:
        """End the send holding the busy lock now: it succeeds, or with `error` it fails
        (the terminal never reacted; the ACP prompt failed)."""
        if self._send_release is None or self._send_release.done():
            raise RuntimeError("release_send: no send is holding the lock")
        self._send_release.set_result(error)

    async def wait_for_send(self, timeout: float = 5.0) -> None:
        """Wait until a send holds the busy lock."""
        await self.wait_for(
            lambda: self._send_release is not None and not self._send_release.done(), timeout
        )

    # --- the state file ----------------------------------------------------------------

    def write_state_file(
        self,
        path: str | os.PathLike[str],
        *,
        version: int = 1,
        initial_prompt: str = "",
        initial_prompt_sent: bool = False,
    ) -> None:
        """Write agentapi's --state-file as agentapi does (temp file, fsync, rename),
        changed or not; `save_state` applies agentapi's rule for when it writes."""
        if not self.has_state_file:
            raise ValueError("this agentapi has no state file")
        data = encode_state(
            self._state_messages(),
            version=version,
            initial_prompt=initial_prompt,
            initial_prompt_sent=initial_prompt_sent,
        )
        write_atomically(path, data)

    async def save_state(self, path: str | os.PathLike[str], *, delay: float = 0.0) -> SaveOutcome:
        """agentapi's SaveState: written only when something changed since the last save
        (and never without a terminal state file). The write holds the conversation's
        lock — `/status` and `/messages` wait — and takes `delay` more seconds before its
        fsync; the event loop keeps serving meanwhile."""
        if not self.has_state_file:
            return "unsupported"
        async with self._conversation_lock:
            self._notifier.notify()
            if not self.dirty:
                return "unchanged"
            changes, data = self._changes, encode_state(self._state_messages())
            await asyncio.to_thread(write_atomically, path, data, delay=delay)
            self._saved_changes = changes
        self._notifier.notify()
        return "saved"

    # --- waiting ---------------------------------------------------------------------

    def release_hung(self) -> None:
        """Let every request held by `hang_paths` or `events_mode` go on."""
        self._release.set()
        self._release = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds; re-checked on every request, every subscriber
        change and every lock change. Raises TimeoutError naming the request counts."""
        await self._notifier.wait_for(
            predicate,
            timeout,
            lambda: f"requests={dict(self.requests)} subscribers={self.subscriber_count}",
        )

    async def wait_for_subscribers(self, count: int = 1, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self.subscriber_count >= count, timeout)

    # --- the conversation and its emitter ---------------------------------------------

    def _fresh_conversation(self) -> list[AgentMessage]:
        if not self.message0:
            return []
        return [AgentMessage(id=0, role="agent", content="", time=rfc3339(self._now()))]

    def _set_ready(self, ready: bool) -> None:
        if ready:
            self._ready.set()
        else:
            self._ready.clear()
        self._notifier.notify()

    def _new_id(self) -> int:
        if self.transport == "pty":
            return len(self._messages)
        self._next_id += 1
        return self._next_id - 1

    def _rewrite_index(self, index: int, content: str, raw_time: str | None = None) -> None:
        current = self._messages[index]
        if current.content == content:
            return
        moved = current.time
        if self.transport == "pty":
            moved = raw_time if raw_time is not None else rfc3339(self._now())
        self._messages[index] = replace(current, content=content, time=moved)
        self._changed(index)

    def _changed(self, first_index: int) -> None:
        self._changes += 1
        self._sync_messages(first_index)

    def _state_messages(self) -> list[StateMessage]:
        return [StateMessage(m.id, m.content, m.role, m.time) for m in self._messages]

    def _reported_status(self) -> str:
        if self.version == "main" and not self._ready.is_set():
            return "running"
        return self._status

    def _sync_messages(self, first_index: int, *, force: bool = False) -> None:
        """agentapi's EmitMessages from `first_index` on (earlier ones are unchanged)."""
        if self._emitter_paused:
            return
        emitted, current = self._emitted, self._messages
        for index in range(min(first_index, len(emitted)), len(current)):
            message = current[index]
            if index < len(emitted):
                if emitted[index] == message and not force:
                    continue
                emitted[index] = message
            else:
                emitted.append(message)
            self._publish("message_update", message.as_message_update())
        del emitted[len(current) :]

    def _sync_status(self) -> None:
        if self._emitter_paused:
            return
        reported = self._reported_status()
        if reported != self._emitted_status:
            self._emitted_status = reported
            self._publish("status_change", self._status_change_body())

    def _status_change_body(self) -> dict[str, Any]:
        return {"status": self._emitted_status, "agent_type": self.agent_type}

    async def _send(self, content: str) -> None:
        async with self._server_lock:
            self._notifier.notify()
            if self.version == "0.11":
                # 0.11's SendMessage holds the conversation's lock throughout, which also
                # stops its snapshot loop: /events falls silent until the send ends.
                async with self._conversation_lock:
                    self._emitter_paused = True
                    try:
                        await self._send_locked(content)
                    finally:
                        self._emitter_paused = False
                        self._sync_messages(0)
                        self._sync_status()
            else:
                await self._send_locked(content)

    async def _send_locked(self, content: str) -> None:
        text = content.strip(_WHITESPACE)  # httpapi.FormatMessage trims before Send
        if self.version == "0.11" and self._reported_status() != "stable":
            raise SendRejected(_CHANGING)
        if not text:
            raise SendRejected(_EMPTY)
        if self.transport == "acp":
            await self._prompt(text)
            return
        if self._reported_status() != "stable":
            raise SendRejected(_CHANGING)
        if self.version != "0.11":
            # The send loop waits for the agent's input prompt; before it, a send that got
            # past the status check (v0.12.1 reports `stable` then) waits, holding the lock.
            await self._ready.wait()
        started = rfc3339(self._now())
        self.set_status("running")
        error = await self._hold()
        if error is not None:
            self.set_status("stable")
            raise SendRejected(error)
        self._messages.append(AgentMessage(self._new_id(), "user", text, started))
        self._changed(len(self._messages) - 1)

    async def _prompt(self, text: str) -> None:
        if self._prompting:
            raise SendRejected(_CHANGING)
        started = rfc3339(self._now())
        # Both reach /events with the first chunk of the reply, not now.
        self._messages.append(AgentMessage(self._new_id(), "user", text, started))
        self._messages.append(AgentMessage(self._new_id(), "agent", "", started))
        self._changes += 1
        self._prompting = True
        self.set_status("running")
        try:
            error = await self._hold()
        finally:
            self._prompting = False
        if error is not None and self._messages and self._messages[-1].role == "agent":
            self._messages.pop()  # the placeholder goes, unannounced
        self._sync_messages(0)
        self.set_status("stable")
        if error is not None:
            raise SendRejected(error)

    async def _hold(self) -> str | None:
        """The send's own time: `send_duration`, or until `release_send()`. Returns the
        error it ended with, if any."""
        release: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._send_release = release
        self._notifier.notify()
        try:
            if self.send_duration is None:
                return await release
            try:
                return await asyncio.wait_for(asyncio.shield(release), self.send_duration)
            except TimeoutError:
                return None
        finally:
            self._send_release = None

    def _send_done(self, task: asyncio.Task[None]) -> None:
        if self._send_task is task:
            self._send_task = None
        if not task.cancelled():
            task.exception()  # retrieved: a test that awaits the task still gets it
        self._notifier.notify()

    # --- event fan-out ---------------------------------------------------------------

    def _publish(self, event: str, data: dict[str, Any]) -> None:
        if self._subscribers and self.deliver_live:
            self._broadcast(sse_frame(event, data), counts=True)

    def _broadcast(self, frame: bytes, *, counts: bool) -> None:
        for sub in list(self._subscribers):
            if not sub.offer(frame, counts=counts):
                # agentapi closes a full channel; the reader still drains what it holds
                sub.close(abort=False)
                self._unsubscribe(sub)

    def _unsubscribe(self, sub: _Subscriber) -> None:
        if self._subscribers.pop(sub, None) is not None:
            self._notifier.notify()

    def _replay(self) -> bytes:
        frames = [sse_frame("message_update", m.as_message_update()) for m in self._emitted]
        frames.append(sse_frame("status_change", self._status_change_body()))
        frames.extend(sse_frame("agent_error", e.as_json_obj()) for e in self._errors)
        return b"".join(frames)

    # --- HTTP ------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/status", self._get_status)
        app.router.add_get("/messages", self._get_messages)
        app.router.add_post("/message", self._post_message)
        app.router.add_get("/events", self._get_events)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        # The process is going away: streams end without a clean terminating chunk.
        self.drop_streams(abort=True)
        self.release_hung()
        if self._send_task is not None:
            self._send_task.cancel()

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        self.requests[request.path] += 1
        self._notifier.notify()
        if not self._host_allowed(request.headers.get("Host", "")):
            return _bad_host(self._allowed_names())
        if request.path in self.hang_paths:
            await self._release.wait()
        if self.fail_requests:
            return _problem(request, 500, "injected failure (fail_requests)")
        response: web.StreamResponse = await handler(request)
        return response

    def _allowed_names(self) -> list[str]:
        """--allowed-hosts as agentapi keeps them: "*" alone, or each one's hostname."""
        if "*" in self.allowed_hosts:
            return ["*"]
        return [urllib.parse.urlsplit("http://" + h).hostname or h for h in self.allowed_hosts]

    def _host_allowed(self, host: str) -> bool:
        names = self._allowed_names()
        if names == ["*"]:
            return True
        if not host:
            return False
        try:
            parts = urllib.parse.urlsplit("http://" + host)
            _ = parts.port  # Go's url.Parse refuses a bad port; so does this
        except ValueError:
            return False
        return (parts.hostname or "") in {n.lower() for n in names}

    async def _wait_unlocked(self) -> None:
        """getStatus / getMessages: the server's read lock, then the conversation's."""
        async with self._server_lock, self._conversation_lock:
            pass

    async def _get_status(self, request: web.Request) -> web.Response:
        await self._wait_unlocked()
        body = {
            "$schema": _schema_link(request, "StatusResponseBody"),
            "status": self._reported_status(),
            "agent_type": self.agent_type,
        }
        if self.version != "0.11":
            body["transport"] = self.transport
        return _json(body)

    async def _get_messages(self, request: web.Request) -> web.Response:
        await self._wait_unlocked()
        body = {
            "$schema": _schema_link(request, "MessagesResponseBody"),
            "messages": [
                {"id": m.id, "content": m.content, "role": m.role, "time": m.time}
                for m in self._messages
            ],
        }
        return _json(body)

    async def _post_message(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _problem(request, 422, "validation failed", f"body is not JSON: {exc}")
        problem = _validate_message_request(body)
        if problem is not None:
            return _problem(request, 422, "validation failed", problem)
        if body["type"] == "user":
            # The send goes on if the client gives up, as agentapi's does.
            task = self.begin_send(body["content"])
            try:
                await asyncio.shield(task)
            except SendRejected as exc:
                return _send_failed(request, str(exc))
        else:
            async with self._server_lock:
                pass  # raw keystrokes go to the terminal under the same lock
        return _json({"$schema": _schema_link(request, "MessageResponseBody"), "ok": True})

    async def _get_events(self, request: web.Request) -> web.StreamResponse:
        if not self.events_available:
            # an agentapi without /events: Go's mux answers a plain-text 404
            return web.Response(status=404, text="404 page not found\n")
        if self.events_mode != "normal":
            return await self._misbehave(request, self.events_mode)
        # Subscribe and snapshot the replay in one synchronous step, as agentapi does
        # under its lock: no event can fall between the replay and the live stream.
        replay = self._replay()
        sub = _Subscriber(self._subscriber_buffer)
        self._subscribers[sub] = None
        self.stream_connects += 1
        self._notifier.notify()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            if await self._write(sub, response, replay):
                await self._pump(sub, response)
        finally:
            self._unsubscribe(sub)
        if request.transport is not None:
            if sub.stalled:
                self.stalled_drops += 1
                request.transport.abort()
            elif sub.abort:
                request.transport.close()
        return response

    async def _misbehave(self, request: web.Request, mode: str) -> web.StreamResponse:
        if mode not in EVENTS_MODES:
            raise ValueError(f"events_mode {mode!r} is not one of {EVENTS_MODES}")
        if mode == "no_headers":
            await self._release.wait()
            return await self._get_events(request)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if mode == "headers_then_silence":
            await self._release.wait()
            return response
        await response.write(self._replay() + b"event: message_update\ndata: ")
        # The client's reading paces the writes: memory here stays one piece.
        try:
            while True:
                await response.write(_ENDLESS_PIECE)
                self.endless_bytes += len(_ENDLESS_PIECE)
        except ConnectionError:
            return response  # the client gave up on the line, as it should

    async def _write(self, sub: _Subscriber, response: web.StreamResponse, data: bytes) -> bool:
        """One write under huma's write deadline; False when it stalled past it."""
        try:
            async with asyncio.timeout(self.sse_write_timeout):
                await response.write(data)
        except TimeoutError:
            sub.stalled = True
            return False
        return True

    async def _pump(self, sub: _Subscriber, response: web.StreamResponse) -> None:
        live = 0
        while not sub.abort:
            if sub.buffer:
                batch: list[bytes] = []
                limit = self.drop_every_k
                while sub.buffer and len(batch) < _MAX_WRITE_BATCH:
                    frame, counts = sub.buffer.popleft()
                    batch.append(frame)
                    live += counts
                    if limit is not None and live >= limit:
                        break
                if not await self._write(sub, response, b"".join(batch)):
                    return
                if limit is not None and live >= limit:
                    return
                continue
            if sub.closing:
                return
            await sub.wait()


def _as_agent_message(message: AgentMessage | StateMessage) -> AgentMessage:
    if isinstance(message, AgentMessage):
        return message
    return AgentMessage(message.id, message.role, message.message, message.time)


def _validate_message_request(body: object) -> str | None:
    """MessageRequestBody as huma validates it (additionalProperties: false)."""
    if not isinstance(body, dict):
        return "body must be an object"
    extra = set(body) - {"$schema", "content", "type"}
    if extra:
        return f"unexpected properties: {sorted(extra)}"
    if not isinstance(body.get("content"), str):
        return "content is required and must be a string"
    if body.get("type") not in ("user", "raw"):
        return "type must be one of user, raw"
    return None


def _schema_link(request: web.Request, name: str) -> str:
    return f"{request.scheme}://{request.host}/schemas/{name}.json"


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    # huma's JSON format: Go's encoder with HTML escaping off
    return web.Response(
        status=status,
        body=gojson.encode(body, escape_html=False),
        content_type="application/json",
    )


def _bad_host(allowed: Sequence[str]) -> web.Response:
    """Go's http.Error(w, "Invalid host header. Allowed hosts: …", 400)."""
    return web.Response(
        status=400,
        body=f"Invalid host header. Allowed hosts: {', '.join(allowed)}\n".encode(),
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "X-Content-Type-Options": "nosniff",
        },
    )


_TITLES: Final = {404: "Not Found", 422: "Unprocessable Entity", 500: "Internal Server Error"}


def _problem(
    request: web.Request, status: int, detail: str, error: str | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "$schema": _schema_link(request, "ErrorModel"),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if error is not None:
        body["errors"] = [{"message": error, "location": "body"}]
    response = _json(body, status)
    response.content_type = "application/problem+json"
    return response


def _send_failed(request: web.Request, error: str) -> web.Response:
    """huma's answer to the plain Go error createMessage returns."""
    body = {
        "$schema": _schema_link(request, "ErrorModel"),
        "title": _TITLES[500],
        "status": 500,
        "detail": "unexpected error occurred",
        "errors": [{"message": f"failed to send message: {error}"}],
    }
    response = _json(body, 500)
    response.content_type = "application/problem+json"
    return response

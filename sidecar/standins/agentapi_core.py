"""What every part of the agentapi stand-in shares: its state, its knobs and counters, and
agentapi's event emitter over the conversation (`lib/httpapi/events.go`).

Every mutation goes through the emitter as agentapi's does (`EmitMessages` compares the
list index by index): a changed or new index is announced with a `message_update`, a
removed one never is; the replay shows the emitter's list, `/messages` the conversation's.
On connect a stream replays, in agentapi's order (`EventEmitter.currentStateAsEvents`):
one `message_update` per message the emitter holds, one `status_change`, then the stored
`agent_error` events (at most 100, oldest first). Then live events follow.

`deliver_live` False stops live events from reaching open streams (a subscriber stuck
inside agentapi); the replay of a new stream still carries the whole state.

The sends (`agentapi_sends`), the state file (`agentapi_statefile`) and the HTTP face
(`agentapi_http`) build on this class; `agentapi.FakeAgentapi` puts them together.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from aiohttp import web

from sidecar.standins.agentapi_records import (
    DEFAULT_ALLOWED_HOSTS,
    MAX_STORED_ERRORS,
    SSE_WRITE_TIMEOUT,
    SUBSCRIBER_BUFFER,
    TRANSPORTS,
    VERSIONS,
    AgentError,
    AgentMessage,
    Subscriber,
    sse_frame,
)
from sidecar.standins.server import Notifier, rfc3339, utc_now

__all__ = ["AgentapiCore"]


class AgentapiCore:
    """An agentapi server's state and emitter; the other parts of the stand-in add its
    sends, its state file and its HTTP face."""

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
        self._subscribers: dict[Subscriber, None] = {}  # insertion-ordered set
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

    def _build_app(self) -> web.Application:
        """The HTTP face, built once by the constructor; `agentapi_http` provides it."""
        raise NotImplementedError

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

    # --- status and errors -------------------------------------------------------------

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

    def drop_streams(self, *, abort: bool = True) -> None:
        """Cut every open /events stream. `abort=True` closes the connection (the client
        sees an incomplete response); False ends each response cleanly."""
        for sub in list(self._subscribers):
            sub.close(abort=abort)
            self._unsubscribe(sub)

    # --- waiting ---------------------------------------------------------------------

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

    def _unsubscribe(self, sub: Subscriber) -> None:
        if self._subscribers.pop(sub, None) is not None:
            self._notifier.notify()

    def _replay(self) -> bytes:
        frames = [sse_frame("message_update", m.as_message_update()) for m in self._emitted]
        frames.append(sse_frame("status_change", self._status_change_body()))
        frames.extend(sse_frame("agent_error", e.as_json_obj()) for e in self._errors)
        return b"".join(frames)

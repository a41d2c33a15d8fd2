"""The agentapi stand-in's sends: `POST /message` type `user` and the busy lock it holds.

The send holds the server's lock for `send_duration` seconds (None: until
`release_send()`); `GET /status` and `GET /messages` wait on it, `/events` keeps flowing
(except in 0.11). A terminal send turns the status `running` at once and adds the user
message (timed at the send's start) when it ends; an ACP send is the whole turn: `running`
until it ends, then `stable`. `begin_send()` plays the same send without an HTTP client.

Per version and transport:

* "0.11": a send holds the conversation's own lock, so nothing reaches `/events` until it
  ends, and the "agent is busy" check comes before the "empty message" one.
* "0.12" and "main" with transport "pty": the send waits for the agent's input prompt.
* transport "acp": a prompt adds the user message and an empty agent placeholder that
  reach `/events` with the first chunk, a failed prompt removes the placeholder without
  an event.

A failed send raises `SendRejected` with the Go error's text (the HTTP face answers 500).
"""

from __future__ import annotations

import asyncio
from typing import Final

from sidecar.standins.agentapi_core import AgentapiCore
from sidecar.standins.agentapi_records import AgentMessage, SendRejected
from sidecar.standins.server import rfc3339

__all__ = ["AgentapiSends"]

_WHITESPACE: Final = " \t\n\r\f\v"  # msgfmt.WhiteSpaceChars
_CHANGING: Final = "message can only be sent when the agent is waiting for user input"
_EMPTY: Final = "message must not be empty"
# What a terminal send fails with when the screen never reacts: `release_send(error)`.
_PTY_TIMEOUT: Final = "failed to wait for processing to start: timeout waiting for condition"


class AgentapiSends(AgentapiCore):
    """The sends and the busy lock of an agentapi server."""

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

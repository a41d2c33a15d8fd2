"""The agentapi stand-in across restarts: a restart's fresh history, the lazy load of its
`--state-file` once the agent is ready, and the saves (the file's format is
`agentapi_state`'s).

Only a terminal agentapi from 0.12 on has a state file ("0.11" and the ACP transport have
none). A save writes only when something changed since the last save or load, and holds
the conversation's lock meanwhile, on which `/status` and `/messages` wait.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence

from sidecar.standins.agentapi_core import AgentapiCore
from sidecar.standins.agentapi_records import AgentMessage, SaveOutcome
from sidecar.standins.agentapi_state import (
    RESTORE_FAILED,
    LoadFailed,
    StateMessage,
    encode_state,
    read_state,
    write_atomically,
)
from sidecar.standins.server import rfc3339

__all__ = ["AgentapiStateFile"]


class AgentapiStateFile(AgentapiCore):
    """An agentapi server's restarts, state-file loads and saves."""

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

    def _state_messages(self) -> list[StateMessage]:
        return [StateMessage(m.id, m.content, m.role, m.time) for m in self._messages]


def _as_agent_message(message: AgentMessage | StateMessage) -> AgentMessage:
    if isinstance(message, AgentMessage):
        return message
    return AgentMessage(message.id, message.role, message.message, message.time)

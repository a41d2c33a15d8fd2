"""The Hub routes what the sources produce: into the mirror, then to the uploader and relay.

It is the one listener the sources call, synchronously, so the SSE reader is never held
up by network I/O; the uploader and relay only get a cheap nudge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from sidecar.mirror import Mirror, covers
from sidecar.models import (
    AgentError,
    AgentStatus,
    Event,
    Message,
    ReplayStarted,
    StateFileRead,
)

log = structlog.get_logger(__name__)

# What the sidecar holds is stamped when it handled it, which on a busy machine is later
# than agentapi produced it, and so can be later than a state file agentapi saved just
# after. Only a file older by more than this counts as older.
RECEIPT_LAG_S = 1.0


class SnapshotSink(Protocol):
    """What the hub needs of sidecar.uploader.Uploader."""

    def notify(self, *, urgent: bool = False) -> None: ...


class StatusSink(Protocol):
    """What the hub needs of sidecar.relay.delivery.Relay."""

    def observe(self, event: Event) -> None: ...

    def set_agent_reachable(self, reachable: bool) -> None: ...


@dataclass(slots=True)
class Hub:
    mirror: Mirror
    uploader: SnapshotSink | None
    relay: StatusSink | None
    clock: Callable[[], float] = time.monotonic
    reachable: bool = False
    first_contact: asyncio.Event = field(default_factory=asyncio.Event)
    # When (on the monotonic clock, which no step of the wall clock bends) the stream
    # last spoke of the conversation; None before it has.
    live_at: float | None = None
    # What was kept at the last stop (the spool, or the record of what Coder accepted),
    # standing in for the conversation until agentapi has one: a state file that adds
    # nothing to it is no newer, whatever the file times say.
    recovered: tuple[Message, ...] = ()
    statefile_backlog: StateFileRead | None = None
    # The service manager's one-line status (sd_notify STATUS=), when there is one.
    status_text: Callable[[str], object] = lambda _text: None

    def on_event(self, event: Event) -> None:
        self._apply(event)
        if isinstance(event, ReplayStarted | AgentError):
            # They carry no conversation: nothing held became more current.
            return
        # Whatever the state file said before this is older than what agentapi says now.
        self.statefile_backlog = None
        if not self.mirror.empty:
            self.live_at = self.clock()

    def _apply(self, event: Event) -> None:
        before = self.mirror.status
        change = self.mirror.apply(event)
        if self.uploader is not None and change:
            # Only running → stable ends a turn. The first status after a start is no
            # turn's end: counted as one, a fleet that starts together would post
            # together, past the uploader's spread of its first post.
            turn_ended = (
                change.status
                and before is AgentStatus.RUNNING
                and self.mirror.status is AgentStatus.STABLE
            )
            if change.messages or turn_ended:
                self.uploader.notify(urgent=turn_ended)
        if self.relay is not None:
            self.relay.observe(event)

    def on_reachable(self, reachable: bool) -> None:
        self.reachable = reachable
        self.first_contact.set()
        self.status_text(
            "watching agentapi"
            if reachable
            else "agentapi unreachable; keeping the last known conversation"
        )
        if self.relay is not None:
            self.relay.set_agent_reachable(reachable)
        if not reachable:
            self.mirror.abort_replay()
            if self.statefile_backlog is not None:
                self.on_statefile(self.statefile_backlog)

    def on_statefile(self, read: StateFileRead) -> None:
        """The live stream wins while connected; the file speaks when agentapi cannot,
        and only if it is not older than what the stream last said."""
        self.first_contact.set()
        if self.reachable:
            self.statefile_backlog = read
            return
        self.statefile_backlog = None
        messages = read.conversation.messages
        if self.mirror.messages():
            adds_nothing = self.mirror.covers(messages)
        else:
            adds_nothing = bool(self.recovered) and covers(self.recovered, messages)
        if adds_nothing:
            # Also a file saved mid-turn and read late: applying it would only cut words.
            log.info("statefile.stale", note="adds nothing to the conversation held; ignored")
            return
        written = self.clock() - read.age
        if self.live_at is not None and written < self.live_at - RECEIPT_LAG_S:
            log.info("statefile.stale", note="older than the conversation held; ignored")
            return
        self._apply(read.conversation)

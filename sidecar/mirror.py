"""The conversation mirror: the newest messages and the agent status, nothing more.

Pure: it applies events and reports what changed. It holds at most `max_messages`
messages, also while a replay of a huge history streams through it, and of each message
at most the tail a snapshot can carry, so memory stays bounded by what a snapshot can
carry whatever agentapi sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.models import (
    AgentError,
    AgentStatus,
    Conversation,
    Event,
    Message,
    MessageUpdate,
    ReplayStarted,
    StatusChange,
    tail_of,
)


@dataclass(frozen=True, slots=True)
class Change:
    messages: bool = False
    status: bool = False

    def __bool__(self) -> bool:
        return self.messages or self.status


def covers(held: Sequence[Message], messages: Iterable[Message]) -> bool:
    """Whether `messages` hold nothing `held` (a snapshot's worth, ascending) lacks: each
    is held as is or as the start of its longer streamed version, or is older than
    everything held."""
    return _covers({m.id: m for m in held}, messages, floor=held[0].id if held else None)


def _covers(held: dict[int, Message], messages: Iterable[Message], *, floor: int | None) -> bool:
    for msg in messages:
        mine = held.get(msg.id)
        if mine is None:
            if floor is not None and msg.id < floor:
                continue
            return False
        if mine.role != msg.role or not mine.content.startswith(msg.content):
            return False
    return True


NO_CHANGE = Change()
MESSAGES_CHANGED = Change(messages=True)


class _Window:
    """The newest `limit` messages by id. Ids only grow in agentapi, so appends are the
    common case and evicting the smallest id keeps the window exact."""

    __slots__ = ("by_id", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_id: dict[int, Message] = {}

    def put(self, msg: Message) -> bool:
        msg = tail_of(msg)
        by_id = self.by_id
        old = by_id.get(msg.id)
        if old is not None:
            if old == msg:
                return False
            by_id[msg.id] = msg
            return True
        if len(by_id) >= self.limit:
            oldest = min(by_id)
            if msg.id < oldest:
                return False  # older than everything a snapshot would carry
            del by_id[oldest]
        by_id[msg.id] = msg
        return True

    def ordered(self) -> list[Message]:
        return [self.by_id[i] for i in sorted(self.by_id)]


class Mirror:
    __slots__ = ("_cache", "_replay", "_status", "_window", "max_messages", "version")

    def __init__(self, max_messages: int) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be positive")
        self.max_messages = max_messages
        self._window = _Window(max_messages)
        self._replay: _Window | None = None
        self._status: AgentStatus | None = None
        self._cache: list[Message] | None = []
        # Bumped on every real change of messages; the uploader compares it, so it must
        # not move for an update that repeats what is already held.
        self.version = 0

    @property
    def status(self) -> AgentStatus | None:
        return self._status

    @property
    def empty(self) -> bool:
        """No message is held (a replay in progress does not count until it ends)."""
        return not self._window.by_id

    def messages(self) -> list[Message]:
        if self._cache is None:
            self._cache = self._window.ordered()
        return self._cache

    def covers(self, messages: Iterable[Message]) -> bool:
        """Whether `messages` hold nothing this mirror lacks (see `covers`); ids below a
        full window would not reach a snapshot."""
        window = self._window.by_id
        full = len(window) >= self._window.limit
        return _covers(window, messages, floor=min(window) if full else None)

    def apply(self, event: Event) -> Change:
        if isinstance(event, MessageUpdate):
            if self._replay is not None:
                self._replay.put(event.message)
                return NO_CHANGE
            if self._window.put(event.message):
                self._bump()
                return MESSAGES_CHANGED
            return NO_CHANGE
        if isinstance(event, StatusChange):
            # The first status after a (re)connect ends agentapi's replay.
            replaced = self._commit_replay()
            status_changed = self._set_status(event.status)
            return Change(messages=replaced, status=status_changed)
        if isinstance(event, ReplayStarted):
            self._replay = _Window(self.max_messages)
            return NO_CHANGE
        if isinstance(event, Conversation):
            self._replay = _Window(self.max_messages)
            for msg in event.messages:
                self._replay.put(msg)
            replaced = self._commit_replay()
            status_changed = event.status is not None and self._set_status(event.status)
            return Change(messages=replaced, status=status_changed)
        if isinstance(event, AgentError):
            return NO_CHANGE
        raise TypeError(f"unknown event {event!r}")

    def abort_replay(self) -> None:
        """The stream died mid-replay: keep what was held before it."""
        self._replay = None

    def _commit_replay(self) -> bool:
        staged = self._replay
        if staged is None:
            return False
        self._replay = None
        if staged.by_id == self._window.by_id:
            return False
        self._window = staged
        self._bump()
        return True

    def _set_status(self, status: AgentStatus) -> bool:
        if status == self._status:
            return False
        self._status = status
        return True

    def _bump(self) -> None:
        self.version += 1
        self._cache = None

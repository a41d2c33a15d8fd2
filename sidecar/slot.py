"""The snapshot slot: what the uploader knows of the newest conversation and the server.

Pure: no I/O, no clock (times are handed in, on the monotonic clock). It holds the body the
server accepted last, the one it refused, whether the server has a Tasks API at all,
whether a change waits to be sent, and since when the server has lacked the newest words.
From that it says why a body needs no POST (`Skip`) and what a stop achieved
(`FlushOutcome`). The uploader (sidecar.uploader) runs it on the shared loop.

A leaf besides: the `stop` hook reads `FlushOutcome` to tell what a daemon's final
snapshot became, and imports nothing beyond the standard library.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["FlushOutcome", "Skip", "SnapshotSlot"]


class Skip(enum.Enum):
    """Why a change needed no POST (the label of sidecar_snapshot_skipped_total)."""

    UNCHANGED = "unchanged"  # the body is the one the server accepted last
    REFUSED = "refused"  # the body is the one the server refused: it would be refused again
    EMPTY = "empty"  # there is no conversation to post


class FlushOutcome(enum.Enum):
    """What became of the newest conversation at a stop."""

    DELIVERED = "delivered"  # the server holds it
    NOTHING = "nothing"  # there was no conversation to deliver
    REJECTED = "rejected"  # the server refused it (400): neither delivered nor kept
    SPOOLED = "spooled"  # undelivered, kept on disk for the next start
    LOST = "lost"  # undelivered, and the spool could not keep it
    NO_TASKS_API = "no_tasks_api"  # the server has nowhere to keep it: nothing to deliver
    OFF = "off"  # snapshots are off here (no task): nothing to deliver

    @property
    def delivered(self) -> bool:
        """Nothing is left to deliver: the server holds the newest conversation, or there
        is none, or nowhere to keep it."""
        return self in _NOTHING_LEFT


_NOTHING_LEFT: Final = frozenset(
    (FlushOutcome.DELIVERED, FlushOutcome.NOTHING, FlushOutcome.NO_TASKS_API, FlushOutcome.OFF)
)


class SnapshotSlot:
    __slots__ = (
        "_changed_since_send",
        "accepted",
        "dirty",
        "no_tasks_api",
        "pending_since",
        "refused",
        "urgent",
    )

    def __init__(
        self, *, pending: bool = False, accepted: bytes | None = None, now: float = 0.0
    ) -> None:
        """`pending`: the spool kept a body the server lacks (delivered unless something
        newer is first); `accepted`: the body Coder accepted last (a record kept across
        starts)."""
        self.accepted = accepted
        self.refused: bytes | None = None
        self.no_tasks_api = False
        self.dirty = False
        self.urgent = False
        # Since when the server has lacked the newest words (None: it holds them). A
        # conversation that keeps changing while every post is accepted is never pending
        # for longer than a post takes.
        self.pending_since: float | None = None
        self._changed_since_send: float | None = None
        if pending:
            self.changed(now)

    def changed(self, now: float, *, urgent: bool = False) -> None:
        """The conversation changed at `now`; `urgent`: a turn ended."""
        self.dirty = True
        self.urgent = self.urgent or urgent
        if self._changed_since_send is None:
            self._changed_since_send = now
        # With snapshots off there is nothing pending, only a change to try hourly.
        if self.pending_since is None and not self.no_tasks_api:
            self.pending_since = now

    def taking(self) -> None:
        """The newest body is being built to be sent: every change so far is in it."""
        self.dirty = self.urgent = False
        self._changed_since_send = None

    def skip(self, body: bytes | None) -> Skip | None:
        """Why `body` needs no POST, or None when it does."""
        if body is None:
            return Skip.EMPTY
        if body == self.accepted:
            return Skip.UNCHANGED
        if body == self.refused:
            return Skip.REFUSED
        return None

    def skipped(self, reason: Skip) -> None:
        # A refused body stays pending: the newest conversation is not at the server.
        if reason is not Skip.REFUSED and not self.dirty:
            self.pending_since = None

    def on_accepted(self, body: bytes) -> bool:
        """The server holds `body`. True when that shows the server has a Tasks API after
        all (it had said it had none)."""
        self.accepted = body
        # What changed after `body` was built is all the server lacks now.
        self.pending_since = self._changed_since_send
        found = self.no_tasks_api
        self.no_tasks_api = False
        return found

    def on_refused(self, body: bytes) -> None:
        self.refused = body

    def on_failed(self) -> None:
        """Undelivered: the newest body is to be sent again once the back-off allows."""
        self.dirty = True

    def on_no_tasks_api(self) -> bool:
        """The server has no Tasks API. True the first time it says so."""
        first = not self.no_tasks_api
        self.no_tasks_api = True
        self.pending_since = None
        self.dirty = True  # asked again, with the newest body, once the hour is over
        return first

    def outcome(self, body: bytes | None) -> FlushOutcome | None:
        """What became of `body`, the newest, at a stop; None when it is undelivered (the
        caller keeps it in the spool: SPOOLED, or LOST when it cannot)."""
        if body is None:
            return FlushOutcome.NOTHING
        if self.no_tasks_api:
            return FlushOutcome.NO_TASKS_API
        reason = self.skip(body)
        if reason is Skip.UNCHANGED:
            return FlushOutcome.DELIVERED
        if reason is Skip.REFUSED:
            return FlushOutcome.REJECTED
        return None

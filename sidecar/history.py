"""One history across agentapi restarts: what the snapshot shows, pure.

agentapi keeps its conversation in memory. When it starts again without its state file
(the usual case: the registry's modules leave persistence off, and agentapi before v0.12
has none), its conversation begins from nothing: message 0 alone, ids from 0. The words
before the restart are gone from agentapi, but not from the workspace: the sidecar holds
the last snapshot it built, and the last one Coder accepted is kept in its state
directory. `History` joins the two: the conversation held (the view last built) followed,
behind a marker message, by agentapi's new conversation, as one list with ids strictly
ascending.

What it decides, given the view it holds and agentapi's current conversation:

* The current conversation *continues* the held one (every user message of the held
  conversation that the current window could show is there, same id, same words): it is
  the same conversation, grown, or restored by agentapi from its state file. It takes
  the held one's place; nothing is doubled.
* It holds nothing the held one lacks (a restore from an older state file, a reconnect
  that lost the last words), or it has no user message yet (message 0 alone, the agent's
  welcome screen, an empty list): the held view stands. A restart never makes the
  stored conversation worse, also not at the final flush.
* Otherwise it is a new conversation: the held view is frozen, a marker follows it, and
  the new conversation comes after, as agentapi shows it (its welcome screen again
  included: the agent did greet again). A held view that shows nothing is not frozen:
  no marker stands above nothing.

The view keeps the newest `max_messages` messages, the marker counted, and always keeps
the newest marker: its id says where the ids of the conversation after it begin, so a
view read back from a body (a spool, the record of the last accepted snapshot) says how
to continue it. With room for one message only, the view is the newest message, with
agentapi's id: a marker alone would show nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from sidecar.mirror import covers
from sidecar.models import Message

__all__ = ["MARKER", "History", "continues", "substantive"]

MARKER: Final = (
    "[coder-task-sidecar: agentapi started again here; the messages above were said "
    "before, in the same workspace]"
)


def is_marker(message: Message) -> bool:
    return message.role == "agent" and message.content == MARKER


def substantive(messages: Sequence[Message]) -> bool:
    """Whether a conversation says anything beyond the agent's own screen: a user message
    with words in it."""
    return any(m.role == "user" and m.content for m in messages)


def continues(previous: Sequence[Message], current: Sequence[Message]) -> bool:
    """Whether `current` is the same agentapi conversation as `previous` (both with
    agentapi's ids): every user message of `previous` that `current`'s window could hold
    is in it, same id, same words. An agent message may change after the fact (screen
    diffing rewrites it, a failed ACP prompt removes it), a user message never does, and
    after a restart the ids start again from 0. An empty list continues nothing."""
    if not current:
        return False
    by_id = {m.id: m for m in current}
    floor = min(by_id)
    for held in previous:
        if held.role != "user" or held.id < floor:
            continue
        now = by_id.get(held.id)
        if now is None or now.role != "user" or now.content != held.content:
            return False
    return True


class _Held(NamedTuple):
    """A view, taken apart: the messages before the newest marker (with the view's ids),
    the marker, and the conversation after it with agentapi's ids."""

    frozen: tuple[Message, ...]
    marker: Message | None
    last: tuple[Message, ...]

    @property
    def offset(self) -> int:
        """What is added to agentapi's ids after the marker to give the view's ids."""
        return 0 if self.marker is None else self.marker.id + 1


_NOTHING: Final = _Held((), None, ())


def _take_apart(view: Sequence[Message]) -> _Held:
    ordered = sorted(view, key=lambda m: m.id)
    for index in range(len(ordered) - 1, -1, -1):
        if is_marker(ordered[index]):
            marker = ordered[index]
            last = tuple(m._replace(id=m.id - marker.id - 1) for m in ordered[index + 1 :])
            return _Held(tuple(ordered[:index]), marker, last)
    return _Held((), None, tuple(ordered))


class History:
    """The view of the conversation the snapshot shows. Pure: no I/O, no clock."""

    __slots__ = ("_held", "_max")

    def __init__(self, max_messages: int, held: Sequence[Message] = ()) -> None:
        """`held`: a view built before (the messages of a spooled or accepted body)."""
        if max_messages < 1:
            raise ValueError("max_messages must be positive")
        self._max = max_messages
        self._held = _take_apart(held) if held else _NOTHING

    @property
    def restarted(self) -> bool:
        """The view holds a conversation from before an agentapi restart."""
        return self._held.marker is not None

    def view(self, current: Sequence[Message]) -> list[Message]:
        """The messages to show for agentapi's `current` conversation (its ids, ascending
        or not), and the view held from now on. Empty when there is nothing to show (no
        message holds any words)."""
        held = self._held
        if continues(held.last, current):
            held = held._replace(last=tuple(sorted(current, key=_id)))
        elif not substantive(current) or _repeats(held.last, current):
            pass  # it says nothing the held conversation lacks: the held view stands
        else:
            held = self._begin_again(held, current)
        self._held = held = self._trim(held)
        return self._join(held)

    def _begin_again(self, held: _Held, current: Sequence[Message]) -> _Held:
        """agentapi started a new conversation: freeze what is shown, and continue after a
        marker with it."""
        shown = self._join(held)
        fresh = tuple(sorted(current, key=_id))
        if not shown:  # nothing held says a word: no marker above nothing
            return _NOTHING._replace(last=fresh)
        marker = Message(shown[-1].id + 1, "agent", MARKER, fresh[0].time)
        return _Held(tuple(shown), marker, fresh)

    def _trim(self, held: _Held) -> _Held:
        """The newest `max_messages`, the newest marker always among them; with room for
        one message only, the newest one (a marker alone would show nothing)."""
        room = self._max - (held.marker is not None)
        if room == 0:
            return _NOTHING._replace(last=held.last[-1:])
        last = held.last[-room:]
        frozen = held.frozen[len(held.frozen) - (room - len(last)) :] if room > len(last) else ()
        if held.marker is None:
            frozen = ()
        return held._replace(frozen=frozen, last=last)

    @staticmethod
    def _join(held: _Held) -> list[Message]:
        """The view's messages; none when no message but markers holds any words."""
        offset = held.offset
        shown = [m._replace(id=m.id + offset) for m in sorted(held.last, key=_id)]
        view = shown if held.marker is None else [*held.frozen, held.marker, *shown]
        return view if any(m.content and not is_marker(m) for m in view) else []


def _id(message: Message) -> int:
    return message.id


def _repeats(held: Sequence[Message], current: Sequence[Message]) -> bool:
    """Whether `current` is an older view of the held conversation (agentapi restored an
    older state file): it overlaps what is held, and holds nothing more where it does.
    A conversation wholly below the held window cannot be told from a new one, and is
    taken for new: shown twice, nothing is lost."""
    if not held or not current:
        return False
    floor = min(m.id for m in held)
    if max(m.id for m in current) < floor:
        return False
    return covers(sorted(held, key=_id), current)

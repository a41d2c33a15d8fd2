"""Which source speaks when: the live stream, and the state file only when it is newer.

Times here are the hub's own (monotonic) clock; a state file's write is handed to the
hub as an age (`read(written_at)` makes the age from the clock's now).
"""

from __future__ import annotations

from sidecar.hub import Hub
from sidecar.mirror import Mirror
from sidecar.models import (
    AgentError,
    AgentStatus,
    Conversation,
    ErrorLevel,
    Message,
    MessageUpdate,
    ReplayStarted,
    StateFileRead,
    StatusChange,
)

T = "2026-01-01T00:00:00Z"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def msg(i: int, content: str) -> Message:
    return Message(i, "agent", content, T)


CLOCK_START = 1000.0


def read(written_at: float, *contents: str, now: float | None = None) -> StateFileRead:
    """The state file as read at `now` (the clock's now, by default), written at
    `written_at`."""
    messages = tuple(msg(i, c) for i, c in enumerate(contents))
    return StateFileRead(
        Conversation(messages, None), (CLOCK.now if now is None else now) - written_at
    )


def contents(hub: Hub) -> list[str]:
    return [m.content for m in hub.mirror.messages()]


CLOCK = Clock()


def make(recovered: tuple[Message, ...] = ()) -> tuple[Hub, Clock]:
    CLOCK.now = CLOCK_START
    hub = Hub(mirror=Mirror(10), uploader=None, relay=None, clock=CLOCK, recovered=recovered)
    return hub, CLOCK


def test_state_file_fills_in_before_agentapi_answers() -> None:
    hub, _ = make()
    hub.on_statefile(read(900.0, "saved"))
    assert contents(hub) == ["saved"]
    assert hub.first_contact.is_set()


def test_live_stream_wins_while_connected() -> None:
    hub, clock = make()
    hub.on_reachable(True)
    hub.on_event(MessageUpdate(msg(0, "live")))
    clock.now += 5
    hub.on_statefile(read(clock.now, "from file"))
    assert contents(hub) == ["live"]


def test_file_read_while_connected_speaks_when_agentapi_dies_if_newer() -> None:
    hub, clock = make()
    hub.on_reachable(True)
    hub.on_event(MessageUpdate(msg(0, "live")))
    clock.now += 1
    hub.on_statefile(read(clock.now, "written at exit"))  # agentapi saves, then exits
    hub.on_reachable(False)
    assert contents(hub) == ["written at exit"]


def test_file_read_while_connected_is_superseded_by_later_events() -> None:
    hub, clock = make()
    hub.on_reachable(True)
    hub.on_statefile(read(clock.now, "saved mid-turn"))
    clock.now += 0.2
    hub.on_event(MessageUpdate(msg(0, "newer live words")))
    hub.on_reachable(False)  # killed without saving again
    assert contents(hub) == ["newer live words"]


def test_older_state_file_is_ignored_after_live_events() -> None:
    hub, clock = make()
    hub.on_reachable(True)
    hub.on_event(MessageUpdate(msg(0, "live")))
    hub.on_reachable(False)
    hub.on_statefile(read(clock.now - 10, "stale"))
    assert contents(hub) == ["live"]


def test_file_saved_at_exit_wins_although_the_last_event_was_handled_after_it() -> None:
    # agentapi sent its last event, saved its file on exit, and the busy sidecar handled
    # the event a moment after the file's mtime.
    hub, clock = make()
    hub.on_reachable(True)
    hub.on_event(MessageUpdate(msg(0, "working on it")))
    hub.on_reachable(False)
    hub.on_statefile(read(clock.now - 0.05, "working on it. Final words."))
    assert contents(hub) == ["working on it. Final words."]


def test_file_saved_mid_turn_and_read_late_cuts_no_words() -> None:
    hub, clock = make()
    hub.on_reachable(True)
    saved_at = clock.now
    clock.now += 0.3
    hub.on_event(MessageUpdate(msg(0, "Reading parser.py: the tokenizer drops the last line.")))
    hub.on_reachable(False)  # killed; a polling watcher only now sees the earlier save
    hub.on_statefile(read(saved_at, "Reading parser.py"))
    assert contents(hub) == ["Reading parser.py: the tokenizer drops the last line."]


def test_at_a_start_file_times_do_not_decide_between_the_spool_and_the_state_file() -> None:
    # The spool and the state file were written by two processes, perhaps on either
    # side of a step of the wall clock: what they hold decides (and the snapshot's
    # history keeps both when they differ), not which file looks older.
    hub, _ = make(recovered=(msg(0, "spooled"),))
    hub.on_statefile(read(0.0, "written long before, by the clock"))
    assert contents(hub) == ["written long before, by the clock"]


def test_state_file_the_spool_already_holds_is_ignored_however_close_in_time() -> None:
    # Saved before the last turn; the sidecar spooled that turn a moment later.
    spooled = (msg(0, "Fix the parser"), msg(1, "Done: all tests pass."))
    hub, _ = make(recovered=spooled)
    hub.on_statefile(read(CLOCK_START, "Fix the parser"))
    assert contents(hub) == []


def test_state_file_saved_at_exit_just_before_the_spool_is_applied() -> None:
    # agentapi saved its final words, the sidecar spooled what it had seen a moment later.
    hub, _ = make(recovered=(msg(0, "Done"),))
    hub.on_statefile(read(CLOCK_START, "Done: all tests pass."))
    assert contents(hub) == ["Done: all tests pass."]


def test_disconnect_mid_replay_keeps_the_previous_history() -> None:
    hub, _ = make()
    hub.on_reachable(True)
    hub.on_event(ReplayStarted())
    hub.on_event(MessageUpdate(msg(0, "a")))
    hub.on_event(StatusChange(AgentStatus.STABLE))
    hub.on_event(ReplayStarted())
    hub.on_event(MessageUpdate(msg(0, "partial replay")))
    hub.on_reachable(False)
    assert contents(hub) == ["a"]
    # No replay is staged any more: the next update applies at once.
    hub.on_event(MessageUpdate(msg(1, "b")))
    assert contents(hub) == ["a", "b"]


def test_events_without_a_conversation_do_not_make_the_held_one_newer() -> None:
    # A spool written at 1000 stands in for the conversation. agentapi then answers only
    # with a replay start and a replayed error before it dies: nothing it said is newer
    # than the state file it saved at 1050, which must still speak.
    hub, clock = make(recovered=(msg(0, "spooled"),))
    clock.now = 1100.0
    hub.on_reachable(True)
    hub.on_event(ReplayStarted())
    hub.on_event(AgentError(ErrorLevel.ERROR, "boom", T))
    hub.on_reachable(False)
    hub.on_statefile(read(1050.0, "spooled", "saved later"))
    assert contents(hub) == ["spooled", "saved later"]


def test_an_empty_replay_does_not_make_the_held_one_newer() -> None:
    # agentapi restarted empty at 1100, then died; its state file from 1050 still holds
    # more than the spool from 1000.
    hub, clock = make(recovered=(msg(0, "spooled"),))
    clock.now = 1100.0
    hub.on_reachable(True)
    hub.on_event(ReplayStarted())
    hub.on_event(StatusChange(AgentStatus.STABLE))
    hub.on_reachable(False)
    hub.on_statefile(read(1050.0, "spooled", "saved later"))
    assert contents(hub) == ["spooled", "saved later"]


class Nudges:
    """The uploader's side of the hub: each notify, and whether it was urgent."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def notify(self, *, urgent: bool = False) -> None:
        self.calls.append(urgent)


def with_uploader() -> tuple[Hub, Nudges]:
    nudges = Nudges()
    return Hub(mirror=Mirror(10), uploader=nudges, relay=None), nudges


def test_the_first_status_after_a_start_is_no_turn_end() -> None:
    # Counted as one, every sidecar of a fleet that starts together would post at once.
    hub, nudges = with_uploader()
    hub.on_reachable(True)
    for event in (ReplayStarted(), MessageUpdate(msg(0, "done")), StatusChange(AgentStatus.STABLE)):
        hub.on_event(event)
    assert nudges.calls == [False]


def test_running_then_stable_is_a_turn_end() -> None:
    hub, nudges = with_uploader()
    hub.on_event(StatusChange(AgentStatus.RUNNING))
    hub.on_event(MessageUpdate(msg(0, "working")))
    hub.on_event(StatusChange(AgentStatus.STABLE))
    assert nudges.calls == [False, True]


def test_a_turn_that_ended_while_disconnected_is_a_turn_end() -> None:
    hub, nudges = with_uploader()
    hub.on_event(StatusChange(AgentStatus.RUNNING))
    hub.on_reachable(False)
    hub.on_reachable(True)
    for event in (ReplayStarted(), MessageUpdate(msg(0, "done")), StatusChange(AgentStatus.STABLE)):
        hub.on_event(event)
    assert nudges.calls == [True]


def test_a_status_that_does_not_change_nudges_nothing() -> None:
    hub, nudges = with_uploader()
    hub.on_event(StatusChange(AgentStatus.STABLE))
    hub.on_event(StatusChange(AgentStatus.STABLE))
    assert nudges.calls == []

from __future__ import annotations

import pytest

from sidecar.mirror import Mirror, covers
from sidecar.models import (
    CONTENT_MAX_CHARS,
    AgentError,
    AgentStatus,
    Conversation,
    ErrorLevel,
    Message,
    MessageUpdate,
    ReplayStarted,
    Role,
    StatusChange,
)

T = "2026-01-01T00:00:00Z"


def msg(i: int, content: str = "", role: Role = "agent") -> Message:
    return Message(id=i, role=role, content=content or f"m{i}", time=T)


def replay(mirror: Mirror, messages: list[Message], status: AgentStatus) -> None:
    mirror.apply(ReplayStarted())
    for m in messages:
        mirror.apply(MessageUpdate(m))
    mirror.apply(StatusChange(status))


def test_live_updates_append_and_update_in_place() -> None:
    mirror = Mirror(10)
    assert mirror.apply(MessageUpdate(msg(0, "hi", "user"))).messages
    assert mirror.apply(MessageUpdate(msg(1, "a"))).messages
    assert mirror.apply(MessageUpdate(msg(1, "ab"))).messages
    assert [m.content for m in mirror.messages()] == ["hi", "ab"]
    assert mirror.version == 3


def test_repeated_identical_update_is_not_a_change() -> None:
    mirror = Mirror(10)
    mirror.apply(MessageUpdate(msg(0)))
    version = mirror.version
    assert not mirror.apply(MessageUpdate(msg(0)))
    assert mirror.version == version


def test_window_keeps_only_newest_messages() -> None:
    mirror = Mirror(3)
    for i in range(10):
        mirror.apply(MessageUpdate(msg(i)))
    assert [m.id for m in mirror.messages()] == [7, 8, 9]
    # An update to a message that fell out of the window cannot matter to a snapshot.
    version = mirror.version
    assert not mirror.apply(MessageUpdate(msg(2, "late edit")))
    assert mirror.version == version
    assert [m.id for m in mirror.messages()] == [7, 8, 9]


def test_out_of_order_ids_are_sorted() -> None:
    mirror = Mirror(5)
    for i in (3, 1, 2):
        mirror.apply(MessageUpdate(msg(i)))
    assert [m.id for m in mirror.messages()] == [1, 2, 3]


def test_replay_replaces_a_longer_history() -> None:
    mirror = Mirror(10)
    for i in range(6):
        mirror.apply(MessageUpdate(msg(i)))
    replay(mirror, [msg(0, "fresh start")], AgentStatus.STABLE)
    assert [(m.id, m.content) for m in mirror.messages()] == [(0, "fresh start")]
    assert mirror.status is AgentStatus.STABLE


def test_replay_replaces_with_empty_history() -> None:
    mirror = Mirror(10)
    mirror.apply(MessageUpdate(msg(0)))
    change = mirror.apply(ReplayStarted())
    assert not change
    # During the replay the old history still stands.
    assert [m.id for m in mirror.messages()] == [0]
    change = mirror.apply(StatusChange(AgentStatus.STABLE))
    assert change.messages
    assert change.status
    assert mirror.messages() == []


def test_identical_replay_changes_nothing() -> None:
    mirror = Mirror(10)
    history = [msg(0, "q", "user"), msg(1, "a")]
    replay(mirror, history, AgentStatus.STABLE)
    version = mirror.version
    mirror.apply(ReplayStarted())
    for m in history:
        assert not mirror.apply(MessageUpdate(m))
    assert not mirror.apply(StatusChange(AgentStatus.STABLE))
    assert mirror.version == version


def test_aborted_replay_keeps_previous_history() -> None:
    mirror = Mirror(10)
    replay(mirror, [msg(0), msg(1)], AgentStatus.RUNNING)
    mirror.apply(ReplayStarted())
    mirror.apply(MessageUpdate(msg(0, "partial")))
    mirror.abort_replay()
    assert [m.content for m in mirror.messages()] == ["m0", "m1"]
    # No replay is staged any more: the next update applies at once.
    assert mirror.apply(MessageUpdate(msg(2)))
    assert [m.content for m in mirror.messages()] == ["m0", "m1", "m2"]


def test_huge_replay_holds_only_the_window() -> None:
    mirror = Mirror(10)
    mirror.apply(ReplayStarted())
    for i in range(20_000):
        mirror.apply(MessageUpdate(msg(i, "x" * 100)))
        assert mirror._replay is not None
        assert len(mirror._replay.by_id) <= 10
    mirror.apply(StatusChange(AgentStatus.STABLE))
    assert [m.id for m in mirror.messages()] == list(range(19_990, 20_000))


def test_conversation_replaces_and_sets_status() -> None:
    mirror = Mirror(2)
    conv = Conversation((msg(0), msg(1), msg(2)), AgentStatus.RUNNING)
    change = mirror.apply(conv)
    assert change.messages
    assert change.status
    assert [m.id for m in mirror.messages()] == [1, 2]
    assert not mirror.apply(conv)


def test_statefile_conversation_without_status_keeps_status() -> None:
    mirror = Mirror(5)
    mirror.apply(StatusChange(AgentStatus.RUNNING))
    mirror.apply(Conversation((msg(0),), None))
    assert mirror.status is AgentStatus.RUNNING


def test_errors_do_not_touch_the_conversation() -> None:
    mirror = Mirror(5)
    assert not mirror.apply(AgentError(ErrorLevel.ERROR, "boom", T))
    assert mirror.version == 0


def test_status_change_alone() -> None:
    mirror = Mirror(5)
    change = mirror.apply(StatusChange(AgentStatus.RUNNING))
    assert change.status
    assert not change.messages
    assert not mirror.apply(StatusChange(AgentStatus.RUNNING))


def test_rejects_nonpositive_window() -> None:
    with pytest.raises(ValueError, match="positive"):
        Mirror(0)


def test_a_window_of_one_holds_the_newest_message() -> None:
    mirror = Mirror(1)
    for i in range(3):
        assert mirror.apply(MessageUpdate(msg(i)))
    assert [m.id for m in mirror.messages()] == [2]


def test_a_new_mirror_knows_no_status_and_no_message() -> None:
    mirror = Mirror(5)
    assert mirror.status is None
    assert mirror.empty
    assert mirror.messages() == []
    assert mirror.version == 0


def test_live_updates_apply_at_once_after_a_replay_ends() -> None:
    mirror = Mirror(5)
    replay(mirror, [msg(0)], AgentStatus.RUNNING)
    change = mirror.apply(MessageUpdate(msg(1)))
    assert change.messages
    assert [m.id for m in mirror.messages()] == [0, 1]


def test_an_unknown_event_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="unknown event 'bogus'"):
        Mirror(5).apply("bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("held", "other", "covered"),
    [
        ([], [], True),
        ([], [msg(0)], False),
        ([msg(0, "hello world")], [msg(0, "hello")], True),  # an earlier streamed version
        ([msg(0, "hello world")], [msg(0, "hello world")], True),
        ([msg(0, "hello")], [msg(0, "hello world")], False),  # the other has more words
        ([msg(0, "hello")], [msg(0, "help")], False),  # different, not an earlier version
        ([msg(0, "hi", "user")], [msg(0, "hi", "agent")], False),
        ([msg(0), msg(1)], [msg(0)], True),  # fewer messages: nothing new
        ([msg(0)], [msg(0), msg(1)], False),  # a message the mirror lacks
        ([msg(7), msg(8), msg(9)], [msg(2), msg(8), msg(9)], True),  # 2 fell out of the window
        ([msg(8), msg(9)], [msg(2), msg(8), msg(9)], False),  # window not full: 2 is missing
        ([msg(7), msg(8), msg(9)], [msg(2), msg(10)], False),  # past an old one: 10 is new
    ],
)
def test_covers_only_what_adds_nothing(
    held: list[Message], other: list[Message], covered: bool
) -> None:
    mirror = Mirror(3)
    for m in held:
        mirror.apply(MessageUpdate(m))
    assert mirror.covers(tuple(other)) is covered


def test_covers_a_snapshot_ignores_what_is_older_than_it() -> None:
    # A snapshot's worth is all there is: what precedes it never reaches Coder.
    spooled = [msg(8), msg(9, "done, all tests pass")]
    assert covers(spooled, [msg(2), msg(8), msg(9, "done")])
    assert not covers(spooled, [msg(9, "done, all tests pass!")])
    assert not covers(spooled, [msg(10)])
    assert not covers([], [msg(0)])
    assert covers([], [])


def test_a_huge_message_is_held_as_the_tail_a_snapshot_can_carry() -> None:
    mirror = Mirror(10)
    mirror.apply(ReplayStarted())
    for i in range(10):
        mirror.apply(MessageUpdate(Message(i, "agent", str(i) * 1_000_000, T)))
    mirror.apply(StatusChange(AgentStatus.STABLE))
    held = mirror.messages()
    assert [len(m.content) for m in held] == [CONTENT_MAX_CHARS] * 10
    assert [m.cut for m in held] == [1_000_000 - CONTENT_MAX_CHARS] * 10

"""History: one conversation across agentapi restarts, as agentapi's source behaves
(message 0 and ids from 0 after a restart, a state file loaded later, ACP's counter and
its silently removed placeholder)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.history import MARKER, History, continues, substantive
from sidecar.models import Message, Role


def at(second: int) -> str:
    return f"2026-03-01T10:{second // 60:02d}:{second % 60:02d}Z"


def m(mid: int, role: Role, content: str, second: int | None = None) -> Message:
    return Message(mid, role, content, at(mid if second is None else second))


def words(view: Sequence[Message]) -> list[tuple[str, str]]:
    return [(msg.role, msg.content) for msg in view]


BANNER = m(0, "agent", "Welcome to Claude Code!")
BEFORE = [BANNER, m(1, "user", "fix the flaky test"), m(2, "agent", "Fixed: it waited.")]


def restarted(held: Sequence[Message], current: Sequence[Message], limit: int = 10) -> History:
    history = History(limit)
    history.view(held)
    history.view(current)
    return history


def test_without_a_restart_the_view_is_agentapis_conversation() -> None:
    history = History(10)
    assert history.view(BEFORE) == BEFORE
    grown = [*BEFORE, m(3, "user", "thanks"), m(4, "agent", "You're welcome.")]
    assert history.view(grown) == grown
    assert not history.restarted


def test_the_window_keeps_the_newest_messages() -> None:
    conversation = [m(i, "user" if i % 2 else "agent", f"m{i}") for i in range(25)]
    assert History(10).view(conversation) == conversation[-10:]


def test_a_restart_to_the_welcome_screen_keeps_the_held_conversation() -> None:
    history = History(10)
    history.view(BEFORE)
    # agentapi started again without state: message 0 alone, empty, then the banner.
    assert history.view([m(0, "agent", "")]) == BEFORE
    assert history.view([m(0, "agent", "Welcome back!", 100)]) == BEFORE
    assert not history.restarted


@pytest.mark.parametrize("after", [[], [m(0, "user", "")], [m(0, "agent", "booting")]])
def test_a_conversation_without_words_from_the_person_never_replaces_one(
    after: list[Message],
) -> None:
    history = History(10)
    history.view(BEFORE)
    assert history.view(after) == BEFORE


def test_a_new_conversation_follows_the_old_one_behind_a_marker() -> None:
    history = History(10)
    history.view(BEFORE)
    fresh = [m(0, "agent", "Welcome back!", 100), m(1, "user", "add a test", 101)]
    view = history.view(fresh)
    assert words(view) == [
        *words(BEFORE),
        ("agent", MARKER),
        ("agent", "Welcome back!"),
        ("user", "add a test"),
    ]
    assert [msg.id for msg in view] == [0, 1, 2, 3, 4, 5]
    # The marker is timed as the new conversation's start.
    assert view[3].time == at(100)
    assert history.restarted
    # The new conversation goes on growing in place, after the marker.
    reply = [*fresh, m(2, "agent", "Added.", 102)]
    assert words(history.view(reply))[-2:] == [("user", "add a test"), ("agent", "Added.")]
    assert [msg.id for msg in history.view(reply)] == [0, 1, 2, 3, 4, 5, 6]


def test_a_welcome_screen_repeated_word_for_word_is_shown_again() -> None:
    # The agent did greet again: after the marker comes agentapi's new conversation as
    # agentapi holds it.
    history = History(10)
    history.view(BEFORE)
    again = [BANNER, m(1, "user", "add a test", 101)]
    view = history.view(again)
    assert words(view) == [*words(BEFORE), ("agent", MARKER), *words(again)]
    ids = [msg.id for msg in view]
    assert ids == sorted(set(ids))


def test_a_question_asked_again_after_a_restart_is_shown_again() -> None:
    history = History(10)
    acp = [m(0, "user", "hello"), m(1, "agent", "Hi!"), m(2, "user", "migrate")]
    history.view(acp)
    # ACP starts again from its counter. The same first prompt alone says nothing new;
    # with the new reply it is a new conversation's, and shown as such.
    assert history.view([m(0, "user", "hello", 200)]) == acp
    view = history.view([m(0, "user", "hello", 200), m(1, "agent", "Hello again!", 201)])
    assert words(view) == [
        *words(acp),
        ("agent", MARKER),
        ("user", "hello"),
        ("agent", "Hello again!"),
    ]


def test_a_state_file_restored_after_the_welcome_screen_is_not_doubled() -> None:
    history = History(10)
    history.view(BEFORE)
    assert history.view([m(0, "agent", "", 100)]) == BEFORE
    # agentapi loads its state once the agent is ready: same ids, same words.
    assert history.view(BEFORE) == BEFORE
    assert not history.restarted


def test_an_older_state_file_says_nothing_the_held_conversation_lacks() -> None:
    longer = [*BEFORE, m(3, "user", "and the docs"), m(4, "agent", "Done.")]
    history = History(10)
    history.view(longer)
    assert history.view(BEFORE) == longer


def test_a_new_conversation_below_the_held_window_is_taken_for_new() -> None:
    long = [m(i, "user" if i % 2 else "agent", f"old {i}") for i in range(13)]
    history = History(10)
    history.view(long)
    # Ids 0 and 1 are older than every id held: they cannot be compared, so they are
    # shown (twice, if agentapi restored an old state file; never lost).
    fresh = [m(0, "user", "continue from the plan", 100), m(1, "agent", "Resuming.", 101)]
    view = history.view(fresh)
    assert words(view)[-3:] == [("agent", MARKER), *words(fresh)]


def test_an_acp_prompt_that_failed_takes_its_partial_reply_with_it() -> None:
    history = History(10)
    turn = [m(0, "user", "hello"), m(1, "agent", "Hi!"), m(2, "user", "migrate")]
    history.view([*turn, m(3, "agent", "Starting the migration: step 1 of")])
    # agentapi dropped the placeholder without a word: /messages no longer has it.
    assert history.view(turn) == turn


def test_an_agent_message_rewritten_after_the_fact_is_the_same_conversation() -> None:
    history = History(10)
    history.view(BEFORE)
    rewritten = [BANNER, BEFORE[1], m(2, "agent", "Fixed: it waited on a timer.")]
    assert history.view(rewritten) == rewritten


def test_an_empty_conversation_shows_nothing() -> None:
    history = History(10)
    assert history.view([]) == []
    assert history.view([m(0, "agent", "")]) == []
    assert history.view([m(0, "agent", ""), m(1, "user", "")]) == []


def test_two_restarts_make_two_markers_and_ids_keep_ascending() -> None:
    history = History(20)
    history.view(BEFORE)
    history.view([m(0, "agent", "second start", 100), m(1, "user", "b", 101)])
    view = history.view([m(0, "agent", "third start", 200), m(1, "user", "c", 201)])
    assert [msg.content for msg in view].count(MARKER) == 2
    ids = [msg.id for msg in view]
    assert ids == sorted(set(ids))
    assert words(view)[-2:] == [("agent", "third start"), ("user", "c")]


def test_the_window_keeps_the_newest_marker_first_when_the_new_conversation_fills_it() -> None:
    history = History(5)
    history.view(BEFORE)
    long = [m(i, "user" if i % 2 else "agent", f"new {i}", 100 + i) for i in range(10)]
    view = history.view(long)
    assert len(view) == 5
    assert view[0].content == MARKER
    assert words(view)[1:] == words(long[-4:])
    # What the window shows is enough to continue it: read back, it gives the same view.
    assert History(5, view).view(long) == view


def test_a_view_read_back_after_a_start_is_continued_not_doubled() -> None:
    history = History(10)
    history.view(BEFORE)
    fresh = [m(0, "agent", "Welcome back!", 100), m(1, "user", "add a test", 101)]
    view = history.view(fresh)
    # The daemon starts again; agentapi still holds the new conversation, grown.
    grown = [*fresh, m(2, "agent", "Added.", 102)]
    again = History(10, view)
    assert again.restarted
    assert again.view(grown) == history.view(grown)


def test_continues_looks_at_the_user_messages_the_window_can_show() -> None:
    previous = [m(i, "user" if i % 2 else "agent", f"m{i}") for i in range(20)]
    assert continues(previous[:10], previous[10:])  # older than the window: not checked
    assert not continues(previous, [m(0, "agent", "m0")])  # ids from 0 again
    assert not continues(previous, [])
    changed = [*previous[:-1], m(19, "user", "other words")]
    assert not continues(previous, changed)
    assert continues([m(0, "agent", "x")], [m(0, "agent", "y")])  # no user message held


def test_substantive_means_a_user_message_with_words() -> None:
    assert substantive([m(1, "user", "hi")])
    assert not substantive([m(0, "agent", "Welcome")])
    assert not substantive([m(1, "user", "")])


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_messages"):
        History(0)


def test_a_different_first_prompt_at_the_same_id_is_a_new_conversation() -> None:
    # ACP starts again from its counter: the first prompt has id 0 again, with other words.
    # The lowest id of the new conversation is compared too, not only those above it.
    history = History(10)
    acp = [m(0, "user", "hello"), m(1, "agent", "Hi!")]
    history.view(acp)
    view = history.view([m(0, "user", "deploy it", 200)])
    assert words(view) == [*words(acp), ("agent", MARKER), ("user", "deploy it")]
    assert not continues(acp, [m(0, "user", "deploy it")])


def test_a_window_of_one_shows_the_newest_message() -> None:
    conversation = [m(0, "agent", "Welcome"), m(1, "user", "fix it")]
    assert History(1).view(conversation) == conversation[-1:]


def test_a_window_of_one_shows_the_new_conversation_after_a_restart() -> None:
    # There is no room for a marker beside a message: the newest message is shown (the
    # marker alone would show nothing, and nothing would ever be posted again).
    history = History(1)
    assert history.view(BEFORE[:2]) == [BEFORE[1]]  # the person's words, the newest
    fresh = [m(0, "agent", "Welcome back!", 100), m(1, "user", "add a test", 101)]
    assert words(history.view(fresh)) == [("user", "add a test")]
    grown = [*fresh, m(2, "agent", "Added.", 102)]
    assert words(history.view(grown)) == [("agent", "Added.")]
    # Read back from the body, it continues the same way.
    assert History(1, history.view(grown)).view(grown) == history.view(grown)


def test_a_window_of_two_keeps_the_marker_and_the_newest_message() -> None:
    history = History(2)
    history.view(BEFORE)
    fresh = [m(0, "agent", "Welcome back!", 100), m(1, "user", "add a test", 101)]
    view = history.view(fresh)
    assert words(view) == [("agent", MARKER), ("user", "add a test")]
    assert [msg.id for msg in view] == [3, 5]


def test_a_held_conversation_without_words_is_replaced_without_a_marker() -> None:
    # Nothing was shown of it: there is nothing above for a marker to point at.
    history = History(10)
    assert history.view([m(0, "agent", ""), m(1, "user", "")]) == []
    fresh = [m(0, "agent", "Welcome", 100), m(1, "user", "add a test", 101)]
    assert history.view(fresh) == fresh
    assert not history.restarted


def test_a_view_read_back_that_ends_at_its_marker_continues_after_it() -> None:
    # The marker's id says where the ids after it begin, also with nothing after it yet.
    marker = Message(3, "agent", MARKER, at(100))
    history = History(10, [*BEFORE, marker])
    assert history.restarted
    fresh = [m(0, "agent", "Welcome back!", 100), m(1, "user", "add a test", 101)]
    view = history.view(fresh)
    assert words(view) == [*words(BEFORE), ("agent", MARKER), *words(fresh)]
    assert [msg.id for msg in view] == [0, 1, 2, 3, 4, 5]


# --- properties -------------------------------------------------------------------------

ROLES: tuple[Role, ...] = ("user", "agent")


@st.composite
def conversations(draw: st.DrawFn, start: int = 0) -> list[Message]:
    """An agentapi conversation: message 0 the agent's, then turns, ids from 0."""
    n = draw(st.integers(0, 14))
    texts = st.sampled_from(["", "a", "b", "Welcome", "fix it", "done"])
    return [
        Message(i, "agent" if i == 0 else draw(st.sampled_from(ROLES)), draw(texts), at(start + i))
        for i in range(n)
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(conversations(), min_size=1, max_size=6), st.integers(1, 12))
def test_every_view_is_a_valid_snapshot_and_reads_back_the_same(
    steps: list[list[Message]], limit: int
) -> None:
    history = History(limit)
    for current in steps:
        view = history.view(current)
        ids = [msg.id for msg in view]
        assert ids == sorted(set(ids)), "ids strictly ascending"
        assert len(view) <= limit
        assert all(msg.role in ROLES for msg in view)
        if not view:
            continue
        assert any(msg.content for msg in view), "empty is empty"
        # Read back from the body (a spool, the accepted record), the view continues the
        # same way.
        assert History(limit, view).view(current) == view


@settings(max_examples=200, deadline=None)
@given(conversations(), st.integers(3, 12))
def test_a_conversation_and_its_growth_never_make_a_marker(
    conversation: list[Message], limit: int
) -> None:
    history = History(limit)
    for end in range(len(conversation) + 1):
        view = history.view(conversation[:end])
        assert MARKER not in [msg.content for msg in view]

"""RelayPolicy: event sequences → the reports it wants, as a table.

Each case is a list of (step, expected) pairs: `expected` is what observe() (or, for the
DOWN/UP steps, agent_unreachable()/agent_reachable()) returns for that step — the newly
wanted report, or None when what the policy wants did not change.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.models import (
    AgentError,
    AgentStatus,
    AppState,
    Conversation,
    ErrorLevel,
    Event,
    Message,
    MessageUpdate,
    ReplayStarted,
    StatusChange,
)
from sidecar.relay.policy import NOT_RESPONDING, ErrorNews, RelayPolicy, StatusReport

Step: TypeAlias = Event | Literal["down", "up"]
Case: TypeAlias = list[tuple[Step, StatusReport | None]]

ROLES: tuple[Literal["user", "agent"], ...] = ("user", "agent")
DOWN: Literal["down"] = "down"
UP: Literal["up"] = "up"
REPLAY = ReplayStarted()
RUNNING = StatusChange(AgentStatus.RUNNING)
STABLE = StatusChange(AgentStatus.STABLE)


def at(second: int, fraction: str = "") -> str:
    return f"2025-03-01T10:{second // 60:02d}:{second % 60:02d}{fraction}Z"


def msg(mid: int, role: Literal["user", "agent"], text: str, second: int = 0) -> Message:
    return Message(id=mid, role=role, content=text, time=at(second))


def user(mid: int, text: str, second: int) -> MessageUpdate:
    return MessageUpdate(msg(mid, "user", text, second))


def agent(mid: int, text: str, second: int = 0) -> MessageUpdate:
    return MessageUpdate(msg(mid, "agent", text, second))


def err(text: str, second: int, fraction: str = "") -> AgentError:
    return AgentError(level=ErrorLevel.ERROR, message=text, time=at(second, fraction))


def warn(text: str, second: int) -> AgentError:
    return AgentError(level=ErrorLevel.WARNING, message=text, time=at(second))


def W(message: str, uri: str = "") -> StatusReport:
    return StatusReport(AppState.WORKING, message, uri)


def I(message: str, uri: str = "") -> StatusReport:  # noqa: E743
    return StatusReport(AppState.IDLE, message, uri)


def F(message: str, uri: str = "") -> StatusReport:
    return StatusReport(AppState.FAILURE, message, uri)


# A conversation as agentapi replays it on connect: messages, then the status.
HISTORY: list[Event] = [
    REPLAY,
    user(0, "fix the login bug", 1),
    agent(1, "Looking at auth.py…\nFixed: the token check was inverted.", 2),
    STABLE,
]
AFTER_HISTORY: Case = [
    (HISTORY[0], None),
    (HISTORY[1], None),
    (HISTORY[2], None),
    (HISTORY[3], I("Fixed: the token check was inverted.")),
]
IDLE_AFTER_HISTORY = I("Fixed: the token check was inverted.")


def run_case(policy: RelayPolicy, case: Case) -> list[StatusReport | None]:
    got: list[StatusReport | None] = []
    for step, _ in case:
        if step == DOWN:
            got.append(policy.agent_unreachable())
        elif step == UP:
            got.append(policy.agent_reachable())
        else:
            assert not isinstance(step, str)
            got.append(policy.observe(step))
    return got


CASES: dict[str, Case] = {
    # --- the first report follows agentapi's status --------------------------------------
    "first report: running → working": [
        (REPLAY, None),
        (RUNNING, W("")),
    ],
    "first report: stable → idle with the last reply line": AFTER_HISTORY,
    "first report: running with history → working with the newest request": [
        (REPLAY, None),
        (user(0, "write the docs\nthen the tests", 1), None),
        (agent(1, "Writing docs…", 2), None),
        (RUNNING, W("write the docs")),
    ],
    "nothing is wanted before a status is known": [
        (REPLAY, None),
        (user(0, "hello", 1), None),
        (agent(1, "hi", 2), None),
    ],
    # --- user messages ------------------------------------------------------------------
    "new user message → working; the turn ends stable → idle": [
        *AFTER_HISTORY,
        (user(2, "now add a test", 10), W("now add a test")),
        (RUNNING, None),
        (agent(3, "Adding test_login…", 11), None),
        (agent(3, "Adding test_login…\nAdded test_login; 12 tests pass.", 11), None),
        (STABLE, I("Added test_login; 12 tests pass.")),
    ],
    "a second request while working replaces the message": [
        *AFTER_HISTORY,
        (user(2, "add a test", 10), W("add a test")),
        (user(4, "and update the changelog", 12), W("and update the changelog")),
    ],
    "an older or repeated user message is not new": [
        *AFTER_HISTORY,
        (user(0, "fix the login bug", 1), None),
        (RUNNING, None),
    ],
    "user message before the first status only sets the baseline": [
        (user(0, "do it", 1), None),
        (STABLE, I("")),
        (user(0, "do it", 1), None),
    ],
    "the user message summary is its first meaningful line, cleaned": [
        *AFTER_HISTORY,
        (user(2, "\n\x1b[1m> deploy to staging\x1b[0m\nand tell me", 10), W("deploy to staging")),
    ],
    "agentapi restarted without state: lower id, later time is new": [
        *AFTER_HISTORY,
        (REPLAY, None),
        (RUNNING, None),
        (user(0, "start over", 30), W("start over")),
    ],
    # --- the terminal: running without a new user message -------------------------------
    "typing in the terminal (running, then stable) changes nothing": [
        *AFTER_HISTORY,
        (RUNNING, None),
        (STABLE, None),
        (RUNNING, None),
        (STABLE, None),
    ],
    "screen changes while running are not summarized": [
        *AFTER_HISTORY,
        (RUNNING, None),
        (agent(1, "Fixed: the token check was inverted.\n> partial inp", 2), None),
        (agent(1, "Fixed: the token check was inverted.\n> partial input", 2), None),
        (agent(1, "Fixed: the token check was inverted.", 2), None),
        (STABLE, None),
    ],
    "a terminal-driven turn updates the idle line when it settles": [
        *AFTER_HISTORY,
        (RUNNING, None),
        (agent(1, "Fixed: the token check was inverted.\nAlso renamed a helper.", 2), None),
        (STABLE, I("Also renamed a helper.")),
    ],
    "the final text arriving just after stable refines the idle line": [
        (REPLAY, None),
        (agent(0, "Working on it", 1), None),
        (STABLE, I("Working on it")),
        (agent(0, "Working on it\nAll done.", 1), I("All done.")),
        (agent(0, "Working on it\nAll done.", 1), None),
    ],
    # --- replay after a reconnect --------------------------------------------------------
    "reconnect replay of the same conversation → nothing": [
        *AFTER_HISTORY,
        (HISTORY[0], None),
        (HISTORY[1], None),
        (HISTORY[2], None),
        (HISTORY[3], None),
    ],
    "reconnect replay while working → nothing": [
        *AFTER_HISTORY,
        (user(2, "add a test", 10), W("add a test")),
        (REPLAY, None),
        (user(0, "fix the login bug", 1), None),
        (agent(1, "Fixed: the token check was inverted.", 2), None),
        (user(2, "add a test", 10), None),
        (agent(3, "Adding…", 11), None),
        (RUNNING, None),
    ],
    "a turn that ran and ended while disconnected → one idle report": [
        *AFTER_HISTORY,
        (REPLAY, None),
        (user(0, "fix the login bug", 1), None),
        (agent(1, "…", 2), None),
        (user(2, "add a test", 10), None),
        (agent(3, "Added test_login.", 11), None),
        (STABLE, I("Added test_login.")),
    ],
    "a request sent while disconnected, still running → working": [
        *AFTER_HISTORY,
        (REPLAY, None),
        (user(0, "fix the login bug", 1), None),
        (user(2, "add a test", 10), None),
        (agent(3, "Adding…", 11), None),
        (RUNNING, W("add a test")),
    ],
    "poll: the same conversation again → nothing": [
        (
            Conversation(
                (msg(0, "user", "hi", 1), msg(1, "agent", "Hello!", 2)), AgentStatus.STABLE
            ),
            I("Hello!"),
        ),
        (
            Conversation(
                (msg(0, "user", "hi", 1), msg(1, "agent", "Hello!", 2)), AgentStatus.STABLE
            ),
            None,
        ),
        (
            Conversation(
                (msg(0, "user", "hi", 1), msg(1, "agent", "Hello!", 2), msg(2, "user", "bye", 9)),
                AgentStatus.RUNNING,
            ),
            W("bye"),
        ),
    ],
    "state file (no status) only updates what is known": [
        (Conversation((msg(0, "user", "hi", 1),), None), None),
        (STABLE, I("")),
    ],
    # --- errors ---------------------------------------------------------------------------
    "a new error → failure with its text": [
        *AFTER_HISTORY,
        (user(2, "deploy", 10), W("deploy")),
        (
            err("\x1b[31mAPI error:\x1b[0m rate limited\n  retry later", 12),
            F("API error: rate limited retry later"),
        ),
        (STABLE, None),
        (RUNNING, None),
    ],
    "failure lasts until the next user message": [
        *AFTER_HISTORY,
        (err("model overloaded", 5), F("model overloaded")),
        (STABLE, None),
        (user(2, "try again", 10), W("try again")),
        (STABLE, I("Fixed: the token check was inverted.")),
    ],
    "the error replay after a reconnect → nothing": [
        *AFTER_HISTORY,
        (err("first", 3), F("first")),
        (user(2, "go on", 10), W("go on")),
        (STABLE, I("Fixed: the token check was inverted.")),
        (HISTORY[0], None),
        (HISTORY[1], None),
        (HISTORY[2], None),
        (user(2, "go on", 10), None),
        (STABLE, None),
        (err("first", 3), None),
    ],
    "an old error replayed on the first connect is ignored": [
        (REPLAY, None),
        (user(0, "one", 1), None),
        (user(2, "two", 20), None),
        (agent(3, "done two", 21), None),
        (STABLE, I("done two")),
        (err("belongs to request one", 5), None),
    ],
    "an error of the current request replayed on the first connect is reported": [
        *AFTER_HISTORY,
        (err("crashed mid-turn", 3), F("crashed mid-turn")),
    ],
    "errors are compared by time, not by text order": [
        *AFTER_HISTORY,
        (err("later", 4, ".5"), F("later")),
        (err("earlier", 4, ".05"), None),
        (err("earlier still", 4), None),
    ],
    "two errors with one timestamp are both new once": [
        *AFTER_HISTORY,
        (err("first", 4), F("first")),
        (err("second", 4), F("second")),
        (err("first", 4), None),
        (err("second", 4), None),
    ],
    "offsets are compared as instants": [
        *AFTER_HISTORY,
        (err("at 10:00:04Z", 4), F("at 10:00:04Z")),
        (
            AgentError(ErrorLevel.ERROR, "same instant +01:00", "2025-03-01T11:00:04+01:00"),
            F("same instant +01:00"),
        ),
        (AgentError(ErrorLevel.ERROR, "earlier -00:30", "2025-03-01T09:30:03-00:30"), None),
    ],
    "warnings → nothing, and they advance what was seen": [
        *AFTER_HISTORY,
        (warn("state file unreadable", 5), None),
        (err("older than the warning", 4), None),
        (err("newer", 6), F("newer")),
    ],
    "an error with no readable text still says failure": [
        *AFTER_HISTORY,
        (err("\x1b[2K───", 5), F("agent reported an error")),
    ],
    # --- agent death and recovery --------------------------------------------------------
    "agent unreachable → failure; back → the real state": [
        *AFTER_HISTORY,
        (DOWN, F(NOT_RESPONDING)),
        (UP, IDLE_AFTER_HISTORY),
    ],
    "while unreachable, events change what comes back, not the failure": [
        *AFTER_HISTORY,
        (DOWN, F(NOT_RESPONDING)),
        (
            Conversation(
                (msg(0, "user", "fix the login bug", 1), msg(2, "user", "also docs", 9)),
                None,
            ),
            None,
        ),
        (UP, W("also docs")),
    ],
    "recovery replay after death → the real state, once": [
        *AFTER_HISTORY,
        (user(2, "add a test", 10), W("add a test")),
        (DOWN, F(NOT_RESPONDING)),
        (REPLAY, None),
        (UP, W("add a test")),
        (user(2, "add a test", 10), None),
        (agent(3, "Added.", 11), None),
        (STABLE, I("Added.")),
    ],
    "unreachable before any status; back → nothing known yet": [
        (DOWN, F(NOT_RESPONDING)),
        (UP, None),
        (RUNNING, W("")),
    ],
    "an error then death: death wins, the error comes back": [
        *AFTER_HISTORY,
        (err("boom", 5), F("boom")),
        (DOWN, F(NOT_RESPONDING)),
        (UP, F("boom")),
    ],
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_default_mode(case: Case) -> None:
    policy = RelayPolicy()
    assert run_case(policy, case) == [expected for _, expected in case]


SCREEN_CASES: dict[str, Case] = {
    "every running transition is working": [
        *AFTER_HISTORY,
        (RUNNING, W("fix the login bug")),
        (STABLE, IDLE_AFTER_HISTORY),
        (RUNNING, W("fix the login bug")),
    ],
    "a replay repeating running is not new activity": [
        *AFTER_HISTORY,
        (RUNNING, W("fix the login bug")),
        (err("boom", 5), F("boom")),
        (HISTORY[0], None),
        (HISTORY[1], None),
        (HISTORY[2], None),
        (RUNNING, None),
        (err("boom", 5), None),
    ],
    "running after an error clears the failure": [
        *AFTER_HISTORY,
        (err("boom", 5), F("boom")),
        (RUNNING, W("fix the login bug")),
    ],
    "user messages still switch to working": [
        *AFTER_HISTORY,
        (user(2, "more", 10), W("more")),
        (RUNNING, None),
        (STABLE, IDLE_AFTER_HISTORY),
    ],
}


@pytest.mark.parametrize("case", list(SCREEN_CASES.values()), ids=list(SCREEN_CASES))
def test_screen_activity_mode(case: Case) -> None:
    policy = RelayPolicy(screen_activity=True)
    assert run_case(policy, case) == [expected for _, expected in case]


def test_uri_is_carried_on_every_report() -> None:
    uri = "https://ide.example/workspace"
    policy = RelayPolicy(uri=uri)
    case: Case = [
        *AFTER_HISTORY,
        (user(2, "go", 10), W("go", uri)),
        (err("boom", 11), F("boom", uri)),
        (DOWN, F(NOT_RESPONDING, uri)),
    ]
    got = run_case(policy, case)
    assert got[3] == I("Fixed: the token check was inverted.", uri)
    assert got[4:] == [W("go", uri), F("boom", uri), F(NOT_RESPONDING, uri)]


def test_wanted_tracks_the_last_report() -> None:
    policy = RelayPolicy()
    assert policy.wanted is None
    run_case(policy, AFTER_HISTORY)
    assert policy.wanted == IDLE_AFTER_HISTORY
    policy.agent_unreachable()
    assert policy.wanted == F(NOT_RESPONDING)


def test_reachable_before_any_status_clears_wanted() -> None:
    policy = RelayPolicy()
    policy.agent_unreachable()
    assert policy.agent_reachable() is None
    assert policy.wanted is None


def test_observe_error_says_what_each_error_was() -> None:
    policy = RelayPolicy()
    run_case(policy, AFTER_HISTORY)
    assert policy.observe_error(warn("careful", 5)) == (ErrorNews.WARNING, None)
    assert policy.observe_error(warn("careful", 5)) == (ErrorNews.REPLAYED, None)
    assert policy.observe_error(err("boom", 6)) == (ErrorNews.FAILURE, F("boom"))
    # The same error replayed after a reconnect, and an older one: nothing new.
    assert policy.observe_error(err("boom", 6)) == (ErrorNews.REPLAYED, None)
    assert policy.observe_error(err("older", 4)) == (ErrorNews.REPLAYED, None)
    # Two different errors may share a timestamp.
    assert policy.observe_error(err("also", 6)) == (ErrorNews.FAILURE, F("also"))


def test_error_from_before_the_newest_request_is_superseded() -> None:
    policy = RelayPolicy()
    run_case(policy, AFTER_HISTORY)
    policy.observe(MessageUpdate(msg(9, "user", "try again", 30)))
    news, wanted = policy.observe_error(err("stale failure", 20))
    assert news is ErrorNews.SUPERSEDED
    assert wanted is None
    assert policy.wanted is not None
    assert policy.wanted.state is AppState.WORKING


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (AppState.IDLE, I("Fixed: the token check was inverted.")),
        (
            AppState.COMPLETE,
            StatusReport(AppState.COMPLETE, "Fixed: the token check was inverted.", ""),
        ),
        (AppState.WORKING, W("fix the login bug")),
        (AppState.FAILURE, F("")),
    ],
)
def test_stop_report(state: AppState, expected: StatusReport) -> None:
    policy = RelayPolicy()
    run_case(policy, AFTER_HISTORY)
    assert policy.stop_report(state) == expected


def test_stop_report_failure_carries_the_current_failure() -> None:
    policy = RelayPolicy()
    run_case(policy, AFTER_HISTORY)
    policy.observe(err("boom", 5))
    assert policy.stop_report(AppState.FAILURE) == F("boom")
    policy.agent_unreachable()
    assert policy.stop_report(AppState.FAILURE) == F(NOT_RESPONDING)


def test_long_multibyte_messages_fit_160_bytes() -> None:
    policy = RelayPolicy()
    request = "请把登录模块重构一下，" * 20 + "😀"
    report = policy.observe(Conversation((msg(0, "user", request, 1),), AgentStatus.RUNNING))
    assert report is not None
    assert report.state is AppState.WORKING
    assert len(report.message.encode()) <= 160
    assert report.message.endswith("…")
    assert request.startswith(report.message.removesuffix("…"))


# --- properties -------------------------------------------------------------------------

_texts = st.lists(
    st.sampled_from(["a", "b", " ", "\n", "\x1b[1m", "─", "€", "😀", "> ", "\r"]), max_size=40
).map("".join)


@st.composite
def conversations(draw: st.DrawFn) -> list[Event]:
    """An agentapi connect: replayed messages (increasing ids and times), the status, then
    replayed errors (increasing times)."""
    events: list[Event] = [REPLAY]
    count = draw(st.integers(min_value=0, max_value=6))
    second = 0
    for mid in range(count):
        second += draw(st.integers(min_value=0, max_value=3))
        role = draw(st.sampled_from(ROLES))
        events.append(MessageUpdate(msg(mid, role, draw(_texts), second)))
    events.append(StatusChange(draw(st.sampled_from(list(AgentStatus)))))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        second += draw(st.integers(min_value=0, max_value=3))
        level = draw(st.sampled_from(list(ErrorLevel)))
        events.append(AgentError(level, draw(_texts), at(second)))
    return events


@settings(max_examples=300)
@given(first=conversations(), screen_activity=st.booleans())
def test_replaying_the_same_connect_again_wants_nothing(
    first: list[Event], screen_activity: bool
) -> None:
    policy = RelayPolicy(screen_activity=screen_activity)
    for event in first:
        policy.observe(event)
    wanted = policy.wanted
    assert wanted is not None  # a status was seen
    for event in first:
        assert policy.observe(event) is None
    assert policy.wanted == wanted


@settings(max_examples=300)
@given(
    events=st.lists(
        st.one_of(
            conversations().map(tuple),
            st.builds(
                lambda m, t: (MessageUpdate(msg(m, "user", t, m)),), st.integers(0, 9), _texts
            ),
            st.builds(
                lambda m, t: (MessageUpdate(msg(m, "agent", t, m)),), st.integers(0, 9), _texts
            ),
        ),
        max_size=6,
    ),
    screen_activity=st.booleans(),
)
def test_observe_returns_exactly_the_changes(
    events: list[tuple[Event, ...]], screen_activity: bool
) -> None:
    policy = RelayPolicy(screen_activity=screen_activity)
    for group in events:
        for event in group:
            before = policy.wanted
            report = policy.observe(event)
            if report is None:
                assert policy.wanted == before
            else:
                assert report == policy.wanted != before
                assert len(report.message.encode()) <= 160
                assert "\x1b" not in report.message
                assert "\n" not in report.message

"""Which app status Coder should show: the relay's decision, pure (no I/O, no clock).

`RelayPolicy` consumes the mirror's events and says which (state, message, uri) it wants
shown now; `sidecar.relay.delivery` gets that report to Coder.

Mapping (compatible with Coder's own reporter, `coder exp mcp server`):

* The first report follows agentapi's status: running → working, stable → idle.
* Afterwards a new user message (id greater than, or time later than, the newest one seen)
  → working; `running` alone is ignored, since a person typing in the terminal makes the
  screen change too (`screen_activity=True` turns a running *transition* into working);
  stable → idle.
* agent_error with level error, newer than every error seen so far and not older than the
  newest user message → failure with its text, until the next new user message. The
  errors agentapi replays on every connect are therefore never reported twice. Warnings
  are only logged.
* agentapi unreachable for longer than the grace period → failure "agent is not
  responding"; back to the real state when it answers again.

A replay (ReplayStarted … first status, or a whole Conversation) is applied at once when
it ends, like the mirror does, so the replay of an unchanged conversation wants nothing new.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

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
    time_ns,
)
from sidecar.summary import summarize_first_line, summarize_last_line, summarize_text

__all__ = ["NOT_RESPONDING", "ErrorNews", "RelayPolicy", "StatusReport"]

NOT_RESPONDING: Final = "agent is not responding"
_UNNAMED_ERROR: Final = "agent reported an error"


@dataclass(frozen=True, slots=True)
class StatusReport:
    state: AppState
    message: str
    uri: str


class ErrorNews(enum.Enum):
    """What an agent_error event turned out to be."""

    REPLAYED = "replayed"  # not newer than what was seen: a reconnect's replay
    WARNING = "warning"  # new, level warning: worth a log line, not a status
    FAILURE = "failure"  # new error: the task shows it
    SUPERSEDED = "superseded"  # new to us, but from a request the user has followed up


class _Replay:
    """The newest user and agent message of a replay in progress."""

    __slots__ = ("agent", "user")

    def __init__(self) -> None:
        self.agent: Message | None = None
        self.user: Message | None = None

    def put(self, msg: Message) -> None:
        if msg.role == "user":
            if self.user is None or msg.id >= self.user.id:
                self.user = msg
        elif self.agent is None or msg.id >= self.agent.id:
            self.agent = msg


class RelayPolicy:
    """Which status Coder should show. Pure: no I/O, no clock; times come from events."""

    __slots__ = (
        "_agent_content",
        "_agent_id",
        "_error_keys",
        "_error_ns",
        "_failure",
        "_idle_summary",
        "_phase",
        "_replay",
        "_screen_activity",
        "_status",
        "_unreachable",
        "_uri",
        "_user",
        "_user_ns",
        "_user_summary",
        "_wanted",
    )

    def __init__(self, *, screen_activity: bool = False, uri: str = "") -> None:
        self._screen_activity = screen_activity
        self._uri = uri
        self._status: AgentStatus | None = None
        # WORKING or IDLE once agentapi's first status is known; None before.
        self._phase: AppState | None = None
        self._user: Message | None = None
        self._user_ns: int | None = None
        self._user_summary = ""
        self._agent_id = -1
        self._agent_content = ""
        self._idle_summary = ""
        # The newest agent_error time seen (either level), and which errors carried
        # exactly that time: two different errors may share a timestamp.
        self._error_ns: int | None = None
        self._error_keys: set[tuple[ErrorLevel, str]] = set()
        self._failure: str | None = None
        self._unreachable = False
        self._replay: _Replay | None = None
        self._wanted: StatusReport | None = None

    @property
    def wanted(self) -> StatusReport | None:
        """The report wanted now; None until agentapi's status is known."""
        return self._wanted

    def observe(self, event: Event) -> StatusReport | None:
        """Apply one event; the newly wanted report, or None if it did not change."""
        if isinstance(event, MessageUpdate):
            if self._replay is not None:
                self._replay.put(event.message)
            elif event.message.role == "user":
                self._take_user(event.message)
            elif not self._take_agent(event.message):
                return None  # the hot path while the agent streams: nothing to derive
        elif isinstance(event, StatusChange):
            # The first status after a (re)connect ends agentapi's replay.
            self._commit_replay()
            self._take_status(event.status)
        elif isinstance(event, ReplayStarted):
            self._replay = _Replay()
        elif isinstance(event, Conversation):
            self._replay = _Replay()
            for msg in event.messages:
                self._replay.put(msg)
            self._commit_replay()
            if event.status is not None:
                self._take_status(event.status)
        elif isinstance(event, AgentError):
            return self.observe_error(event)[1]
        return self._update()

    def observe_error(self, event: AgentError) -> tuple[ErrorNews, StatusReport | None]:
        """Apply one agent_error: what it was, and the newly wanted report (or None)."""
        return self._take_error(event), self._update()

    def agent_unreachable(self) -> StatusReport | None:
        """agentapi stayed unreachable past the grace period: the failure report, or None
        if it was already wanted."""
        self._unreachable = True
        return self._update()

    def agent_reachable(self) -> StatusReport | None:
        """agentapi answers again: the real state, or None if nothing changed. After a
        failure reported before any status was known, `wanted` becomes None."""
        self._unreachable = False
        return self._update()

    def stop_report(self, state: AppState) -> StatusReport:
        """The report to send on shutdown when `state` is configured for it."""
        if state is AppState.WORKING:
            message = self._user_summary
        elif state is AppState.FAILURE:
            message = NOT_RESPONDING if self._unreachable else self._failure or ""
        else:
            message = summarize_last_line(self._agent_content)
        return StatusReport(state, message, self._uri)

    # --- internals -----------------------------------------------------------------------

    def _take_user(self, msg: Message) -> None:
        current = self._user
        ns = time_ns(msg.time)
        # Ids restart at 0 when agentapi restarts without its state file, so a later time
        # also makes a message new; a replay repeats both and is never new.
        newer = (
            current is None
            or msg.id > current.id
            or (ns is not None and self._user_ns is not None and ns > self._user_ns)
        )
        if newer:
            self._user = msg
            self._user_ns = ns
            self._user_summary = summarize_first_line(msg.content)
            if self._phase is not None:
                self._phase = AppState.WORKING
                self._failure = None
        elif current is not None and msg.id == current.id and msg.content != current.content:
            self._user = msg
            self._user_summary = summarize_first_line(msg.content)

    def _take_agent(self, msg: Message) -> bool:
        """Track the newest agent reply; True when the idle summary was recomputed."""
        if msg.id < self._agent_id:
            return False
        self._agent_id = msg.id
        if msg.content == self._agent_content:
            return False
        self._agent_content = msg.content
        # agentapi emits a tick's status before its messages, so the final text of a turn
        # may arrive just after `stable`. While running it changes many times a second
        # (also when a person types), and nothing is summarized then.
        if self._status is AgentStatus.STABLE:
            self._idle_summary = summarize_last_line(msg.content)
            return True
        return False

    def _commit_replay(self) -> None:
        replay = self._replay
        if replay is None:
            return
        self._replay = None
        # The replay is agentapi's whole current history: it may be shorter than what was
        # seen (a restart), so its newest agent message replaces ours even with a lower
        # id. An empty one keeps the last reply's text for the summary, but not its id.
        self._agent_id = -1
        if replay.agent is not None:
            self._take_agent(replay.agent)
        if replay.user is not None:
            self._take_user(replay.user)

    def _take_status(self, status: AgentStatus) -> None:
        previous, self._status = self._status, status
        if status is AgentStatus.STABLE:
            self._phase = AppState.IDLE
            self._idle_summary = summarize_last_line(self._agent_content)
        elif self._phase is None:
            self._phase = AppState.WORKING
        elif self._screen_activity and previous is not AgentStatus.RUNNING:
            # A transition only: a replay repeating `running` is not new activity.
            self._phase = AppState.WORKING
            self._failure = None

    def _new_error_ns(self, event: AgentError) -> int | None:
        """The error's time if it is new, else None."""
        ns = time_ns(event.time)
        if ns is None:
            # Cannot be ordered against the others, so it cannot be told from a replay.
            return None
        if self._error_ns is None or ns > self._error_ns:
            return ns
        if ns == self._error_ns and (event.level, event.message) not in self._error_keys:
            return ns
        return None

    def _take_error(self, event: AgentError) -> ErrorNews:
        ns = self._new_error_ns(event)
        if ns is None:
            return ErrorNews.REPLAYED
        key = (event.level, event.message)
        if self._error_ns is None or ns > self._error_ns:
            self._error_ns = ns
            self._error_keys = {key}
        else:
            self._error_keys.add(key)
        if event.level is not ErrorLevel.ERROR:
            return ErrorNews.WARNING
        if self._user_ns is not None and ns < self._user_ns:
            return ErrorNews.SUPERSEDED
        self._failure = summarize_text(event.message) or _UNNAMED_ERROR
        return ErrorNews.FAILURE

    def _derive(self) -> StatusReport | None:
        if self._unreachable:
            return StatusReport(AppState.FAILURE, NOT_RESPONDING, self._uri)
        if self._failure is not None:
            return StatusReport(AppState.FAILURE, self._failure, self._uri)
        if self._phase is AppState.WORKING:
            return StatusReport(AppState.WORKING, self._user_summary, self._uri)
        if self._phase is AppState.IDLE:
            return StatusReport(AppState.IDLE, self._idle_summary, self._uri)
        return None

    def _update(self) -> StatusReport | None:
        wanted = self._derive()
        if wanted == self._wanted:
            return None
        self._wanted = wanted
        return wanted

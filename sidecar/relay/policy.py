"""State relay: which app status Coder should show, delivered with the fewest PATCHes.

`RelayPolicy` is the decision, pure: it consumes the mirror's events and says which
(state, message, uri) it wants shown now. `Relay` is the delivery: one slot holding the
newest wanted report, at most one PATCH per `min_interval`, retries that always carry the
newest report, and dedupe against what the server last *accepted*.

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

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Final, Protocol

import structlog

from sidecar.backoff import Deadline
from sidecar.coder.client import Outcome, Result
from sidecar.coder.retry import RetryPolicy
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
from sidecar.runtime.metrics import Metrics
from sidecar.summary import summarize_first_line, summarize_last_line, summarize_text

__all__ = ["NOT_RESPONDING", "Relay", "RelayPolicy", "StatusClient", "StatusReport"]

log = structlog.get_logger(__name__)

NOT_RESPONDING: Final = "agent is not responding"
_UNNAMED_ERROR: Final = "agent reported an error"
_LOGGED_ERROR_CHARS: Final = 500


@dataclass(frozen=True, slots=True)
class StatusReport:
    state: AppState
    message: str
    uri: str


# --- the decision -----------------------------------------------------------------------


def _time_ns(stamp: str) -> int | None:
    """An RFC 3339 time (as validated by sidecar.models) as integer nanoseconds since the
    epoch, exact to the nanosecond agentapi writes; None for an impossible date. Strings
    do not compare: Go drops trailing zeros ("…:05Z" vs "…:05.1Z") and offsets differ."""
    try:
        day = date(int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10])).toordinal()
        hour, minute, second = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
    except ValueError:
        return None
    rest = stamp[19:]
    fraction = 0
    if rest.startswith("."):
        digits = len(rest) - len(rest[1:].lstrip("0123456789"))
        fraction = int(rest[1:digits].ljust(9, "0"))
        rest = rest[digits:]
    offset = 0
    if rest[:1] in ("+", "-"):
        offset = (int(rest[1:3]) * 60 + int(rest[4:6])) * 60 * (1 if rest[0] == "+" else -1)
    seconds = day * 86_400 + hour * 3600 + minute * 60 + second - offset
    return seconds * 1_000_000_000 + fraction


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
            self._take_error(event)
        return self._update()

    def is_new_error(self, event: AgentError) -> bool:
        """Whether `event` is newer than every agent_error seen (replays are not)."""
        return self._new_error_ns(event) is not None

    def agent_unreachable(self) -> StatusReport:
        """agentapi stayed unreachable past the grace period: the failure report."""
        self._unreachable = True
        self._update()
        assert self._wanted is not None
        return self._wanted

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
        ns = _time_ns(msg.time)
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
        ns = _time_ns(event.time)
        if ns is None:
            # Cannot be ordered against the others, so it cannot be told from a replay.
            return None
        if self._error_ns is None or ns > self._error_ns:
            return ns
        if ns == self._error_ns and (event.level, event.message) not in self._error_keys:
            return ns
        return None

    def _take_error(self, event: AgentError) -> None:
        ns = self._new_error_ns(event)
        if ns is None:
            return
        key = (event.level, event.message)
        if self._error_ns is None or ns > self._error_ns:
            self._error_ns = ns
            self._error_keys = {key}
        else:
            self._error_keys.add(key)
        if event.level is not ErrorLevel.ERROR:
            return
        if self._user_ns is not None and ns < self._user_ns:
            return  # it belongs to a request the user has since followed up
        self._failure = summarize_text(event.message) or _UNNAMED_ERROR

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


# --- the delivery -----------------------------------------------------------------------


class StatusClient(Protocol):
    """What the relay needs of sidecar.coder.client.CoderClient."""

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str
    ) -> Result: ...

    async def reload_token(self) -> bool: ...


class Relay:
    """Delivers RelayPolicy's wanted report. `observe` and `set_agent_reachable` are
    synchronous and cheap (the SSE reader calls them); all waiting happens in `run`."""

    __slots__ = (
        "_accepted",
        "_client",
        "_clock",
        "_grace",
        "_idle_settle",
        "_inflight",
        "_last_patch_at",
        "_metrics",
        "_min_interval",
        "_not_before",
        "_not_found_logged",
        "_policy",
        "_rejected",
        "_retry",
        "_running",
        "_slug",
        "_stopped",
        "_stopping",
        "_unreachable_reported",
        "_unreachable_since",
        "_wake",
        "_wanted_since",
        "_wanted_state",
    )

    def __init__(
        self,
        *,
        client: StatusClient,
        slug: str,
        policy: RelayPolicy,
        metrics: Metrics,
        grace: float = 30.0,
        min_interval: float = 1.0,
        retry: RetryPolicy | None = None,
        idle_settle: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0, got {grace}")
        if not min_interval >= 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval}")
        self._client = client
        self._slug = slug
        self._policy = policy
        self._metrics = metrics
        self._grace = grace
        self._min_interval = min_interval
        self._retry = retry or RetryPolicy()
        self._idle_settle = idle_settle
        self._wanted_state: AppState | None = None
        self._wanted_since = float("-inf")
        self._clock = clock

        self._accepted: StatusReport | None = None
        self._rejected: StatusReport | None = None
        self._last_patch_at = float("-inf")
        self._not_before = float("-inf")
        self._not_found_logged = False
        self._unreachable_since: float | None = None
        self._unreachable_reported = False
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._running = False
        self._inflight: asyncio.Task[Result] | None = None

    # --- what the rest of the daemon sees ---------------------------------------------------

    @property
    def accepted(self) -> StatusReport | None:
        """The report the server last accepted."""
        return self._accepted

    @property
    def pending(self) -> bool:
        """A wanted report is not yet accepted (and was not refused with a 400)."""
        return self._due_report() is not None

    def observe(self, event: Event) -> None:
        new_error = (
            event if isinstance(event, AgentError) and self._policy.is_new_error(event) else None
        )
        wanted = self._policy.observe(event)
        changed = wanted is not None
        if wanted is not None:
            if wanted.state is not self._wanted_state:
                # The settle for an idle report runs from when the state turned, so text
                # that keeps changing cannot hold the report back for longer.
                self._wanted_state, self._wanted_since = wanted.state, self._clock()
            self._wake.set()
        if new_error is not None:
            fields = {"message": new_error.message[:_LOGGED_ERROR_CHARS], "time": new_error.time}
            if new_error.level is ErrorLevel.WARNING:
                log.warning("relay.agent_warning", **fields)
            elif changed:
                log.error("relay.agent_error", **fields)
            else:
                # Replayed on the first connect, from a request since followed up.
                log.debug("relay.agent_error_superseded", **fields)

    def credentials_changed(self) -> None:
        """The token file was rotated: a 401 back-off in progress is pointless now."""
        if self._retry.last_outcome is Outcome.UNAUTHORIZED:
            self._not_before = float("-inf")
            self._wake.set()

    def set_agent_reachable(self, reachable: bool) -> None:
        if not reachable:
            if self._unreachable_since is None:
                self._unreachable_since = self._clock()
                self._wake.set()  # run() arms the grace timer
            return
        if self._unreachable_since is None:
            return
        self._unreachable_since = None
        if self._unreachable_reported:
            self._unreachable_reported = False
            self._policy.agent_reachable()
            log.info("relay.agent_reachable")
            self._wake.set()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("Relay.run() is already running")
        self._running = True
        self._stopped.clear()
        try:
            while not self._stopping:
                self._wake.clear()
                now = self._clock()
                timeout = self._check_grace(now)
                report = self._due_report()
                if report is not None:
                    due = self._next_send_at()
                    if report.state is AppState.IDLE:
                        # A turn's last words often land just after `stable`: wait a
                        # moment so one idle report carries them, not two.
                        due = max(due, self._wanted_since + self._idle_settle)
                    if due <= now:
                        await self._send(report)
                        continue
                    timeout = due - now if timeout is None else min(timeout, due - now)
                await self._wait(timeout)
        finally:
            self._running = False
            self._stopped.set()

    def _check_grace(self, now: float) -> float | None:
        """Report the agent as not responding once the grace period is over; else the
        seconds until it will be (None when no timer runs)."""
        since = self._unreachable_since
        if since is None or self._unreachable_reported:
            return None
        left = since + self._grace - now
        if left > 0:
            return left
        self._unreachable_reported = True
        self._policy.agent_unreachable()
        log.warning("relay.agent_unreachable", grace_s=self._grace)
        return None

    def _due_report(self) -> StatusReport | None:
        wanted = self._policy.wanted
        if wanted is None or wanted == self._accepted or wanted == self._rejected:
            return None
        return wanted

    def _next_send_at(self) -> float:
        return max(self._last_patch_at + self._min_interval, self._not_before)

    async def _wait(self, timeout: float | None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _send(self, report: StatusReport) -> Result | None:
        """One PATCH of `report`, recorded; None when stop() cut it short."""
        self._last_patch_at = self._clock()
        # A task of its own, so stop() can abandon it without cancelling run().
        task = asyncio.create_task(
            self._client.patch_app_status(
                slug=self._slug, state=report.state, message=report.message, uri=report.uri
            )
        )
        self._inflight = task
        try:
            await asyncio.wait((task,))
        finally:
            self._inflight = None
            if not task.done():  # our caller was cancelled (a stop deadline)
                task.cancel()
                await asyncio.wait((task,))
        if task.cancelled():
            return None
        exc = task.exception()
        if exc is not None:
            # The client reports failures as values; anything else is a bug worth a
            # traceback, but not worth losing the relay over.
            log.error("relay.client_error", exc_info=exc)
            result = Result(Outcome.RETRY, None, type(exc).__name__, None, 0.0)
        else:
            result = task.result()
        await self._record(report, result)
        return result

    async def _record(self, report: StatusReport, result: Result) -> None:
        self._metrics.relay_patches.labels(result=result.outcome.value).inc()
        fields = {
            "state": str(report.state),
            "status": result.status,
            "latency_ms": round(result.latency_ms, 1),
            "attempt": self._retry.failures + 1,
        }
        if result.outcome is Outcome.OK:
            log.info("relay.patched", **fields)
            self._accepted = report
            self._retry.succeeded()
            self._not_before = float("-inf")
            self._not_found_logged = False
            return
        if result.outcome is Outcome.REJECTED:
            # The same report would be refused the same way (unknown slug, bad state):
            # wait for a different one.
            log.error(
                "relay.rejected",
                detail=result.detail,
                message_bytes=len(report.message.encode()),
                **fields,
            )
            self._rejected = report
            self._retry.succeeded()
            return
        changed = result.outcome is Outcome.UNAUTHORIZED and await self._reload_token()
        delay = self._retry.failed(result, token_changed=changed)
        if result.outcome is Outcome.RETRY:
            log.warning("relay.retry", detail=result.detail, retry_in_s=round(delay, 2), **fields)
        elif result.outcome is Outcome.NOT_FOUND:
            if not self._not_found_logged:
                log.error(
                    "relay.not_found",
                    detail=result.detail,
                    hint="Coder does not know the app-status endpoint (too old?) or a proxy "
                    "is in the way",
                    retry_in_s=round(delay, 1),
                    **fields,
                )
                self._not_found_logged = True
        else:
            log.error(
                "relay.unauthorized",
                detail=result.detail,
                token_changed=changed,
                retry_in_s=round(delay, 1),
                **fields,
            )
        self._not_before = self._clock() + delay

    async def _reload_token(self) -> bool:
        try:
            return await self._client.reload_token()
        except Exception as exc:  # a token file that vanished must not end the relay
            log.error("relay.token_reload_failed", error=str(exc)[:_LOGGED_ERROR_CHARS])
            return False

    # --- stop -------------------------------------------------------------------------------

    async def stop(self, on_stop: AppState | None, timeout: float) -> bool:
        """Stop `run()`, abandoning a PATCH in flight. With `on_stop`, send that state
        (with the current summary) within `timeout`. True when it was delivered or nothing
        was needed. Safe to call twice."""
        deadline = Deadline(timeout, clock=self._clock)
        self._stopping = True
        self._wake.set()
        if self._inflight is not None:
            self._inflight.cancel()
        if self._running:
            try:
                async with asyncio.timeout(deadline.remaining()):
                    await self._stopped.wait()
            except TimeoutError:
                log.warning("relay.stop_timeout")
                return on_stop is None
        if on_stop is None:
            return True
        report = self._policy.stop_report(on_stop)
        if report == self._accepted:
            return True
        return await self._deliver(report, deadline)

    async def _deliver(self, report: StatusReport, deadline: Deadline) -> bool:
        while True:
            # The rate limit and any back-off the server asked for still hold; give up
            # when the wait would pass the deadline rather than after it.
            wait = self._next_send_at() - self._clock()
            if wait >= deadline.remaining():
                log.warning("relay.stop_incomplete", state=str(report.state))
                return False
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                async with asyncio.timeout(deadline.remaining()):
                    result = await self._send(report)
            except TimeoutError:
                log.warning("relay.stop_incomplete", state=str(report.state))
                return False
            if result is None or result.outcome is Outcome.REJECTED:
                return False
            if result.outcome is Outcome.OK:
                return True

"""Relay (the delivery loop) against an in-memory Coder client with scripted answers.

Every test runs on tests.fakes.clock's virtual loop and hands the relay that loop's clock,
so the times asserted are exactly the ones the relay chose, and "no PATCH follows" is
shown by letting the clock run past every moment one could have come (`run_until`) and
looking. An hour of back-off takes no real time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from sidecar.backoff import Backoff
from sidecar.coder.client import Result
from sidecar.coder.outcomes import JSON_OK, Outcome, classify
from sidecar.coder.retry import RetryPolicy
from sidecar.models import AgentError, AppState, ErrorLevel, Event, ReplayStarted
from sidecar.relay.delivery import Relay, retry_policy
from sidecar.relay.policy import NOT_RESPONDING, RelayPolicy, StatusReport
from sidecar.runtime.metrics import Metrics
from tests.events import RUNNING, STABLE, agent, at, user
from tests.fakes.clock import on_virtual_clock

SLUG = "claude-code"
# coderd's message for a resource it does not know; any other 404 is a missing route.
RESOURCE_NOT_FOUND = "Resource not found or you do not have access to this resource."


def ok() -> Result:
    return Result(Outcome.OK, 200, "", None, 3.0)


def fail(status: int | None, message: str = "", retry_after: float | None = None) -> Result:
    """What CoderClient returns for an error answer (status None: no answer at all)."""
    outcome = classify(status, expect=JSON_OK, message=message or None)
    return Result(outcome, status, message, retry_after, 2.0)


def not_coder() -> Result:
    """A 200 without a JSON object: a login page in front of Coder."""
    outcome = classify(200, expect=JSON_OK, json_body=False)
    return Result(outcome, 200, "HTTP 200 text/html", None, 2.0)


class Ceiling(random.Random):
    """Full jitter always drawing its upper bound: a back-off schedule at its ceilings."""

    def uniform(self, a: float, b: float) -> float:
        return b


class PatchStorm(BaseException):
    """More PATCHes than any test makes: the relay sends in a loop, and on a virtual clock
    such a loop never lets time pass, so no wait in the test would ever end. A
    BaseException, so that the relay's guard against a failing client cannot retry it."""


MAX_CALLS = 100


@dataclass(frozen=True, slots=True)
class Call:
    report: StatusReport
    slug: str
    at: float  # the loop's clock when the PATCH started
    timeout: float | None  # the per-request bound the relay passed


class RecordingClient:
    """The StatusClient surface. Each PATCH takes `latency` seconds of the loop's clock,
    then answers from the script (an exception there is raised), or 200 once it is empty."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.script: collections.deque[Result | Exception] = collections.deque()
        self.latency = 0.0
        self.reloads = 0
        self.reload_changes = False
        self.cancelled = 0

    def results(self, *results: Result | Exception) -> None:
        self.script.extend(results)

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str, timeout: float | None = None
    ) -> Result:
        self.calls.append(Call(StatusReport(state, message, uri), slug, now(), timeout))
        if len(self.calls) > MAX_CALLS:
            raise PatchStorm(f"{len(self.calls)} PATCHes by {now()} s")
        try:
            await asyncio.sleep(self.latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        answer = self.script.popleft() if self.script else ok()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def reload_token(self) -> bool:
        self.reloads += 1
        return self.reload_changes

    @property
    def reports(self) -> list[StatusReport]:
        return [c.report for c in self.calls]

    @property
    def times(self) -> list[float]:
        return [c.at for c in self.calls]


def now() -> float:
    return asyncio.get_running_loop().time()


async def run_until(when: float) -> None:
    """Let the clock run to `when`: whatever the relay would do before then is done."""
    assert when > now(), f"{when} is not ahead of {now()}"
    await asyncio.sleep(when - now())


# --- events -----------------------------------------------------------------------------


HISTORY: list[Event] = [ReplayStarted(), user(0, "fix the bug"), agent(1, "Fixed it."), STABLE]
IDLE = StatusReport(AppState.IDLE, "Fixed it.", "")
COMPLETE = StatusReport(AppState.COMPLETE, "Fixed it.", "")


def working(text: str) -> StatusReport:
    return StatusReport(AppState.WORKING, text, "")


def feed(relay: Relay, events: Iterable[Event]) -> None:
    for event in events:
        relay.observe(event)


def events_named(
    logs: Iterable[MutableMapping[str, Any]], name: str
) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


# --- the relay under test ---------------------------------------------------------------


@dataclass
class Harness:
    relay: Relay
    client: RecordingClient
    metrics: Metrics
    task: asyncio.Task[None]

    def count(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "sidecar_relay_patches_total", {"result": result}
        )
        return value or 0.0

    def states(self) -> dict[str, float | None]:
        """sidecar_relay_state by state (None: no such series)."""
        return {
            state.value: self.metrics.registry.get_sample_value(
                "sidecar_relay_state", {"state": state.value}
            )
            for state in AppState
        }


@contextlib.asynccontextmanager
async def running(
    *,
    min_interval: float = 0.0,
    retry: RetryPolicy | None = None,
    grace: float = 30.0,
    # No settle unless a test is about it: it would only shift every idle PATCH.
    idle_settle: float = 0.0,
    policy: RelayPolicy | None = None,
) -> AsyncIterator[Harness]:
    """A relay on the running (virtual) loop's clock, its `run()` started; stopped after."""
    client = RecordingClient()
    metrics = Metrics()
    relay = Relay(
        client=client,
        slug=SLUG,
        policy=policy or RelayPolicy(),
        metrics=metrics,
        clock=asyncio.get_running_loop().time,
        min_interval=min_interval,
        # Transient failures retry at once unless a test is about their schedule; the
        # slower schedules keep their real figures.
        retry=retry or RetryPolicy(transient=Backoff(base=0.0, cap=0.0)),
        grace=grace,
        idle_settle=idle_settle,
    )
    harness = Harness(relay, client, metrics, asyncio.create_task(relay.run()))
    try:
        yield harness
    finally:
        await relay.stop(None, timeout=1.0)
        await harness.task


# --- delivery ---------------------------------------------------------------------------


@on_virtual_clock
async def test_first_report_is_patched_and_logged() -> None:
    async with running() as h:
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(1.0)
        assert h.client.reports == [IDLE]
        assert h.client.times == [0.0]
        # While running, a PATCH is bounded by the client's own timeout.
        assert h.client.calls[0].timeout is None
        assert h.client.calls[0].slug == SLUG
        assert h.relay.accepted == IDLE
        assert events_named(logs, "relay.patched") == [
            {
                "event": "relay.patched",
                "log_level": "info",
                "state": "idle",
                "message_bytes": len(IDLE.message.encode()),
                "status": 200,
                "latency_ms": 3.0,
                "attempt": 1,
            }
        ]
        assert h.count("ok") == 1
        assert not h.relay.pending


@on_virtual_clock
async def test_ten_rapid_changes_make_at_most_two_patches() -> None:
    async with running(min_interval=0.5) as h:
        feed(h.relay, HISTORY)
        await run_until(0.125)
        for i in range(10):
            h.relay.observe(user(10 + i, f"request {i}"))
        await run_until(60.0)
        assert h.client.reports == [IDLE, working("request 9")]
        assert h.client.times == [0.0, 0.5]
        assert not h.relay.pending


@on_virtual_clock
async def test_changes_spread_over_the_interval_coalesce() -> None:
    async with running(min_interval=4.0) as h:
        feed(h.relay, HISTORY)
        for i in range(10):
            # The loop sees each change, and must still hold it back.
            await run_until(0.25 * (i + 1))
            h.relay.observe(user(10 + i, f"request {i}"))
        await run_until(3.875)
        assert h.client.reports == [IDLE]
        await run_until(60.0)
        assert h.client.reports == [IDLE, working("request 9")]
        assert h.client.times == [0.0, 4.0]


@on_virtual_clock
async def test_the_interval_is_measured_on_the_injected_clock() -> None:
    # Were it measured on wall time, the second PATCH would not come on this clock at all.
    async with running(min_interval=1000.0) as h:
        feed(h.relay, HISTORY)
        await run_until(1.0)
        h.relay.observe(user(2, "second"))
        await run_until(2.0)
        h.relay.observe(user(3, "third"))
        await run_until(999.5)
        assert h.client.reports == [IDLE]
        await run_until(1000.5)
        assert h.client.reports == [IDLE, working("third")]
        assert h.client.times == [0.0, 1000.0]


@on_virtual_clock
async def test_nothing_is_patched_while_nothing_is_known() -> None:
    async with running() as h:
        feed(h.relay, [ReplayStarted(), user(0, "hi"), agent(1, "hello")])
        await run_until(3600.0)
        assert h.client.calls == []
        h.relay.observe(STABLE)
        await run_until(3601.0)
        assert h.client.reports == [StatusReport(AppState.IDLE, "hello", "")]
        assert h.client.times == [3600.0]


@on_virtual_clock
async def test_observe_never_waits_for_a_patch_in_flight() -> None:
    async with running() as h:
        h.client.latency = 1.0
        feed(h.relay, HISTORY)
        await run_until(0.5)
        assert len(h.client.calls) == 1  # in flight until 1.0
        started = time.perf_counter()
        for i in range(1000):
            h.relay.observe(agent(1, f"screen {i}"))
            h.relay.observe(user(2 + i, f"request {i}"))
        assert time.perf_counter() - started < 1.0
        assert now() == 0.5
        assert len(h.client.calls) == 1
        await run_until(10.0)
        assert h.client.reports == [IDLE, working("request 999")]
        assert h.client.times == [0.0, 1.0]


# --- dedupe -----------------------------------------------------------------------------


@on_virtual_clock
async def test_reconnect_replay_sends_nothing() -> None:
    async with running() as h:
        feed(h.relay, HISTORY)
        await run_until(1.0)
        for _ in range(3):
            feed(h.relay, HISTORY)  # reconnects replay the unchanged conversation
            h.relay.observe(AgentError(ErrorLevel.WARNING, "old warning", at(0)))
        await run_until(3600.0)
        assert h.client.reports == [IDLE]
        h.relay.observe(user(5, "next"))
        await run_until(3601.0)
        assert h.client.reports == [IDLE, working("next")]


@on_virtual_clock
async def test_a_flip_back_to_the_accepted_report_sends_nothing() -> None:
    policy = RelayPolicy()
    async with running(policy=policy, min_interval=1000.0) as h:
        feed(h.relay, HISTORY)
        await run_until(1.0)
        assert h.relay.accepted == IDLE
        h.relay.observe(user(2, "go"))  # working…
        policy.agent_unreachable()  # …failure…
        policy.agent_reachable()  # …working again, still held back by the interval
        h.relay.observe(STABLE)  # …and idle: what the server already shows
        assert not h.relay.pending
        await run_until(2000.0)  # well past the interval: still nothing to send
        assert h.client.reports == [IDLE]
        h.relay.observe(user(3, "after"))
        await run_until(2001.0)
        assert h.client.reports == [IDLE, working("after")]
        assert h.client.times == [0.0, 2000.0]


@on_virtual_clock
async def test_agent_warnings_are_logged_once_and_not_relayed() -> None:
    async with running() as h:
        feed(h.relay, HISTORY)
        await run_until(1.0)
        warning = AgentError(ErrorLevel.WARNING, "Failed to restore previous session", at(5))
        with capture_logs() as logs:
            h.relay.observe(warning)
            h.relay.observe(warning)  # replayed on a reconnect
            await run_until(2.0)
            assert h.client.reports == [IDLE]
            h.relay.observe(AgentError(ErrorLevel.ERROR, "boom", at(6)))
            await run_until(3.0)
        assert h.client.reports == [IDLE, StatusReport(AppState.FAILURE, "boom", "")]
        agent_logs = [
            (e["event"], e["message"]) for e in logs if e["event"].startswith("relay.agent")
        ]
        assert agent_logs == [
            ("relay.agent_warning", "Failed to restore previous session"),
            ("relay.agent_error", "boom"),
        ]


# --- retries ----------------------------------------------------------------------------


@on_virtual_clock
async def test_400_is_logged_and_not_retried() -> None:
    async with running() as h:
        h.client.results(fail(400, "Failed to find workspace app.: No app found"))
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(3600.0)
            assert h.client.reports == [IDLE]
            assert not h.relay.pending
            h.relay.observe(user(2, "different"))
            await run_until(3601.0)
        assert h.client.reports == [IDLE, working("different")]
        rejected = events_named(logs, "relay.rejected")
        assert len(rejected) == 1
        assert rejected[0]["log_level"] == "error"
        assert rejected[0]["detail"] == "Failed to find workspace app.: No app found"
        assert rejected[0]["status"] == 400
        assert rejected[0]["state"] == "idle"
        assert "CODER_MCP_APP_STATUS_SLUG" in rejected[0]["hint"]
        assert h.count("rejected") == 1


@on_virtual_clock
async def test_a_rejected_report_is_not_sent_again() -> None:
    async with running() as h:
        h.client.results(ok(), fail(400, "Invalid state"))
        feed(h.relay, HISTORY)
        await run_until(1.0)
        h.relay.observe(user(2, "go"))
        await run_until(2.0)
        h.relay.observe(STABLE)  # idle again: accepted before, nothing to send
        h.relay.observe(user(3, "go"))  # same text, newer message: working "go" again
        await run_until(3600.0)
        assert h.client.reports == [IDLE, working("go")]
        assert not h.relay.pending
        h.relay.observe(user(4, "other"))
        await run_until(3601.0)
        assert h.client.reports == [IDLE, working("go"), working("other")]


@on_virtual_clock
async def test_the_state_gauge_follows_what_coder_accepted() -> None:
    async with running() as h:
        assert h.states() == {"working": 0, "idle": 0, "complete": 0, "failure": 0}
        h.client.results(ok(), fail(400, "Invalid state"))
        feed(h.relay, HISTORY)
        await run_until(1.0)
        assert h.states() == {"working": 0, "idle": 1, "complete": 0, "failure": 0}
        h.relay.observe(user(2, "go"))  # refused: the gauge keeps the accepted state
        await run_until(2.0)
        assert h.count("rejected") == 1
        assert h.states() == {"working": 0, "idle": 1, "complete": 0, "failure": 0}
        h.relay.observe(user(3, "other"))
        await run_until(3.0)
        assert h.states() == {"working": 1, "idle": 0, "complete": 0, "failure": 0}


@on_virtual_clock
async def test_5xx_and_connection_errors_are_retried_then_delivered() -> None:
    async with running() as h:
        h.client.results(fail(503, "unavailable"), fail(None, "refused"), fail(502, "bad gw"))
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(1.0)
        assert h.client.reports == [IDLE] * 4
        assert h.client.times == [0.0] * 4  # this policy's transient back-off is zero
        assert h.relay.accepted == IDLE
        retries = events_named(logs, "relay.retry")
        assert [(e["attempt"], e["status"], e["detail"]) for e in retries] == [
            (1, 503, "unavailable"),
            (2, None, "refused"),
            (3, 502, "bad gw"),
        ]
        assert [e["attempt"] for e in events_named(logs, "relay.patched")] == [4]
        assert h.count("retry") == 3
        assert h.count("ok") == 1


@on_virtual_clock
async def test_a_retry_carries_the_newest_report() -> None:
    async with running() as h:
        h.client.latency = 1.0
        h.client.results(fail(503))
        feed(h.relay, HISTORY)
        await run_until(0.5)
        h.relay.observe(user(2, "newer"))  # arrives while the first attempt is in flight
        await run_until(60.0)
        assert h.client.reports == [IDLE, working("newer")]
        assert h.client.times == [0.0, 1.0]
        assert h.relay.accepted == working("newer")


@on_virtual_clock
async def test_retry_after_is_honoured() -> None:
    async with running() as h:
        h.client.results(fail(429, "slow down", retry_after=7.0))
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(6.875)
            assert len(h.client.calls) == 1
            await run_until(60.0)
        assert h.client.times == [0.0, 7.0]
        assert [e["retry_in_s"] for e in events_named(logs, "relay.retry")] == [7.0]


@on_virtual_clock
async def test_backoff_grows_between_retries() -> None:
    # The relay's own schedule, at its ceilings: 5 s doubling to a 60 s cap.
    async with running(retry=retry_policy(Ceiling())) as h:
        h.client.results(*[fail(500)] * 6)
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(1.0)
            h.relay.observe(user(2, "newer"))  # backing off, the newer report waits
            await run_until(4.875)
            assert h.client.reports == [IDLE]
            await run_until(300.0)
        assert h.client.times == [0.0, 5.0, 15.0, 35.0, 75.0, 135.0, 195.0]
        assert h.client.reports == [IDLE] + [working("newer")] * 6
        retry_in = [e["retry_in_s"] for e in events_named(logs, "relay.retry")]
        assert retry_in == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
        assert h.relay.accepted == working("newer")


@on_virtual_clock
async def test_401_reloads_the_token_and_retries_when_it_changed() -> None:
    async with running() as h:
        h.client.reload_changes = True
        h.client.results(fail(401, "Agent token is invalid or expired."))
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(1.0)
        assert h.client.reports == [IDLE, IDLE]
        assert h.client.times == [0.0, 0.0]
        assert h.client.reloads == 1
        unauthorized = events_named(logs, "relay.unauthorized")
        assert len(unauthorized) == 1
        assert unauthorized[0]["token_changed"] is True
        assert unauthorized[0]["retry_in_s"] == 0.0
        assert h.count("unauthorized") == 1
        assert h.relay.accepted == IDLE


@on_virtual_clock
async def test_403_with_an_unchanged_token_backs_off() -> None:
    async with running() as h:
        h.client.results(fail(403, "forbidden"))
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(0.5)
            h.relay.observe(user(2, "later"))  # does not cut the back-off short
            await run_until(0.9375)
            assert h.client.reloads == 1
            assert len(h.client.calls) == 1  # at least a second of back-off
            assert h.relay.pending
            await run_until(6.5)
        unauthorized = events_named(logs, "relay.unauthorized")
        assert [e["token_changed"] for e in unauthorized] == [False]
        # The wait is the configuration schedule's first step, 1 s plus up to 5 s, and the
        # retry goes exactly when it ends.
        wait = unauthorized[0]["retry_in_s"]
        assert 1.0 <= wait <= 6.0
        assert h.client.reports == [IDLE, working("later")]
        assert h.client.times[1] == pytest.approx(wait, abs=0.005)


@on_virtual_clock
async def test_a_rotated_token_ends_a_401_back_off() -> None:
    async with running() as h:
        h.client.results(fail(401, "Agent token is invalid or expired."))
        feed(h.relay, HISTORY)
        await run_until(0.5)
        assert len(h.client.calls) == 1  # backing off for at least a second
        h.relay.credentials_changed()
        await run_until(0.75)
        assert h.client.times == [0.0, 0.5]
        assert h.relay.accepted == IDLE


@on_virtual_clock
async def test_404_for_an_unknown_resource_backs_off_for_minutes_and_logs_once() -> None:
    async with running() as h:
        h.client.results(fail(404, RESOURCE_NOT_FOUND), fail(404, RESOURCE_NOT_FOUND))
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(29.0)
            h.relay.observe(user(2, "a"))
            await run_until(59.5)
            assert len(h.client.calls) == 1  # a 404 waits at least a minute
            await run_until(120.5)
            # The retry came within the first step (60 s plus up to 60 s), newest report.
            assert h.client.reports == [IDLE, working("a")]
            assert 60.0 <= h.client.times[1] <= 120.0
            await run_until(301.0)  # the second step: 60 s plus up to 120 s
        assert h.client.reports == [IDLE, working("a"), working("a")]
        assert 60.0 <= h.client.times[2] - h.client.times[1] <= 180.0
        assert h.relay.accepted == working("a")
        not_found = events_named(logs, "relay.not_found")
        assert len(not_found) == 1
        assert not_found[0]["log_level"] == "error"
        assert not_found[0]["detail"] == RESOURCE_NOT_FOUND
        assert h.count("not_found") == 2


@on_virtual_clock
async def test_a_bare_404_is_a_missing_route_retried_about_hourly_and_logged_once() -> None:
    async with running() as h:
        h.client.results(fail(404), fail(404))
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(10.0)
            h.relay.observe(user(2, "a"))  # does not cut the back-off short
            await run_until(2999.5)
            assert len(h.client.calls) == 1
            await run_until(3600.5)
            assert h.client.reports == [IDLE, working("a")]
            assert 3000.0 <= h.client.times[1] <= 3600.0
            await run_until(7201.0)
        assert h.client.reports == [IDLE, working("a"), working("a")]
        assert 3000.0 <= h.client.times[2] - h.client.times[1] <= 3600.0
        assert h.relay.accepted == working("a")
        no_route = events_named(logs, "relay.no_route")
        assert len(no_route) == 1
        assert no_route[0]["log_level"] == "error"
        assert no_route[0]["status"] == 404
        assert "hourly" in no_route[0]["hint"]
        assert 3000.0 <= no_route[0]["retry_in_s"] <= 3600.0
        assert events_named(logs, "relay.not_found") == []
        assert h.count("no_route") == 2


@on_virtual_clock
async def test_a_200_without_json_is_not_coder_retried_slowly_and_logged_once() -> None:
    async with running() as h:
        h.client.results(not_coder(), not_coder(), not_coder())
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(0.9375)
            # Not a transient failure (those retry at once here): it waits at least 1 s.
            assert len(h.client.calls) == 1
            assert h.relay.pending
            await run_until(60.0)
        assert h.client.reports == [IDLE] * 4
        # The configuration schedule: 1 s plus up to 5, 10, 20 s.
        gaps = [b - a for a, b in itertools.pairwise(h.client.times)]
        assert all(1.0 <= gap <= top for gap, top in zip(gaps, [6.0, 11.0, 21.0], strict=True))
        assert h.relay.accepted == IDLE
        said = events_named(logs, "relay.not_coder")
        assert len(said) == 1
        assert said[0]["log_level"] == "error"
        assert said[0]["status"] == 200
        assert said[0]["detail"] == "HTTP 200 text/html"
        assert "CODER_AGENT_URL" in said[0]["hint"]
        assert [e["attempt"] for e in events_named(logs, "relay.patched")] == [4]
        assert h.count("not_coder") == 3
        assert h.count("ok") == 1


@on_virtual_clock
async def test_a_client_that_raises_is_logged_and_retried() -> None:
    async with running() as h:
        h.client.results(RuntimeError("bug"))
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(1.0)
        assert h.client.reports == [IDLE, IDLE]
        assert h.client.times == [0.0, 0.0]
        assert h.relay.accepted == IDLE
        errors = events_named(logs, "relay.client_error")
        assert len(errors) == 1
        assert errors[0]["log_level"] == "error"
        assert errors[0]["exc_info"] is True
        # Then it counts as a call that got no answer.
        retries = events_named(logs, "relay.retry")
        assert [(e["status"], e["detail"]) for e in retries] == [(None, "RuntimeError")]
        assert h.count("retry") == 1
        assert h.count("ok") == 1


# --- agent death ------------------------------------------------------------------------


@on_virtual_clock
async def test_grace_timer_reports_failure_and_recovers() -> None:
    async with running(grace=30.0) as h:
        with capture_logs() as logs:
            feed(h.relay, HISTORY)
            await run_until(1.0)
            h.relay.set_agent_reachable(False)
            await run_until(30.5)
            assert h.client.reports == [IDLE]
            await run_until(40.0)
            assert h.client.reports == [IDLE, StatusReport(AppState.FAILURE, NOT_RESPONDING, "")]
            assert h.client.times == [0.0, 31.0]
            h.relay.set_agent_reachable(True)
            await run_until(41.0)
        assert h.client.reports[2] == IDLE
        assert h.client.times[2] == 40.0
        assert [(e["event"], e.get("grace_s")) for e in logs] == [
            ("relay.patched", None),
            ("relay.agent_unreachable", 30.0),
            ("relay.patched", None),
            ("relay.agent_reachable", None),
            ("relay.patched", None),
        ]


@on_virtual_clock
async def test_a_short_outage_reports_nothing() -> None:
    async with running(grace=10.0) as h:
        feed(h.relay, HISTORY)
        await run_until(1.0)
        h.relay.set_agent_reachable(False)
        await run_until(10.75)
        h.relay.set_agent_reachable(True)
        h.relay.set_agent_reachable(False)  # a new outage starts a new grace period
        await run_until(20.5)
        h.relay.set_agent_reachable(True)
        await run_until(200.0)
        assert h.client.reports == [IDLE]
        h.relay.observe(user(2, "next"))
        await run_until(201.0)
        assert h.client.reports == [IDLE, working("next")]


@on_virtual_clock
async def test_failure_is_reported_once_however_long_the_outage() -> None:
    async with running(grace=5.0) as h:
        feed(h.relay, HISTORY)
        await run_until(1.0)
        h.relay.set_agent_reachable(False)
        await run_until(3.0)
        h.relay.set_agent_reachable(False)  # still the same outage: the timer runs on
        await run_until(6.5)
        assert h.client.reports == [IDLE, StatusReport(AppState.FAILURE, NOT_RESPONDING, "")]
        assert h.client.times == [0.0, 6.0]
        h.relay.observe(user(2, "queued while down"))  # the failure still wins
        await run_until(500.0)
        h.relay.set_agent_reachable(False)
        await run_until(1000.0)
        assert len(h.client.calls) == 2
        h.relay.set_agent_reachable(True)
        await run_until(1001.0)
        assert h.client.reports[2] == working("queued while down")
        assert h.client.times[2] == 1000.0


# --- stop -------------------------------------------------------------------------------


@on_virtual_clock
async def test_stop_without_on_stop_sends_nothing() -> None:
    async with running(min_interval=1000.0) as h:
        feed(h.relay, HISTORY)
        await run_until(1.0)
        h.relay.observe(user(2, "pending change"))
        assert await h.relay.stop(None, timeout=1.0) is True
        assert now() == 1.0  # nothing in flight: it did not wait
        assert h.task.done()
        h.relay.observe(user(3, "after stop"))
        await run_until(5000.0)
        assert h.client.reports == [IDLE]


@on_virtual_clock
async def test_stop_lets_a_patch_in_flight_finish_within_its_deadline() -> None:
    async with running() as h:
        h.client.latency = 2.0
        feed(h.relay, HISTORY)
        await run_until(0.5)
        assert await h.relay.stop(None, timeout=10.0) is True
        assert now() == 2.0  # when the answer came, not at the deadline
        assert h.task.done()
        assert h.client.cancelled == 0
        assert h.relay.accepted == IDLE


@on_virtual_clock
async def test_stop_cancels_a_patch_in_flight_at_its_deadline() -> None:
    async with running() as h:
        h.client.latency = 3600.0
        feed(h.relay, HISTORY)
        await run_until(0.5)
        assert await h.relay.stop(None, timeout=3.0) is True
        assert now() == 3.5
        assert h.task.done()
        assert h.client.cancelled == 1
        assert h.relay.accepted is None


@on_virtual_clock
async def test_stop_sends_the_on_stop_state_after_the_patch_in_flight() -> None:
    async with running() as h:
        h.client.latency = 2.0
        feed(h.relay, HISTORY)
        await run_until(0.5)
        assert await h.relay.stop(AppState.COMPLETE, timeout=10.0) is True
        assert h.client.reports == [IDLE, COMPLETE]
        assert h.client.times == [0.0, 2.0]
        # The last word is bounded by what is left of the deadline (10.5 - 2.0).
        assert [c.timeout for c in h.client.calls] == [None, 8.5]
        assert now() == 4.0
        assert h.relay.accepted == COMPLETE


@on_virtual_clock
async def test_stop_whose_deadline_cuts_the_patch_in_flight_sends_nothing_more() -> None:
    async with running() as h:
        h.client.latency = 3600.0
        feed(h.relay, HISTORY)
        await run_until(0.5)
        with capture_logs() as logs:
            assert await h.relay.stop(AppState.COMPLETE, timeout=3.0) is False
        assert now() == 3.5
        assert h.client.cancelled == 1
        # No attempt starts once the deadline has come.
        assert h.client.reports == [IDLE]
        assert events_named(logs, "relay.stop_incomplete") == [
            {"event": "relay.stop_incomplete", "log_level": "warning", "state": "complete"}
        ]


@on_virtual_clock
async def test_stop_sends_the_configured_state_once() -> None:
    async with running() as h:
        feed(h.relay, HISTORY)
        await run_until(1.0)
        assert await h.relay.stop(AppState.COMPLETE, timeout=2.0) is True
        assert h.client.reports == [IDLE, COMPLETE]
        assert h.client.times == [0.0, 1.0]
        assert h.relay.accepted == COMPLETE
        assert await h.relay.stop(AppState.COMPLETE, timeout=2.0) is True  # nothing more needed
        assert len(h.client.calls) == 2


@on_virtual_clock
async def test_stop_with_the_state_already_shown_sends_nothing() -> None:
    async with running() as h:
        feed(h.relay, HISTORY)
        await run_until(1.0)
        assert h.relay.accepted == IDLE
        assert await h.relay.stop(AppState.IDLE, timeout=2.0) is True
        assert h.client.reports == [IDLE]


@on_virtual_clock
async def test_stop_retries_within_its_deadline() -> None:
    async with running() as h:
        h.client.results(fail(503), fail(None))
        assert await h.relay.stop(AppState.IDLE, timeout=2.0) is True
        assert h.client.reports == [StatusReport(AppState.IDLE, "", "")] * 3
        assert h.client.times == [0.0] * 3


@on_virtual_clock
async def test_stop_gives_up_at_its_deadline() -> None:
    async with running() as h:
        h.client.results(*[fail(503, retry_after=1.0)] * 1000)
        with capture_logs() as logs:
            assert await h.relay.stop(AppState.COMPLETE, timeout=4.0) is False
        # It retried, and gave up rather than start an attempt it could not finish by its
        # deadline: no attempt at 4.0, and no sitting out the last second either.
        assert h.client.times == [0.0, 1.0, 2.0, 3.0]
        assert now() == 3.0
        assert [e["state"] for e in events_named(logs, "relay.stop_incomplete")] == ["complete"]


@on_virtual_clock
async def test_each_patch_at_stop_is_bounded_by_what_is_left_of_the_deadline() -> None:
    async with running(min_interval=0.5) as h:
        h.client.results(ok(), fail(503, retry_after=1.0), fail(None, retry_after=1.0))
        feed(h.relay, HISTORY)
        await run_until(0.25)
        assert await h.relay.stop(AppState.COMPLETE, timeout=4.0) is True
        # The deadline is 4.25: the last word waits out the interval, then two retries.
        assert h.client.times == [0.0, 0.5, 1.5, 2.5]
        assert [c.timeout for c in h.client.calls] == [None, 3.75, 2.75, 1.75]


@on_virtual_clock
async def test_stop_deadline_cuts_a_hanging_patch() -> None:
    async with running() as h:
        h.client.latency = 3600.0
        assert await h.relay.stop(AppState.COMPLETE, timeout=0.25) is False
        assert now() == 0.25
        assert h.client.cancelled == 1
        assert [c.timeout for c in h.client.calls] == [0.25]


@on_virtual_clock
async def test_stop_respects_the_interval_within_its_deadline() -> None:
    async with running(min_interval=0.5) as h:
        feed(h.relay, HISTORY)
        await run_until(0.125)
        assert await h.relay.stop(AppState.COMPLETE, timeout=2.0) is True
        assert h.client.times == [0.0, 0.5]
        assert h.client.reports == [IDLE, COMPLETE]


@on_virtual_clock
async def test_stop_refused_with_400_returns_false() -> None:
    async with running() as h:
        h.client.results(fail(400, "Invalid state"))
        with capture_logs() as logs:
            assert await h.relay.stop(AppState.COMPLETE, timeout=2.0) is False
        assert len(h.client.calls) == 1
        assert events_named(logs, "relay.stop_incomplete") == []  # refused, not cut short


@on_virtual_clock
async def test_stop_lifts_a_404_back_off_and_retries_on_the_short_schedule() -> None:
    async with running() as h:
        h.client.results(*[fail(404, RESOURCE_NOT_FOUND)] * 2)
        feed(h.relay, HISTORY)
        await run_until(10.0)
        assert len(h.client.calls) == 1  # backing off for minutes
        assert await h.relay.stop(AppState.COMPLETE, timeout=5.0) is True
        assert h.client.reports == [IDLE, COMPLETE, COMPLETE]
        assert h.client.times == [0.0, 10.0, 10.0]


@on_virtual_clock
async def test_stop_spends_one_try_on_a_missing_route_and_no_more() -> None:
    async with running() as h:
        h.client.results(*[fail(404)] * 2)
        feed(h.relay, HISTORY)
        await run_until(10.0)
        assert await h.relay.stop(AppState.COMPLETE, timeout=5.0) is False
        # Seconds cannot heal it: one prompt try, then no waiting out the deadline.
        assert h.client.reports == [IDLE, COMPLETE]
        assert h.client.times == [0.0, 10.0]
        assert now() == 10.0


# --- idle settle ------------------------------------------------------------------------


@on_virtual_clock
async def test_idle_report_settles_so_late_final_words_make_one_patch() -> None:
    async with running(idle_settle=60.0) as h:
        feed(h.relay, [ReplayStarted(), user(0, "fix the bug"), RUNNING])
        await run_until(1.0)
        assert h.relay.accepted == working("fix the bug")
        feed(h.relay, [agent(1, "Working on it"), STABLE])
        # Without settling, "Working on it" would have gone at 1.0.
        await run_until(60.5)
        assert h.client.reports == [working("fix the bug")]
        feed(h.relay, [agent(1, "Working on it\nFixed it.")])  # the last words, after stable
        await run_until(600.0)
        assert h.client.reports == [working("fix the bug"), IDLE]
        assert h.client.times == [0.0, 61.0]
        assert h.relay.accepted == IDLE


@on_virtual_clock
async def test_idle_settle_runs_from_the_turn_not_from_each_revision() -> None:
    async with running(idle_settle=60.0) as h:
        feed(h.relay, [ReplayStarted(), user(0, "fix the bug"), RUNNING])
        await run_until(1.0)
        feed(h.relay, [agent(1, "step 1"), STABLE])
        await run_until(31.0)
        feed(h.relay, [agent(1, "step 1\nstep 2")])  # text still moving half-way through
        await run_until(60.5)
        assert len(h.client.calls) == 1
        await run_until(600.0)
        # 60 s after the turn ended, 30 s after the last revision.
        assert h.client.reports == [
            working("fix the bug"),
            StatusReport(AppState.IDLE, "step 2", ""),
        ]
        assert h.client.times == [0.0, 61.0]

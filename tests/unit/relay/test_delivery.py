"""Relay (the delivery loop) against an in-memory Coder client with scripted results.

Waiting is always on a condition with a deadline. Where a test must show that something
did *not* happen, it either waits for a later PATCH that could only come after it, or
yields to the event loop a fixed number of times (`settle`): the relay needs three loop
steps to start a PATCH, so 50 yields are far more than enough, and no time passes.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import pytest
from structlog.testing import capture_logs

from sidecar.backoff import Backoff
from sidecar.coder.client import Outcome, Result
from sidecar.coder.retry import RetryPolicy
from sidecar.models import (
    AgentError,
    AppState,
    ErrorLevel,
    Event,
    ReplayStarted,
)
from sidecar.relay.delivery import Relay
from sidecar.relay.policy import NOT_RESPONDING, RelayPolicy, StatusReport
from sidecar.runtime.metrics import Metrics
from tests.events import RUNNING, STABLE, agent, at, user

DEADLINE = 5.0
SLUG = "claude-code"


def ok(status: int = 200) -> Result:
    return Result(Outcome.OK, status, "", None, 3.0)


def fail(status: int | None, detail: str = "", retry_after: float | None = None) -> Result:
    outcome = {
        None: Outcome.RETRY,
        400: Outcome.REJECTED,
        401: Outcome.UNAUTHORIZED,
        403: Outcome.UNAUTHORIZED,
        404: Outcome.NOT_FOUND,
    }.get(status, Outcome.RETRY)
    return Result(outcome, status, detail, retry_after, 2.0)


@dataclass(frozen=True, slots=True)
class Call:
    report: StatusReport
    slug: str
    at: float  # the relay's clock when the PATCH started


class FakeClock:
    """Real monotonic time plus an offset the test can jump forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


class RecordingClient:
    """The CoderClient surface the sidecar uses; PATCH results come from a script (then
    200). `hold()` makes PATCHes wait until `release()`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.calls: list[Call] = []
        self.script: collections.deque[Result] = collections.deque()
        self.reloads = 0
        self.reload_changes = False
        self._clock = clock
        self._changed = asyncio.Event()
        self._gate = asyncio.Event()
        self._gate.set()
        self.cancelled = 0

    def results(self, *results: Result) -> None:
        self.script.extend(results)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def post_log_snapshot(
        self, task_id: UUID, body: bytes, *, timeout: float | None = None
    ) -> Result:
        raise AssertionError("the relay never posts snapshots")

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str
    ) -> Result:
        self.calls.append(Call(StatusReport(state, message, uri), slug, self._clock()))
        self._changed.set()
        try:
            await self._gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.script.popleft() if self.script else ok()

    async def reload_token(self) -> bool:
        self.reloads += 1
        return self.reload_changes

    @property
    def reports(self) -> list[StatusReport]:
        return [c.report for c in self.calls]

    async def wait_calls(self, count: int, timeout: float = DEADLINE) -> list[StatusReport]:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.reports


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Wait for a condition that no event announces (the relay's bookkeeping after a
    PATCH returned), re-checking every millisecond."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


# --- events -----------------------------------------------------------------------------


HISTORY: list[Event] = [ReplayStarted(), user(0, "fix the bug"), agent(1, "Fixed it."), STABLE]
IDLE = StatusReport(AppState.IDLE, "Fixed it.", "")


def working(text: str) -> StatusReport:
    return StatusReport(AppState.WORKING, text, "")


def feed(relay: Relay, events: Iterable[Event]) -> None:
    for event in events:
        relay.observe(event)


# --- fixtures ---------------------------------------------------------------------------


@dataclass
class Harness:
    relay: Relay
    client: RecordingClient
    metrics: Metrics
    clock: FakeClock
    task: asyncio.Task[None]

    def count(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "sidecar_relay_patches_total", {"result": result}
        )
        return value or 0.0


class HarnessFactory(Protocol):
    def __call__(
        self,
        *,
        min_interval: float = 0.0,
        retry: RetryPolicy | None = None,
        grace: float = 30.0,
        idle_settle: float = 0.0,
        policy: RelayPolicy | None = None,
    ) -> Harness: ...


@pytest.fixture
async def make_relay() -> AsyncIterator[HarnessFactory]:
    started: list[Harness] = []

    def factory(
        *,
        min_interval: float = 0.0,
        retry: RetryPolicy | None = None,
        grace: float = 30.0,
        # No settle unless a test is about it: it would only make every test wait.
        idle_settle: float = 0.0,
        policy: RelayPolicy | None = None,
    ) -> Harness:
        clock = FakeClock()
        client = RecordingClient(clock)
        metrics = Metrics()
        relay = Relay(
            client=client,
            slug=SLUG,
            policy=policy or RelayPolicy(),
            metrics=metrics,
            clock=clock,
            min_interval=min_interval,
            retry=retry or RetryPolicy(transient=Backoff(base=0.0, cap=0.0)),
            grace=grace,
            idle_settle=idle_settle,
        )
        harness = Harness(relay, client, metrics, clock, asyncio.create_task(relay.run()))
        started.append(harness)
        return harness

    yield factory
    for harness in started:
        harness.client.release()
        await harness.relay.stop(None, timeout=1.0)
        async with asyncio.timeout(DEADLINE):
            await harness.task


# --- delivery ---------------------------------------------------------------------------


async def test_first_report_is_patched_and_logged(make_relay: HarnessFactory) -> None:
    h = make_relay()
    with capture_logs() as logs:
        feed(h.relay, HISTORY)
        assert await h.client.wait_calls(1) == [IDLE]
        await until(lambda: h.relay.accepted == IDLE)
    assert h.client.calls[0].slug == SLUG
    patched = [e for e in logs if e["event"] == "relay.patched"]
    assert patched == [
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


async def test_ten_rapid_changes_make_at_most_two_patches(make_relay: HarnessFactory) -> None:
    h = make_relay(min_interval=0.3)
    relay = h.relay
    feed(relay, HISTORY)
    await h.client.wait_calls(1)
    for i in range(10):
        relay.observe(user(10 + i, f"request {i}"))
    reports = await h.client.wait_calls(2)
    assert reports == [IDLE, working("request 9")]
    assert h.client.calls[1].at - h.client.calls[0].at >= 0.3
    await until(lambda: not relay.pending)
    assert len(h.client.calls) == 2


async def test_changes_spread_over_the_interval_coalesce(make_relay: HarnessFactory) -> None:
    h = make_relay(min_interval=0.3)
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    for i in range(10):
        h.relay.observe(user(10 + i, f"request {i}"))
        await settle()  # the loop sees each change, and must still hold it back
    reports = await h.client.wait_calls(2)
    assert reports[-1] == working("request 9")
    assert h.client.calls[1].at - h.client.calls[0].at >= 0.3
    await settle()
    assert len(h.client.calls) == 2


async def test_the_interval_is_measured_on_the_injected_clock(make_relay: HarnessFactory) -> None:
    h = make_relay(min_interval=1000.0)
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    h.relay.observe(user(2, "second"))
    await settle()
    assert h.client.reports == [IDLE]
    h.clock.jump(1000.0)
    h.relay.observe(user(3, "third"))
    assert await h.client.wait_calls(2) == [IDLE, working("third")]


async def test_nothing_is_patched_while_nothing_is_known(make_relay: HarnessFactory) -> None:
    h = make_relay()
    feed(h.relay, [ReplayStarted(), user(0, "hi"), agent(1, "hello")])
    await settle()
    assert h.client.calls == []
    h.relay.observe(STABLE)
    assert await h.client.wait_calls(1) == [StatusReport(AppState.IDLE, "hello", "")]


async def test_observe_never_waits_for_a_patch_in_flight(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.hold()
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    started = time.perf_counter()
    for i in range(1000):
        h.relay.observe(agent(1, f"screen {i}"))
        h.relay.observe(user(2 + i, f"request {i}"))
    assert time.perf_counter() - started < 1.0
    assert len(h.client.calls) == 1
    h.client.release()
    assert (await h.client.wait_calls(2))[-1] == working("request 999")


# --- dedupe -----------------------------------------------------------------------------


async def test_reconnect_replay_sends_nothing(make_relay: HarnessFactory) -> None:
    h = make_relay()
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    for _ in range(3):
        feed(h.relay, HISTORY)  # reconnects replay the unchanged conversation
        h.relay.observe(AgentError(ErrorLevel.WARNING, "old warning", at(0)))
    await settle()
    h.relay.observe(user(5, "next"))
    assert await h.client.wait_calls(2) == [IDLE, working("next")]


async def test_a_flip_back_to_the_accepted_report_sends_nothing(
    make_relay: HarnessFactory,
) -> None:
    policy = RelayPolicy()
    h = make_relay(policy=policy, min_interval=1000.0)
    feed(h.relay, HISTORY)
    await until(lambda: h.relay.accepted == IDLE)
    h.relay.observe(user(2, "go"))  # working…
    policy.agent_unreachable()  # …failure…
    policy.agent_reachable()  # …working again, still held back by the interval
    h.relay.observe(STABLE)  # …and idle: what the server already shows
    assert not h.relay.pending
    h.clock.jump(1000.0)
    h.relay.observe(user(3, "after"))
    assert await h.client.wait_calls(2) == [IDLE, working("after")]


async def test_agent_warnings_are_logged_once_and_not_relayed(
    make_relay: HarnessFactory,
) -> None:
    h = make_relay()
    feed(h.relay, HISTORY)
    await until(lambda: h.relay.accepted == IDLE)
    warning = AgentError(ErrorLevel.WARNING, "Failed to restore previous session", at(5))
    with capture_logs() as logs:
        h.relay.observe(warning)
        h.relay.observe(warning)  # replayed on a reconnect
        h.relay.observe(AgentError(ErrorLevel.ERROR, "boom", at(6)))
        reports = await h.client.wait_calls(2)
    assert reports == [IDLE, StatusReport(AppState.FAILURE, "boom", "")]
    agent_logs = [(e["event"], e["message"]) for e in logs if e["event"].startswith("relay.agent")]
    assert agent_logs == [
        ("relay.agent_warning", "Failed to restore previous session"),
        ("relay.agent_error", "boom"),
    ]


# --- retries ----------------------------------------------------------------------------


async def test_400_is_logged_and_not_retried(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.results(fail(400, "Failed to find workspace app.: No app found"))
    with capture_logs() as logs:
        feed(h.relay, HISTORY)
        await h.client.wait_calls(1)
        await settle()
        assert not h.relay.pending
        h.relay.observe(user(2, "different"))
        assert await h.client.wait_calls(2) == [IDLE, working("different")]
    rejected = [e for e in logs if e["event"] == "relay.rejected"]
    assert len(rejected) == 1
    assert rejected[0]["detail"] == "Failed to find workspace app.: No app found"
    assert rejected[0]["status"] == 400
    assert rejected[0]["state"] == "idle"
    assert h.count("rejected") == 1


async def test_a_rejected_report_is_not_sent_again(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.results(ok(), fail(400, "Invalid state"))
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    h.relay.observe(user(2, "go"))
    await h.client.wait_calls(2)
    h.relay.observe(STABLE)  # idle again: accepted before, nothing to send
    h.relay.observe(user(3, "go"))  # same text, newer message: working "go" again
    await settle()
    assert h.client.reports == [IDLE, working("go")]
    h.relay.observe(user(4, "other"))
    assert await h.client.wait_calls(3) == [IDLE, working("go"), working("other")]


async def test_5xx_and_connection_errors_are_retried_then_delivered(
    make_relay: HarnessFactory,
) -> None:
    h = make_relay()
    h.client.results(fail(503, "unavailable"), fail(None, "refused"), fail(502, "bad gw"))
    with capture_logs() as logs:
        feed(h.relay, HISTORY)
        assert await h.client.wait_calls(4) == [IDLE] * 4
        await until(lambda: h.relay.accepted == IDLE)
    assert [e["attempt"] for e in logs if e["event"] == "relay.retry"] == [1, 2, 3]
    assert [e["attempt"] for e in logs if e["event"] == "relay.patched"] == [4]
    assert h.count("retry") == 3
    assert h.count("ok") == 1


async def test_a_retry_carries_the_newest_report(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.results(fail(503))
    h.client.hold()
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    h.relay.observe(user(2, "newer"))  # arrives while the first attempt is in flight
    h.client.release()
    assert await h.client.wait_calls(2) == [IDLE, working("newer")]
    await settle()
    assert len(h.client.calls) == 2


async def test_retry_after_is_honoured(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.results(fail(429, "slow down", retry_after=0.25))
    feed(h.relay, HISTORY)
    await h.client.wait_calls(2)
    assert h.client.calls[1].at - h.client.calls[0].at >= 0.25


async def test_backoff_grows_between_retries(make_relay: HarnessFactory) -> None:
    h = make_relay(retry=RetryPolicy(transient=Backoff(base=1000.0, cap=1000.0)))
    h.client.results(fail(500))
    feed(h.relay, HISTORY)
    await until(lambda: h.count("retry") == 1)
    h.relay.observe(user(2, "newer"))
    await settle()
    assert len(h.client.calls) == 1  # backing off, the newer report waits
    h.clock.jump(1000.0)
    h.relay.observe(user(3, "newest"))
    assert await h.client.wait_calls(2) == [IDLE, working("newest")]


async def test_401_reloads_the_token_and_retries_when_it_changed(
    make_relay: HarnessFactory,
) -> None:
    h = make_relay()
    h.client.reload_changes = True
    h.client.results(fail(401, "Agent token is invalid or expired."))
    with capture_logs() as logs:
        feed(h.relay, HISTORY)
        assert await h.client.wait_calls(2) == [IDLE, IDLE]
    assert h.client.reloads == 1
    unauthorized = [e for e in logs if e["event"] == "relay.unauthorized"]
    assert unauthorized[0]["token_changed"] is True
    assert h.count("unauthorized") == 1


async def test_403_with_an_unchanged_token_backs_off(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.results(fail(403, "forbidden"))
    feed(h.relay, HISTORY)
    await until(lambda: h.count("unauthorized") == 1)
    await settle()
    assert h.client.reloads == 1
    assert len(h.client.calls) == 1  # at least a second of back-off
    assert h.relay.pending
    h.clock.jump(301.0)
    h.relay.observe(user(2, "later"))
    assert await h.client.wait_calls(2) == [IDLE, working("later")]


async def test_404_backs_off_for_minutes_and_logs_once(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.results(fail(404, "Route not found."), fail(404, "Route not found."))
    with capture_logs() as logs:
        feed(h.relay, HISTORY)
        await until(lambda: h.count("not_found") == 1)
        h.clock.jump(29.0)
        h.relay.observe(user(2, "a"))
        await settle()
        assert len(h.client.calls) == 1  # 404 waits at least 30 s
        h.clock.jump(600.0)
        h.relay.observe(user(3, "b"))
        await until(lambda: h.count("not_found") == 2)
        h.clock.jump(700.0)
        h.relay.observe(user(4, "c"))
        assert await h.client.wait_calls(3) == [IDLE, working("b"), working("c")]
    assert len([e for e in logs if e["event"] == "relay.not_found"]) == 1


async def test_a_client_that_raises_is_retried(make_relay: HarnessFactory) -> None:
    h = make_relay()
    calls = 0
    original = h.client.patch_app_status

    async def flaky(*, slug: str, state: AppState, message: str, uri: str) -> Result:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return await original(slug=slug, state=state, message=message, uri=uri)

    h.client.patch_app_status = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        feed(h.relay, HISTORY)
        assert await h.client.wait_calls(1) == [IDLE]
    assert calls == 2
    assert any(e["event"] == "relay.client_error" for e in logs)


# --- agent death ------------------------------------------------------------------------


async def test_grace_timer_reports_failure_and_recovers(make_relay: HarnessFactory) -> None:
    h = make_relay(grace=0.2)
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    down_at = time.monotonic()
    h.relay.set_agent_reachable(False)
    reports = await h.client.wait_calls(2)
    assert reports[1] == StatusReport(AppState.FAILURE, NOT_RESPONDING, "")
    assert h.client.calls[1].at - down_at >= 0.2
    h.relay.set_agent_reachable(True)
    assert (await h.client.wait_calls(3))[2] == IDLE


async def test_a_short_outage_reports_nothing(make_relay: HarnessFactory) -> None:
    h = make_relay(grace=10.0)
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    h.relay.set_agent_reachable(False)
    await settle()
    h.clock.jump(9.0)
    h.relay.set_agent_reachable(True)
    h.relay.set_agent_reachable(False)  # a new outage starts a new grace period
    h.clock.jump(9.0)
    h.relay.set_agent_reachable(True)
    h.clock.jump(100.0)
    h.relay.observe(user(2, "next"))
    assert await h.client.wait_calls(2) == [IDLE, working("next")]


async def test_failure_is_reported_once_however_long_the_outage(
    make_relay: HarnessFactory,
) -> None:
    h = make_relay(grace=5.0)
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    h.relay.set_agent_reachable(False)
    h.relay.set_agent_reachable(False)
    h.clock.jump(5.0)
    h.relay.observe(user(2, "queued while down"))  # wakes the loop; failure still wins
    reports = await h.client.wait_calls(2)
    assert reports[1].state is AppState.FAILURE
    h.clock.jump(500.0)
    h.relay.set_agent_reachable(False)
    await settle()
    assert len(h.client.calls) == 2
    h.relay.set_agent_reachable(True)
    assert (await h.client.wait_calls(3))[2] == working("queued while down")


# --- stop -------------------------------------------------------------------------------


async def test_stop_without_on_stop_sends_nothing(make_relay: HarnessFactory) -> None:
    h = make_relay(min_interval=1000.0)
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    h.relay.observe(user(2, "pending change"))
    assert await h.relay.stop(None, timeout=1.0) is True
    async with asyncio.timeout(DEADLINE):
        await h.task
    h.clock.jump(1000.0)
    h.relay.observe(user(3, "after stop"))
    await settle()
    assert h.client.reports == [IDLE]


async def test_stop_abandons_a_patch_in_flight(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.hold()
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    # The PATCH is never answered: stop() returning at all means it was abandoned.
    async with asyncio.timeout(DEADLINE):
        assert await h.relay.stop(None, timeout=2.0) is True
        await h.task
    assert h.client.cancelled == 1
    assert h.relay.accepted is None


async def test_stop_sends_the_configured_state_once(make_relay: HarnessFactory) -> None:
    h = make_relay()
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    assert await h.relay.stop(AppState.COMPLETE, timeout=2.0) is True
    complete = StatusReport(AppState.COMPLETE, "Fixed it.", "")
    assert h.client.reports == [IDLE, complete]
    assert h.relay.accepted == complete
    assert await h.relay.stop(AppState.COMPLETE, timeout=2.0) is True  # nothing more needed
    assert len(h.client.calls) == 2


async def test_stop_with_the_state_already_shown_sends_nothing(
    make_relay: HarnessFactory,
) -> None:
    h = make_relay()
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    await until(lambda: h.relay.accepted == IDLE)
    assert await h.relay.stop(AppState.IDLE, timeout=2.0) is True
    assert h.client.reports == [IDLE]


async def test_stop_retries_within_its_deadline(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.results(fail(503), fail(None))
    assert await h.relay.stop(AppState.IDLE, timeout=2.0) is True
    assert [c.report.state for c in h.client.calls] == [AppState.IDLE] * 3


async def test_stop_gives_up_at_its_deadline(make_relay: HarnessFactory) -> None:
    h = make_relay(retry=RetryPolicy(transient=Backoff(base=0.05, cap=0.05)))
    h.client.results(*[fail(503)] * 1000)
    deadline = h.clock() + 0.3
    with capture_logs() as logs:
        assert await h.relay.stop(AppState.COMPLETE, timeout=0.3) is False
    # It retried, and gave up rather than start an attempt past its deadline.
    assert len(h.client.calls) >= 2
    assert all(call.at < deadline for call in h.client.calls)
    assert any(e["event"] == "relay.stop_incomplete" for e in logs)


async def test_stop_deadline_cuts_a_hanging_patch(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.hold()
    # The PATCH is never answered: stop() returning at all means its deadline cut it.
    async with asyncio.timeout(DEADLINE):
        assert await h.relay.stop(AppState.COMPLETE, timeout=0.2) is False
    assert h.client.cancelled == 1


async def test_stop_respects_the_interval_within_its_deadline(make_relay: HarnessFactory) -> None:
    h = make_relay(min_interval=0.3)
    feed(h.relay, HISTORY)
    await h.client.wait_calls(1)
    assert await h.relay.stop(AppState.COMPLETE, timeout=2.0) is True
    assert h.client.calls[1].at - h.client.calls[0].at >= 0.3


async def test_stop_refused_with_400_returns_false(make_relay: HarnessFactory) -> None:
    h = make_relay()
    h.client.results(fail(400, "Invalid state"))
    assert await h.relay.stop(AppState.COMPLETE, timeout=2.0) is False
    assert len(h.client.calls) == 1


async def test_idle_report_settles_so_late_final_words_make_one_patch(
    make_relay: HarnessFactory,
) -> None:
    h = make_relay(idle_settle=60.0)  # only the fake clock's jump ends the settling
    feed(h.relay, [ReplayStarted(), user(0, "fix the bug"), RUNNING])
    assert await h.client.wait_calls(1) == [working("fix the bug")]
    await until(lambda: h.relay.accepted == working("fix the bug"))
    feed(h.relay, [agent(1, "Working on it"), STABLE])
    # The loop has looked at the idle report and parked: without settling it would have
    # sent "Working on it" by now.
    await until(lambda: not h.relay._wake.is_set())
    assert len(h.client.calls) == 1
    feed(h.relay, [agent(1, "Working on it\nFixed it.")])  # the last words, after stable
    h.clock.jump(61.0)
    calls = await h.client.wait_calls(2)
    await until(lambda: h.relay.accepted == IDLE)
    assert calls == [working("fix the bug"), IDLE]
    assert len(h.client.calls) == 2


async def test_idle_settle_runs_from_the_turn_not_from_each_revision(
    make_relay: HarnessFactory,
) -> None:
    h = make_relay(idle_settle=60.0)
    feed(h.relay, [ReplayStarted(), user(0, "fix the bug"), RUNNING])
    await h.client.wait_calls(1)
    await until(lambda: h.relay.accepted == working("fix the bug"))
    feed(h.relay, [agent(1, "step 1"), STABLE])
    h.clock.jump(30.0)
    feed(h.relay, [agent(1, "step 1\nstep 2")])  # text still moving half-way through
    await until(lambda: not h.relay._wake.is_set())
    assert len(h.client.calls) == 1
    h.clock.jump(31.0)  # 61 s after the turn ended, 31 s after the last revision
    h.relay.observe(agent(1, "step 1\nstep 2\nFixed it."))
    calls = await h.client.wait_calls(2)
    assert calls[1] == IDLE

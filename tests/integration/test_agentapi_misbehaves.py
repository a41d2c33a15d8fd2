"""An agentapi that misbehaves: AgentapiSource against the fake agentapi's fault knobs.

Real loopback servers; the source feeds a Hub (and so a Mirror) through a recording
listener, so each test can see what reached the mirror and every reachability change.
Timeouts are short so that each stall is detected within a second or so; every wait has
a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import pytest
from structlog.testing import capture_logs

import sidecar.agentapi.source as source_module
from sidecar.agentapi.client import AgentapiClient
from sidecar.agentapi.source import AgentapiSource
from sidecar.agentapi.sse import SSEEvent, SSEParser
from sidecar.backoff import Backoff
from sidecar.coder.client import CoderClient
from sidecar.coder.retry import RetryPolicy
from sidecar.coder.token import TokenSource
from sidecar.hub import Hub
from sidecar.mirror import Mirror
from sidecar.models import Event
from sidecar.relay.delivery import Relay
from sidecar.relay.policy import NOT_RESPONDING, RelayPolicy
from sidecar.runtime.metrics import Metrics
from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served
from tests.conftest import AgentapiFactory, CoderFactory

DEADLINE = 10.0
TIMEOUT = 1.0  # each of the source's and client's new deadlines in these tests
PROBE = 0.1


@dataclass
class Recorder:
    """The source's listener: forwards to the Hub and remembers reachability changes."""

    hub: Hub
    reachable: list[bool] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, event: Event) -> None:
        self.hub.on_event(event)
        self._changed.set()

    def on_reachable(self, reachable: bool) -> None:
        self.reachable.append(reachable)
        self.hub.on_reachable(reachable)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        """Re-checked whenever the source tells the listener something."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Setup:
    agentapi: Served[FakeAgentapi]
    recorder: Recorder
    metrics: Metrics
    coder: Served[FakeCoder] | None

    @property
    def fake(self) -> FakeAgentapi:
        return self.agentapi.fake

    def held(self) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.recorder.hub.mirror.messages()]

    def truth(self) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.fake.messages][-10:]

    async def wait_truth(self, timeout: float = DEADLINE) -> None:
        try:
            await self.recorder.wait_for(lambda: self.held() == self.truth(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"mirror holds {self.held()!r}, agentapi {self.truth()!r}; "
                f"requests {dict(self.fake.requests)}"
            ) from None

    def dropped(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "sidecar_agentapi_frames_dropped_total", {"reason": "too_large"}
        )
        return value or 0.0


class SetupFactory(Protocol):
    async def __call__(
        self, *, relay: bool = False, max_frame: int = ..., stream_retry: float = ...
    ) -> Setup: ...


async def until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """For state no request or listener call announces (a metric), polled with a
    deadline."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def conversation(fake: FakeAgentapi) -> None:
    fake.add_message("agent", "Hello! Ready to help.")
    fake.add_message("user", "Fix the parser")
    fake.add_message("agent", "Done: the tokenizer kept the last line.")


@pytest.fixture
async def make_setup(
    make_fake_agentapi: AgentapiFactory, make_fake_coder: CoderFactory
) -> AsyncIterator[SetupFactory]:
    tasks: list[asyncio.Task[None]] = []
    sessions: list[aiohttp.ClientSession] = []

    async def factory(
        *, relay: bool = False, max_frame: int = 1 << 20, stream_retry: float = 60.0
    ) -> Setup:
        agentapi = await make_fake_agentapi()
        session = aiohttp.ClientSession()
        sessions.append(session)
        metrics = Metrics()
        coder = None
        relay_part = None
        if relay:
            coder = await make_fake_coder()
            relay_part = Relay(
                client=CoderClient(
                    session=session,
                    base_url=coder.url,
                    token=TokenSource(value=coder.fake.token),
                    timeout=2.0,
                ),
                slug="claude-code",
                policy=RelayPolicy(),
                metrics=metrics,
                grace=0.2,
                min_interval=0.0,
                retry=RetryPolicy(transient=Backoff(base=0.01, cap=0.05)),
            )
            tasks.append(asyncio.create_task(relay_part.run()))
        recorder = Recorder(Hub(mirror=Mirror(10), uploader=None, relay=relay_part))
        source = AgentapiSource(
            client=AgentapiClient(
                session=session,
                base_url=agentapi.url,
                timeout=TIMEOUT,
                stream_open_timeout=TIMEOUT,
            ),
            listener=recorder,
            metrics=metrics,
            probe_interval=PROBE,
            poll_interval=0.05,
            stream_retry=stream_retry,
            first_frame_timeout=TIMEOUT,
            max_frame=max_frame,
            backoff=Backoff(base=0.02, cap=0.1),
        )
        tasks.append(asyncio.create_task(source.run()))
        return Setup(agentapi, recorder, metrics, coder)

    yield factory
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for session in sessions:
        await session.close()


def events_of(
    logs: Sequence[MutableMapping[str, Any]], name: str
) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_no_response_headers_falls_back_to_polling(make_setup: SetupFactory) -> None:
    with capture_logs() as logs:
        s = await make_setup()
        conversation(s.fake)
        s.fake.events_mode = "no_headers"
        await s.wait_truth()
        s.fake.add_message("user", "And the tests?")  # polling keeps following it
        await s.wait_truth()
    assert s.fake.requests["/messages"] >= 1
    (stalled,) = events_of(logs, "agentapi.stream_stalled")
    assert stalled["reason"] == "no_headers"
    assert stalled["fallback"] == "polling"
    # /status answered all along: no false alarm while the stream was given up.
    assert s.recorder.reachable == [True]


async def test_hung_agentapi_is_reported_unreachable_then_recovers(
    make_setup: SetupFactory,
) -> None:
    """Headers never come and /status hangs too: the listener is told agentapi is
    unreachable, so the relay's grace period runs and Coder hears "not responding"."""
    s = await make_setup(relay=True)
    assert s.coder is not None
    coder = s.coder.fake
    conversation(s.fake)
    s.fake.events_mode = "no_headers"
    s.fake.hang_paths = {"/status", "/messages"}
    await s.recorder.wait_for(lambda: False in s.recorder.reachable)
    assert True not in s.recorder.reachable
    await coder.wait_for(
        lambda: (
            [(a.state, a.message) for a in coder.app_statuses][-1:] == [("failure", NOT_RESPONDING)]
        ),
        DEADLINE,
    )
    # agentapi comes back: the conversation arrives and the relay says so.
    s.fake.events_mode = "normal"
    s.fake.hang_paths = set()
    s.fake.release_hung()
    await s.wait_truth()
    assert s.recorder.reachable[-1] is True
    await coder.wait_for(lambda: coder.app_statuses[-1].state == "idle", DEADLINE)


async def test_headers_then_silence_the_conversation_arrives_by_polling(
    make_setup: SetupFactory,
) -> None:
    with capture_logs() as logs:
        s = await make_setup()
        conversation(s.fake)
        s.fake.events_mode = "headers_then_silence"
        async with asyncio.timeout(3 * TIMEOUT + 2):  # first-frame deadline + a poll
            await s.wait_truth()
        s.fake.add_message("user", "Next step")
        s.fake.set_status("running")
        await s.wait_truth()
    (stalled,) = events_of(logs, "agentapi.stream_stalled")
    assert stalled["reason"] == "no_first_frame"
    # Headers alone do not show agentapi reachable; /status answering does.
    assert s.recorder.reachable == [True]
    assert s.fake.requests["/events"] == 1


async def test_stream_contradicted_by_the_status_probe_is_given_up(
    make_setup: SetupFactory,
) -> None:
    """The stream stays open but stops carrying events (a subscriber stuck inside
    agentapi) while /status says the agent moved on: the source stops trusting it."""
    with capture_logs() as logs:
        s = await make_setup()
        conversation(s.fake)
        await s.fake.wait_for_subscribers(1)
        await s.wait_truth()
        s.fake.deliver_live = False
        s.fake.add_message("user", "Run the tests")
        s.fake.set_status("running")
        await s.wait_truth()
    (stalled,) = events_of(logs, "agentapi.stream_stalled")
    assert stalled["reason"] == "status_contradicted"
    assert (stalled["stream_status"], stalled["probed_status"]) == ("stable", "running")


async def test_endless_line_keeps_memory_bounded_and_the_stream_comes_back(
    make_setup: SetupFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 1 << 20  # several of the chunks aiohttp hands over (up to 256 KiB)
    most = [0]

    class Recording(SSEParser):
        __slots__ = ()

        def feed(self, chunk: bytes) -> list[SSEEvent]:
            try:
                return super().feed(chunk)
            finally:
                most[0] = max(most[0], self.buffered)
                assert self.buffered <= self.max_frame

    monkeypatch.setattr(source_module, "SSEParser", Recording)
    with capture_logs() as logs:
        s = await make_setup(max_frame=cap, stream_retry=0.5)
        conversation(s.fake)
        s.fake.events_mode = "endless_line"
        await until(lambda: s.dropped() >= 1)
        s.fake.events_mode = "normal"
        # Back on a normal stream (after reconnecting, or after polling for a while).
        await s.fake.wait_for_subscribers(1, DEADLINE)
        s.fake.add_message("user", "Carry on")
        s.fake.set_status("running")
        s.fake.add_message("agent", "On it.")
        await s.wait_truth()
    assert cap // 2 < most[0] <= cap  # it did buffer the line, up to the cap
    assert s.fake.endless_bytes >= cap
    assert s.fake.requests["/events"] >= 2
    too_large = events_of(logs, "agentapi.frame_too_large")
    assert too_large
    assert all(e["limit"] == cap for e in too_large)
    assert s.dropped() == len(too_large)


async def test_idle_healthy_stream_is_not_torn_down(make_setup: SetupFactory) -> None:
    """No keepalives: an idle agent's stream is silent for hours. Silence for many
    probe intervals and first-frame deadlines, with /status agreeing, is health."""
    with capture_logs() as logs:
        s = await make_setup()
        conversation(s.fake)
        await s.wait_truth()
        probes = s.fake.requests["/status"]
        await s.fake.wait_for(lambda: s.fake.requests["/status"] >= probes + 15, DEADLINE)
    assert 15 * PROBE > TIMEOUT, "the silence must outlast the first-frame deadline"
    assert s.fake.requests["/events"] == 1
    assert s.fake.subscriber_count == 1
    assert s.fake.requests["/messages"] == 0
    assert not events_of(logs, "agentapi.stream_stalled")
    assert s.recorder.reachable == [True]


async def test_busy_stream_with_status_flips_is_not_torn_down(make_setup: SetupFactory) -> None:
    """A probe may overtake the stream's status_change: a stream that keeps talking is
    never taken for stalled."""
    with capture_logs() as logs:
        s = await make_setup()
        conversation(s.fake)
        await s.wait_truth()
        probes = s.fake.requests["/status"]
        turn = 0
        while s.fake.requests["/status"] < probes + 15:
            turn += 1
            s.fake.add_message("user", f"step {turn}")
            s.fake.set_status("running")
            s.fake.add_message("agent", f"working on step {turn}")
            for i in range(5):
                await asyncio.sleep(PROBE / 7)  # the agent's pace, not a wait for the source
                s.fake.update_last(f"working on step {turn}: {i}")
            s.fake.set_status("stable")
            assert turn < 200, "the probes stopped"
        await s.wait_truth()
    assert s.fake.requests["/events"] == 1
    assert not events_of(logs, "agentapi.stream_stalled")

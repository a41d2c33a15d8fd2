"""SlotLoop, the life both sinks share (main loop, stop, last try), on a virtual clock.

Every wait is a timer on tests.fakes.clock's loop, so the times asserted are exact and
"nothing was sent in an hour" is shown by sleeping an hour, which takes no time.
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.backoff import Backoff, Deadline
from sidecar.coder.client import Result
from sidecar.coder.delivery import Decision, Delivery, SlotLoop
from sidecar.coder.outcomes import Outcome, Sink, Step
from sidecar.coder.retry import RetryPolicy
from tests.fakes.clock import on_virtual_clock

OK = Result(Outcome.OK, 200, "", None, 1.0)


def failed(retry_after: float) -> Result:
    return Result(Outcome.RETRY, 503, "busy", retry_after, 1.0)


class Credentials:
    async def reload_token(self) -> bool:
        return False


class Sink_:
    """A sink with one slot: `put` makes an item due `gap` after the last attempt."""

    def __init__(self, *, gap: float = 0.0, answer_after: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.delivery = Delivery(
            sink=Sink.STATUS,
            credentials=Credentials(),
            retry=RetryPolicy(transient=Backoff(base=0.0, cap=0.0)),
            clock=self.clock,
        )
        self.loop = SlotLoop(self, self.delivery, clock=self.clock)
        self.gap = gap
        self.answer_after = answer_after  # seconds each answer takes
        self.item: str | None = None
        self.script: list[Result] = []
        self.sent: list[tuple[float, str, float | None]] = []  # (when, item, timeout)
        self.accepted: list[str] = []
        self.raises: Exception | None = None

    def put(self, item: str) -> None:
        self.item = item
        self.loop.wake()

    def next_due(self, now: float) -> float | None:
        return None if self.item is None else self.delivery.ready_at(self.gap)

    async def send(self, timeout: float | None) -> Decision | None:
        item = self.item
        if item is None:
            return None
        if self.raises is not None:
            raise self.raises
        self.sent.append((self.clock(), item, timeout))
        self.delivery.sending()
        await asyncio.sleep(self.answer_after)
        decision = await self.delivery.record(self.script.pop(0) if self.script else OK)
        if decision.step is Step.ACCEPTED:
            self.accepted.append(item)
            if self.item == item:
                self.item = None
        return decision


@on_virtual_clock
async def test_an_item_is_sent_when_due_and_nothing_is_sent_without_one() -> None:
    sink = Sink_(gap=5.0)
    runner = asyncio.create_task(sink.loop.run())
    await asyncio.sleep(3600)
    assert sink.sent == []
    sink.put("a")
    await asyncio.sleep(0.1)
    assert [(at, item) for at, item, _ in sink.sent] == [(3600.0, "a")]
    # The next item waits for the gap after the last attempt, to the second.
    sink.put("b")
    await asyncio.sleep(4.8)
    assert len(sink.sent) == 1
    await asyncio.sleep(0.3)
    assert [(at, item) for at, item, _ in sink.sent][1] == (3605.0, "b")
    assert await sink.loop.stop(Deadline(1.0, clock=sink.clock)) is None
    await runner


@on_virtual_clock
async def test_a_retry_waits_for_its_back_off_then_sends_the_newest_item() -> None:
    sink = Sink_()
    sink.script = [failed(retry_after=30.0)]
    runner = asyncio.create_task(sink.loop.run())
    sink.put("v1")
    await asyncio.sleep(1.0)
    sink.put("v2")  # arrives during the back-off: it does not shorten it
    await asyncio.sleep(28.0)
    assert [item for _, item, _ in sink.sent] == ["v1"]
    await asyncio.sleep(2.0)
    assert [(at, item) for at, item, _ in sink.sent] == [(0.0, "v1"), (30.0, "v2")]
    assert sink.accepted == ["v2"]
    await sink.loop.stop(Deadline(1.0, clock=sink.clock))
    await runner


@on_virtual_clock
async def test_stop_lets_an_attempt_in_flight_finish_within_the_deadline() -> None:
    sink = Sink_(answer_after=2.0)
    runner = asyncio.create_task(sink.loop.run())
    sink.put("in flight")
    await asyncio.sleep(0.5)
    started = sink.clock()
    assert await sink.loop.stop(Deadline(10.0, clock=sink.clock)) is None
    assert sink.clock() - started == pytest.approx(1.5)
    assert sink.accepted == ["in flight"]
    assert runner.done()


@on_virtual_clock
async def test_stop_cancels_an_attempt_in_flight_at_the_deadline() -> None:
    sink = Sink_(answer_after=60.0)
    runner = asyncio.create_task(sink.loop.run())
    sink.put("slow")
    await asyncio.sleep(0.5)
    started = sink.clock()
    assert await sink.loop.stop(Deadline(3.0, clock=sink.clock)) is None
    assert sink.clock() - started == pytest.approx(3.0)
    assert sink.accepted == []
    assert runner.done()
    assert not runner.cancelled()


@on_virtual_clock
async def test_the_last_try_retries_until_accepted() -> None:
    sink = Sink_()
    sink.script = [failed(retry_after=0.5), failed(retry_after=0.5)]
    sink.item = "last words"
    assert await sink.loop.stop(Deadline(5.0, clock=sink.clock), sink.send) is Step.ACCEPTED
    assert [at for at, _, _ in sink.sent] == [0.0, 0.5, 1.0]
    # Each try is bounded by what is left of the deadline.
    assert [timeout for _, _, timeout in sink.sent] == [5.0, 4.5, 4.0]


@on_virtual_clock
async def test_the_last_try_with_nothing_to_send_returns_none() -> None:
    sink = Sink_()
    assert await sink.loop.stop(Deadline(5.0, clock=sink.clock), sink.send) is None
    assert sink.sent == []


@on_virtual_clock
async def test_the_last_try_gives_up_before_a_wait_that_would_pass_the_deadline() -> None:
    sink = Sink_()
    sink.script = [failed(retry_after=60.0)]
    sink.item = "x"
    started = sink.clock()
    assert await sink.loop.stop(Deadline(5.0, clock=sink.clock), sink.send) is Step.RETRY
    assert len(sink.sent) == 1
    # It did not sit out the deadline either.
    assert sink.clock() == started


@on_virtual_clock
async def test_the_last_try_is_cut_at_the_deadline() -> None:
    sink = Sink_(answer_after=600.0)
    sink.item = "x"
    assert await sink.loop.stop(Deadline(2.0, clock=sink.clock), sink.send) is Step.RETRY
    assert sink.clock() == pytest.approx(2.0)


@on_virtual_clock
async def test_the_last_try_keeps_the_gap_and_starts_nothing_at_the_deadline() -> None:
    sink = Sink_(gap=1.0)
    sink.script = [failed(retry_after=0.0)]
    sink.item = "x"
    assert await sink.loop.stop(Deadline(5.0, clock=sink.clock), sink.send, gap=1.0) is (
        Step.ACCEPTED
    )
    assert [at for at, _, _ in sink.sent] == [0.0, 1.0]
    # An attempt that could only start when the deadline has come is not made.
    late = Sink_(gap=1.0)
    late.delivery.sending()
    late.item = "x"
    assert await late.loop.stop(Deadline(1.0, clock=late.clock), late.send, gap=1.0) is (Step.RETRY)
    assert late.sent == []


@on_virtual_clock
async def test_the_last_try_lifts_a_back_off_and_retries_on_the_short_schedule() -> None:
    sink = Sink_()
    sink.script = [Result(Outcome.NOT_FOUND, 404, "Resource not found", None, 1.0)]
    runner = asyncio.create_task(sink.loop.run())
    sink.put("x")
    await asyncio.sleep(1.0)
    assert len(sink.sent) == 1  # now backing off for minutes
    assert await sink.loop.stop(Deadline(5.0, clock=sink.clock), sink.send) is Step.ACCEPTED
    assert [at for at, _, _ in sink.sent] == [0.0, 1.0]
    await runner


@on_virtual_clock
async def test_stop_is_safe_to_call_twice() -> None:
    sink = Sink_()
    runner = asyncio.create_task(sink.loop.run())
    sink.put("x")
    await asyncio.sleep(0.1)
    assert await sink.loop.stop(Deadline(1.0, clock=sink.clock), sink.send) is None
    assert await sink.loop.stop(Deadline(1.0, clock=sink.clock), sink.send) is None
    assert len(sink.sent) == 1
    await runner


@on_virtual_clock
async def test_a_loop_is_stopping_from_its_stop_on() -> None:
    sink = Sink_()
    assert sink.loop.stopping is False
    runner = asyncio.create_task(sink.loop.run())
    await asyncio.sleep(0)
    assert sink.loop.stopping is False
    await sink.loop.stop(Deadline(1.0, clock=sink.clock))
    assert sink.loop.stopping is True
    await runner


@on_virtual_clock
async def test_run_twice_at_once_is_refused() -> None:
    sink = Sink_()
    runner = asyncio.create_task(sink.loop.run())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already running"):
        await sink.loop.run()
    await sink.loop.stop(Deadline(1.0, clock=sink.clock))
    await runner


@on_virtual_clock
async def test_an_error_in_a_send_ends_run_for_the_supervisor() -> None:
    sink = Sink_()
    sink.raises = ValueError("a bug")
    runner = asyncio.create_task(sink.loop.run())
    sink.put("x")
    with pytest.raises(ValueError, match="a bug"):
        await runner
    # The loop can be run again (a supervisor restarts it).
    sink.raises = None
    again = asyncio.create_task(sink.loop.run())
    await asyncio.sleep(0.1)
    assert sink.accepted == ["x"]
    await sink.loop.stop(Deadline(1.0, clock=sink.clock))
    await again


@on_virtual_clock
async def test_cancelling_run_cancels_the_attempt_in_flight() -> None:
    sink = Sink_(answer_after=60.0)
    runner = asyncio.create_task(sink.loop.run())
    sink.put("x")
    await asyncio.sleep(1.0)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await asyncio.sleep(120.0)
    assert sink.accepted == []


@on_virtual_clock
async def test_no_last_try_starts_once_an_attempt_in_flight_used_up_the_deadline() -> None:
    sink = Sink_(answer_after=60.0)
    runner = asyncio.create_task(sink.loop.run())
    sink.put("slow")
    await asyncio.sleep(0.5)
    assert await sink.loop.stop(Deadline(3.0, clock=sink.clock), sink.send) is Step.RETRY
    # The one cancelled at the deadline was the only attempt: none went out after it.
    assert [at for at, _, _ in sink.sent] == [0.0]
    await runner

"""A message whose time Coder refuses, on the real process (SPEC §2: "Time values are
parsed by Go's RFC 3339 parser … fails the decode of the whole body").

agentapi holds a valid conversation and, among it, messages timed `2025-02-30T10:00:00Z`
(a day February does not have) and `2025-06-01T24:00:00Z` (hour 24): one already in its
history when the sidecar connects, one streamed live and updated in place. Coder must end
up storing the newest *valid* conversation, no snapshot POST may be refused, and the
sidecar says once (reason `time`) that it dropped them.

The rig's ground truth (tests/faults/rig.py) keeps every user/agent message; here the
messages made invalid on purpose are taken out of it by id, and the stored body is checked
with the rig's own `snapshot_problem`.
"""

from __future__ import annotations

from typing import Any, Final

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from tests.faults.rig import (
    MAX_MESSAGES,
    Rig,
    expected_messages,
    poisoned_posts,
    read_back,
    snapshot_problem,
    wait_log,
)
from tests.tracebacks import assert_no_traceback

IMPOSSIBLE_DAY: Final = "2025-02-30T10:00:00Z"
HOUR_24: Final = "2025-06-01T24:00:00Z"
DEADLINE: Final = 15.0


def add_timed_message(fake: FakeAgentapi, role: str, content: str, time: str) -> int:
    """A message with a time string of our choosing. It joins the fake's history, so
    /messages and the replay on connect carry it, and it is published to the open
    streams (an in-place update moves the time unless it is given again)."""
    return fake.add_message(role, content, raw_time=time)


def valid_truth(fake: FakeAgentapi, refused: set[int]) -> list[dict[str, Any]]:
    """The newest conversation without the messages whose time Coder refuses."""
    every = expected_messages(fake, max_messages=len(fake.messages) + 1)
    return [m for m in every if m["id"] not in refused][-MAX_MESSAGES:]


def stored_problem(rig: Rig, refused: set[int]) -> str | None:
    stored = rig.coder.fake.snapshots.get(rig.coder.fake.task_id)
    if stored is None:
        return "Coder stores no snapshot"
    return snapshot_problem(valid_truth(rig.agentapi.fake, refused), stored.body)


async def wait_valid_truth(rig: Rig, refused: set[int]) -> None:
    try:
        await rig.coder.fake.wait_for(lambda: stored_problem(rig, refused) is None, DEADLINE)
    except TimeoutError:
        raise AssertionError(f"valid truth not stored: {stored_problem(rig, refused)}") from None


def refused_posts(coder: FakeCoder) -> list[tuple[int | None, bytes]]:
    return [(r.status, r.body[:300]) for r in coder.snapshot_posts() if r.status == 400]


async def test_messages_with_times_coder_refuses_are_dropped_not_posted(rig: Rig) -> None:
    fake, coder = rig.agentapi.fake, rig.coder.fake
    fake.add_message("agent", "Hello! Ready to help.")
    await rig.agent.turn()
    refused = {add_timed_message(fake, "user", "sent on February 30", IMPOSSIBLE_DAY)}
    await rig.start_sidecar()
    await wait_valid_truth(rig, refused)

    # Live: an agent reply timed at hour 24, streamed in place (each update timed so).
    async with rig.seen(updates=4):
        refused.add(add_timed_message(fake, "agent", "at hour", HOUR_24))
        for text in ("at hour 24", "at hour 24 the", "at hour 24 the clock"):
            fake.update_last(text, raw_time=HOUR_24)
    # An agent_error timed on February 30 takes the same check.
    fake.inject_raw(
        b'event: agent_error\ndata: {"message":"boom","level":"error",'
        b'"time":"' + IMPOSSIBLE_DAY.encode() + b'"}\n\n'
    )
    await rig.agent.turn()
    await wait_valid_truth(rig, refused)

    # A reconnect replays the whole history, both refused messages included.
    connects = fake.stream_connects
    fake.drop_streams(abort=True)
    await fake.wait_for(lambda: fake.stream_connects > connects, DEADLINE)
    await rig.agent.turn()
    await wait_valid_truth(rig, refused)

    assert refused_posts(coder) == []
    assert not poisoned_posts(coder)
    for request in coder.snapshot_posts():
        posted = {m["id"] for m in request.json()["messages"]}
        assert not posted & refused, f"a refused message was posted: {request.body[:300]!r}"
    status, body = await read_back(coder, rig.coder.url)
    assert status == 200, body
    assert [e["id"] for e in body["logs"]] == [m["id"] for m in valid_truth(fake, refused)]

    times = [e for e in rig.proc.events("agentapi.invalid_input") if e["reason"] == "time"]
    assert len(times) == 1, times
    assert IMPOSSIBLE_DAY in times[0]["detail"] or HOUR_24 in times[0]["detail"]
    # every drop is counted: 1 in the first replay, 4 live + 1 agent_error, 2 in the replay
    assert await rig.metric("sidecar_invalid_input_total", reason="time") >= 8

    assert await rig.sigterm() == 0
    assert rig.proc.events("shutdown.complete")[-1]["snapshot_delivered"] is True
    assert stored_problem(rig, refused) is None
    assert refused_posts(coder) == []
    assert_no_traceback(rig.proc.output())
    assert not rig.proc.events("task.crashed")


async def test_a_time_go_takes_is_kept_verbatim(rig: Rig) -> None:
    """Go's parser also takes a one-digit hour, a comma before the fraction, more than
    nine fraction digits and an offset minute of 60: such a message is posted as it is,
    and Coder stores it."""
    fake, coder = rig.agentapi.fake, rig.coder.fake
    fake.add_message("agent", "Hello! Ready to help.")
    odd = "2025-06-01T7:00:00,1234567890+05:60"
    add_timed_message(fake, "user", "an odd but valid time", odd)
    await rig.start_sidecar()
    await wait_valid_truth(rig, set())
    stored = coder.stored_snapshot()
    assert stored is not None
    assert stored["messages"][-1]["time"] == odd
    assert refused_posts(coder) == []
    assert not rig.proc.events("agentapi.invalid_input")
    assert await rig.sigterm() == 0


async def test_the_sidecar_starts_while_the_newest_message_is_refused(rig: Rig) -> None:
    """The newest message of agentapi's history is the refused one: the snapshot holds
    the ones before it, and the message after it arrives normally."""
    fake = rig.agentapi.fake
    await rig.agent.turn()
    refused = {add_timed_message(fake, "agent", "streamed at hour 24", HOUR_24)}
    await rig.start_sidecar()
    await wait_log(rig.proc, "agentapi.invalid_input", timeout=DEADLINE)
    await wait_valid_truth(rig, refused)
    await rig.agent.turn()
    await wait_valid_truth(rig, refused)
    assert refused_posts(rig.coder.fake) == []
    assert await rig.sigterm() == 0

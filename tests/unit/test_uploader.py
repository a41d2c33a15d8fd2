"""The uploader's decisions against an in-memory client with scripted results, on a virtual
clock (tests.fakes.clock): every time asserted is exact, and "no post follows" is shown by
sleeping as long as the rule says and looking."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from uuid import UUID

import pytest
from structlog.testing import capture_logs

from sidecar.backoff import Backoff
from sidecar.coder.client import Result
from sidecar.coder.outcomes import SNAPSHOT_STORED, classify
from sidecar.coder.retry import RetryPolicy
from sidecar.mirror import Mirror
from sidecar.models import AgentStatus, Message, MessageUpdate, ReplayStarted, Role, StatusChange
from sidecar.runtime.metrics import Metrics
from sidecar.slot import FlushOutcome
from sidecar.spool import NOTHING_KEPT, Kept, Spool
from sidecar.uploader import FIRST_POST_SPREAD, Uploader
from tests.fakes.clock import on_virtual_clock

TASK = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
T = "2026-01-01T00:00:00Z"
WALL = 1_700_000_000.0  # the wall clock at virtual time 0
UNKNOWN_TASK = "Resource not found or you do not have access to this resource"


def result(status: int | None, retry_after: float | None = None, detail: str = "") -> Result:
    outcome = classify(status, expect=SNAPSHOT_STORED, message=detail)
    return Result(outcome, status, detail, retry_after, 1.0)


NO_ROUTE = result(404, detail="Route not found.")


class RecordingClient:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.posts: list[tuple[float, bytes]] = []  # (virtual time, body)
        self.script: list[Result] = []
        self.reloads = 0
        self.reload_changes = False
        self.version_asked = 0
        self.answer_after = 0.0  # seconds each answer takes
        self.hang = False  # requests never get an answer
        self.hanging = asyncio.Event()

    async def post_log_snapshot(
        self, task_id: UUID, body: bytes, *, timeout: float | None = None
    ) -> Result:
        assert task_id == TASK
        self.posts.append((self.loop.time(), body))
        if self.hang:
            self.hanging.set()
            await asyncio.Event().wait()
        await asyncio.sleep(self.answer_after)
        return self.script.pop(0) if self.script else result(204)

    async def reload_token(self) -> bool:
        self.reloads += 1
        return self.reload_changes

    async def server_version(self) -> str | None:
        self.version_asked += 1
        return "v2.37.2"

    @property
    def bodies(self) -> list[bytes]:
        return [body for _, body in self.posts]

    @property
    def times(self) -> list[float]:
        return [at for at, _ in self.posts]

    def contents(self, i: int = -1) -> list[str]:
        return [m["content"] for m in json.loads(self.bodies[i])["messages"]]


class Rig:
    """An uploader on the running (virtual) loop, its mirror, client and metrics."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        interval: float = 10.0,
        start: bool = True,
        retry: RetryPolicy | None = None,
        spool: Spool | None = None,
        kept: Kept = NOTHING_KEPT,
        rng: random.Random | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.client = RecordingClient()
        self.mirror = Mirror(10)
        self.metrics = Metrics()
        self.spool = spool if spool is not None else self.spool_in(tmp_path)
        self.uploader = Uploader(
            client=self.client,
            task_id=TASK,
            mirror=self.mirror,
            metrics=self.metrics,
            interval=interval,
            spool=self.spool,
            kept=kept,
            retry=retry or RetryPolicy(transient=Backoff(base=1.0, cap=1.0, rng=Ceiling())),
            clock=loop.time,
            wall_clock=lambda: WALL + loop.time(),
            rng=rng or Fixed(0.0),
        )
        self.task = asyncio.create_task(self.uploader.run()) if start else None

    def spool_in(self, directory: Path) -> Spool:
        return Spool(directory, TASK, on_write=self.metrics.spool_writes.inc)

    def put(self, i: int, content: str, role: Role = "agent", *, urgent: bool = False) -> None:
        """A change of the conversation, as the hub reports it."""
        assert self.mirror.apply(MessageUpdate(Message(i, role, content, T)))
        self.uploader.notify(urgent=urgent)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def skipped(self, reason: str) -> float:
        return self.metric("sidecar_snapshot_skipped_total", reason=reason)

    @property
    def pending_since(self) -> float:
        return self.metric("sidecar_snapshot_pending_since_timestamp_seconds")


class Fixed(random.Random):
    """A random source that always draws `fraction` of the range."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


class Ceiling(Fixed):
    def __init__(self) -> None:
        super().__init__(1.0)


async def soon() -> None:
    """Let everything that is ready run (the clock stands still meanwhile), then let a
    millisecond pass."""
    await asyncio.sleep(0.001)


def body_of(*contents: str) -> bytes:
    messages = [{"id": i, "content": c, "role": "agent", "time": T} for i, c in enumerate(contents)]
    return json.dumps({"messages": messages}, separators=(",", ":")).encode()


# --- when posts go -------------------------------------------------------------------------


@on_virtual_clock
async def test_the_first_post_lands_where_the_draw_puts_it_in_the_first_two_intervals(
    tmp_path: Path,
) -> None:
    early = Rig(tmp_path / "a", interval=30.0, rng=Fixed(0.0))
    middle = Rig(tmp_path / "b", interval=30.0, rng=Fixed(0.25))
    late = Rig(tmp_path / "c", interval=30.0, rng=Fixed(1.0))
    for rig in (early, middle, late):
        rig.put(0, "hello", "user")
    await asyncio.sleep(120.0)
    # Spread over two intervals: the latest draw lands at 60 s, a quarter of it at 15 s.
    assert early.client.times == [0.0]
    assert middle.client.times == [15.0]
    assert late.client.times == [FIRST_POST_SPREAD * 30.0] == [60.0]


@on_virtual_clock
async def test_a_fleet_started_together_spreads_its_first_posts_over_two_intervals(
    tmp_path: Path,
) -> None:
    interval = 30.0
    rigs = [Rig(tmp_path / str(n), interval=interval, rng=random.Random(n)) for n in range(200)]
    for rig in rigs:
        rig.put(0, "hello", "user")
    await asyncio.sleep(10 * interval)
    firsts = sorted(rig.client.times[0] for rig in rigs)
    assert all(rig.client.times == rig.client.times[:1] for rig in rigs)
    # Over the whole of both intervals, and no further: not bunched in the first one,
    # nor spread so wide that the first snapshot comes minutes late.
    assert firsts[-1] <= 2 * interval
    assert firsts[-1] > 1.9 * interval
    assert firsts[0] < 0.1 * interval
    assert sum(t <= interval for t in firsts) == pytest.approx(100, abs=25)


@on_virtual_clock
async def test_a_turn_that_ended_is_posted_promptly_even_right_after_a_start(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, interval=600.0, rng=Fixed(1.0))
    rig.put(0, "hello", "user")
    await asyncio.sleep(3.0)
    rig.put(1, "Hi! Done.", urgent=True)
    await soon()
    # The first post of a start is spread over two intervals; a finished turn does not
    # wait for it.
    assert rig.client.times == [3.0]
    assert rig.client.contents() == ["hello", "Hi! Done."]


@on_virtual_clock
async def test_turns_ending_in_a_row_are_at_least_a_second_apart(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=600.0)
    rig.put(0, "a", urgent=True)
    await asyncio.sleep(0.2)
    rig.put(1, "b", urgent=True)
    rig.put(2, "c", urgent=True)
    await asyncio.sleep(5.0)
    # A flapping status must not flood: the second post waits for the one-second gap.
    assert rig.client.times == [0.0, 1.0]
    assert rig.client.contents() == ["a", "b", "c"]


@on_virtual_clock
async def test_streaming_is_posted_once_per_interval_and_latest_wins(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=30.0)
    rig.put(0, "q", "user")
    await soon()
    assert rig.client.times == [0.0]
    loop = asyncio.get_running_loop()
    n = 0
    while loop.time() < 29.9:  # ten updates a second
        n += 1
        rig.put(1, "a" * n)
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    # One post at the interval, carrying what had streamed by then; nothing in between.
    assert rig.client.times == [0.0, 30.0]
    assert rig.client.contents(1) == ["q", "a" * n]
    await asyncio.sleep(3600.0)
    assert len(rig.client.posts) == 2


@pytest.mark.parametrize("urgent", [False, True], ids=["change", "turn-ended"])
@on_virtual_clock
async def test_identical_body_is_never_reposted(tmp_path: Path, urgent: bool) -> None:
    rig = Rig(tmp_path, interval=5.0)
    rig.put(0, "same")
    await asyncio.sleep(10.0)
    # Told of a change that leaves the body as it was (a status flip, a replay of the
    # same history): the uploader looks, and posts nothing.
    rig.uploader.notify(urgent=urgent)
    await asyncio.sleep(60.0)
    assert len(rig.client.posts) == 1
    assert rig.skipped("unchanged") == 1
    assert rig.pending_since == 0


# --- what answers mean -----------------------------------------------------------------------


@on_virtual_clock
async def test_rejected_body_is_not_resent_until_it_changes(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=5.0)
    rig.client.script = [result(400, detail="Invalid request body")]
    rig.put(0, "bad?")
    await asyncio.sleep(1.0)
    rig.uploader.notify(urgent=True)
    await asyncio.sleep(600.0)
    assert len(rig.client.posts) == 1
    assert rig.skipped("refused") == 1
    # Still undelivered: the newest conversation is not at the server.
    assert rig.pending_since == WALL
    assert rig.uploader.pending_age() == 601.0
    rig.put(1, "changed")
    await asyncio.sleep(5.0)
    assert rig.client.contents(1) == ["bad?", "changed"]


@on_virtual_clock
async def test_5xx_is_retried_with_the_newest_body(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=5.0)
    rig.client.script = [result(503, retry_after=20.0), result(None)]
    rig.client.answer_after = 0.5
    rig.put(0, "v1")
    await asyncio.sleep(0.2)
    rig.put(0, "v2")  # arrives while the first attempt is under way
    await asyncio.sleep(60.0)
    # Retry-After said 20 s. The next failure's back-off (1 s here) is shorter than the
    # interval, which a retry of a streaming change keeps too.
    assert rig.client.times == [0.0, 20.5, 25.5]
    assert rig.client.contents(1) == ["v2"]
    assert rig.client.contents(2) == ["v2"]
    # The undelivered body was spooled while failing, and cleared once accepted.
    assert rig.metric("sidecar_spool_writes_total") >= 1
    assert not rig.spool.path.exists()
    assert rig.pending_since == 0


@on_virtual_clock
async def test_every_post_is_timed_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=5.0)
    rig.client.script = [result(503, retry_after=0.0), result(204)]
    rig.put(0, "v1")
    await asyncio.sleep(6.0)
    duration = "sidecar_snapshot_post_duration_seconds"
    assert len(rig.client.posts) == 2
    assert rig.metric(f"{duration}_count") == 2
    # What the client measured (1 ms each, as scripted), not the time the loop saw.
    assert rig.metric(f"{duration}_sum") == pytest.approx(0.002)
    assert rig.metric(f"{duration}_bucket", le="0.005") == 2


@on_virtual_clock
async def test_failure_spools_the_body(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=5.0, retry=RetryPolicy(transient=Backoff(base=60, cap=60)))
    rig.client.script = [result(502)]
    rig.put(0, "keep me")
    await asyncio.sleep(1.0)
    assert rig.spool.path.read_bytes() == rig.client.bodies[0]


@on_virtual_clock
async def test_not_found_backs_off_for_minutes(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=5.0)
    rig.client.script = [result(404, detail=UNKNOWN_TASK)]
    with capture_logs() as logs:
        rig.put(0, "x")
        await asyncio.sleep(1.0)
        rig.put(1, "y")
        await asyncio.sleep(59.0)
    # No post for at least the minute the rule says, then the newest body.
    assert rig.client.times == [0.0]
    assert rig.uploader.blocked_reason == "Coder does not know the task (404)"
    (logged,) = [e for e in logs if e["event"] == "snapshot.task_not_found"]
    assert logged["retry_in_s"] >= 60
    await asyncio.sleep(logged["retry_in_s"])
    assert rig.client.contents() == ["x", "y"]
    assert rig.uploader.blocked_reason is None


@on_virtual_clock
async def test_unauthorized_with_a_rotated_token_retries_at_once_without_spooling(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, interval=5.0)
    rig.client.script = [result(401)]
    rig.client.reload_changes = True
    with capture_logs() as logs:
        rig.put(0, "x")
        await asyncio.sleep(6.0)
    # No back-off: only the interval between two posts.
    assert rig.client.times == [0.0, 5.0]
    assert rig.client.reloads == 1
    assert rig.uploader.blocked_reason is None
    # The token was re-read before anything was decided: no wait was announced and the
    # body never went to disk for a retry that came at once.
    (logged,) = [e for e in logs if e["event"] == "snapshot.unauthorized"]
    assert logged["token_changed"] is True
    assert logged["retry_in_s"] == 0
    assert rig.metric("sidecar_spool_writes_total") == 0


@on_virtual_clock
async def test_unauthorized_without_new_token_backs_off_and_spools(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=5.0)
    rig.client.script = [result(403)]
    with capture_logs() as logs:
        rig.put(0, "x")
        await asyncio.sleep(1.0)
    assert rig.client.reloads == 1
    assert rig.uploader.blocked_reason == "the agent token is rejected (401/403)"
    (logged,) = [e for e in logs if e["event"] == "snapshot.unauthorized"]
    assert logged["token_changed"] is False
    assert logged["retry_in_s"] >= 1
    assert rig.spool.path.read_bytes() == rig.client.bodies[0]


@on_virtual_clock
async def test_rotated_token_file_lifts_the_401_backoff(tmp_path: Path) -> None:
    # The 401 back-off is 6 s here (1 s floor plus 5 s); the rotation ends it at once.
    retry = RetryPolicy(auth=Backoff(base=5.0, cap=5.0, rng=Ceiling()))
    rig = Rig(tmp_path, interval=1.0, retry=retry)
    rig.client.script = [result(401)]
    rig.put(0, "x")
    await asyncio.sleep(0.5)
    assert rig.uploader.blocked_reason is not None
    rig.uploader.credentials_changed()
    await asyncio.sleep(1.0)
    assert rig.client.times == [0.0, 1.0]
    assert rig.client.contents() == ["x"]


@on_virtual_clock
async def test_an_answer_no_coder_gives_is_not_delivered(tmp_path: Path) -> None:
    # A login page in front of Coder answers 200 to everything: nothing was stored.
    rig = Rig(tmp_path, interval=5.0)
    rig.client.script = [result(200)] * 10
    with capture_logs() as logs:
        rig.put(0, "x")
        await asyncio.sleep(1.0)
    assert rig.uploader.blocked_reason == "CODER_AGENT_URL does not answer as Coder"
    assert rig.spool.path.read_bytes() == rig.client.bodies[0]
    assert rig.pending_since == WALL
    assert [e["event"] for e in logs if e["event"].startswith("snapshot.")] == [
        "snapshot.not_coder"
    ]
    assert await rig.uploader.flush(2.0) is FlushOutcome.SPOOLED


@on_virtual_clock
async def test_a_client_that_raises_is_retried_as_no_answer(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=5.0)
    failures = [RecursionError("maximum recursion depth exceeded")]
    post = rig.client.post_log_snapshot

    async def flaky(task_id: UUID, body: bytes, *, timeout: float | None = None) -> Result:
        if failures:
            raise failures.pop()
        return await post(task_id, body, timeout=timeout)

    rig.client.post_log_snapshot = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        rig.put(0, "x")
        await asyncio.sleep(6.0)
    assert rig.client.times == [5.0]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["snapshot.client_error"]
    assert rig.task is not None
    assert not rig.task.done()


# --- since when the server lacks the newest words -------------------------------------------


@on_virtual_clock
async def test_a_long_turn_whose_posts_are_accepted_is_never_long_undelivered(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, interval=30.0)
    rig.client.answer_after = 0.2
    ages = []
    for n in range(1200):  # two minutes of updates, ten a second
        rig.put(0, "x" * (n + 1))
        await asyncio.sleep(0.1)
        ages.append(rig.uploader.pending_age())
    # Each accepted post leaves undelivered only what changed while it was under way,
    # plus what came since: never more than an interval and the time a post takes.
    assert max(ages) <= 30.0 + 0.2 + 0.1
    assert rig.client.times[:4] == [0.0, 30.0, 60.0, 90.0]


@on_virtual_clock
async def test_pending_age_counts_from_the_first_change_the_server_lacks(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=30.0)
    rig.client.answer_after = 1.0
    rig.put(0, "a")
    await asyncio.sleep(0.5)  # the post (built at 0) is under way
    rig.put(0, "ab")
    await asyncio.sleep(0.6)  # accepted at 1.0: the server lacks only the change at 0.5
    assert rig.uploader.pending_age() == pytest.approx(0.6)
    assert rig.pending_since == pytest.approx(WALL + 0.5)


# --- stop ------------------------------------------------------------------------------------


@on_virtual_clock
async def test_empty_conversation_is_never_posted(tmp_path: Path) -> None:
    rig = Rig(tmp_path, start=False)
    rig.uploader.notify()
    assert await rig.uploader.flush(1.0) is FlushOutcome.NOTHING
    assert rig.client.posts == []


@on_virtual_clock
async def test_flush_delivers_newest_and_is_callable_twice(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=60.0)
    rig.put(0, "first", urgent=True)
    await asyncio.sleep(1.0)
    rig.put(1, "last words")  # inside the interval: not posted yet
    assert await rig.uploader.flush(2.0) is FlushOutcome.DELIVERED
    assert rig.client.contents() == ["first", "last words"]
    assert await rig.uploader.flush(2.0) is FlushOutcome.DELIVERED
    assert len(rig.client.posts) == 2
    assert rig.task is not None
    assert rig.task.done()


@on_virtual_clock
async def test_flush_waits_for_a_post_in_flight_then_sends_what_came_after(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, interval=60.0)
    rig.client.answer_after = 2.0
    rig.put(0, "first", urgent=True)
    await asyncio.sleep(0.5)
    rig.put(1, "after")
    assert await rig.uploader.flush(5.0) is FlushOutcome.DELIVERED
    assert rig.client.times == [0.0, 2.0]
    assert rig.client.contents() == ["first", "after"]


@on_virtual_clock
async def test_flush_retries_until_the_deadline_then_spools(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=60.0, start=False)
    rig.client.script = [result(503)] * 1000
    rig.put(0, "undeliverable")
    loop = asyncio.get_running_loop()
    assert await rig.uploader.flush(5.5) is FlushOutcome.SPOOLED
    # One try a second (the transient back-off here), none that could not start in time.
    assert rig.client.times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert loop.time() == 5.0
    assert rig.spool.path.read_bytes() == rig.client.bodies[-1]


@on_virtual_clock
async def test_flush_that_cannot_spool_says_the_body_is_lost(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    rig = Rig(tmp_path, interval=60.0, start=False, spool=Spool(blocker, TASK))
    rig.client.script = [result(503)] * 1000
    rig.put(0, "nowhere to go")
    assert await rig.uploader.flush(0.2) is FlushOutcome.LOST


@on_virtual_clock
async def test_flush_of_a_refused_body_says_so(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=60.0, start=False)
    rig.client.script = [result(400, detail="parsing time failed")]
    rig.put(0, "refused")
    assert await rig.uploader.flush(1.0) is FlushOutcome.REJECTED
    # Asked again, it does not resend what was refused, and still says what happened.
    assert await rig.uploader.flush(1.0) is FlushOutcome.REJECTED
    assert len(rig.client.posts) == 1
    assert not rig.spool.path.exists()


@on_virtual_clock
async def test_flush_cut_short_still_spools(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=60.0, start=False)
    rig.client.hang = True
    rig.put(0, "interrupted")
    flush = asyncio.create_task(rig.uploader.flush(30.0))
    await rig.client.hanging.wait()
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    assert rig.uploader.conclude() is FlushOutcome.SPOOLED
    assert json.loads(rig.spool.path.read_bytes())["messages"][0]["content"] == "interrupted"


def test_outcomes_say_whether_anything_is_left_to_deliver() -> None:
    assert {o for o in FlushOutcome if o.delivered} == {
        FlushOutcome.DELIVERED,
        FlushOutcome.NOTHING,
        FlushOutcome.NO_TASKS_API,
        FlushOutcome.OFF,
    }


# --- the spool -------------------------------------------------------------------------------


@on_virtual_clock
async def test_spooled_body_is_delivered_on_start(tmp_path: Path) -> None:
    body = body_of("from last run")
    spool = Spool(tmp_path, TASK)
    assert spool.save(body)
    rig = Rig(tmp_path, interval=5.0, spool=spool, kept=spool.recover())
    await asyncio.sleep(1.0)
    assert rig.client.bodies == [body]
    assert not spool.path.exists()
    assert rig.uploader.pending_age() == 0


@on_virtual_clock
async def test_newer_conversation_supersedes_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, TASK)
    assert spool.save(body_of("old"))
    rig = Rig(tmp_path, interval=5.0, start=False, spool=spool, kept=spool.recover())
    rig.put(0, "new")
    assert await rig.uploader.flush(1.0) is FlushOutcome.DELIVERED
    assert rig.client.contents() == ["new"]
    assert len(rig.client.posts) == 1
    assert not spool.path.exists()


@on_virtual_clock
async def test_a_conversation_emptied_by_a_restart_keeps_the_last_one(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=5.0)
    rig.client.script = [result(503)]
    rig.put(0, "before the restart")
    await asyncio.sleep(0.5)
    # agentapi restarts without its state file: its replay is empty.
    rig.mirror.apply(ReplayStarted())
    assert rig.mirror.apply(StatusChange(AgentStatus.STABLE))
    rig.uploader.notify(urgent=True)
    await asyncio.sleep(5.0)
    # Nothing empty is ever posted; the last conversation is delivered instead.
    assert rig.client.contents() == ["before the restart"]
    assert await rig.uploader.flush(1.0) is FlushOutcome.DELIVERED
    assert len(rig.client.posts) == 2


class FullDisk(Spool):
    """A spool whose writes fail, as on a full disk, while removing still works."""

    def save(self, body: bytes) -> bool:
        return False


class StuckFile(Spool):
    """A spool whose file cannot be removed (a directory that turned read-only for
    unlinks), while it can still be rewritten."""

    def clear(self, *, reason: str | None = None) -> bool:
        return False


@on_virtual_clock
async def test_a_body_that_cannot_be_kept_takes_the_older_spool_with_it(tmp_path: Path) -> None:
    older = Spool(tmp_path, TASK)
    assert older.save(body_of("from the last run"))
    spool = FullDisk(tmp_path, TASK)
    rig = Rig(tmp_path, interval=60.0, start=False, spool=spool, kept=spool.recover())
    rig.client.script = [result(503)] * 1000
    rig.put(0, "newer words that the full disk cannot keep")
    assert await rig.uploader.flush(0.2) is FlushOutcome.LOST
    # Left there, the older body would be delivered over the newer words at next start.
    assert not spool.path.exists()


@on_virtual_clock
async def test_a_spool_that_cannot_be_removed_is_overwritten_with_what_coder_holds(
    tmp_path: Path,
) -> None:
    spool = StuckFile(tmp_path, TASK)
    assert spool.save(body_of("from the last run"))
    rig = Rig(tmp_path, interval=60.0, start=False, spool=spool, kept=spool.recover())
    rig.put(0, "newer, accepted")
    assert await rig.uploader.flush(1.0) is FlushOutcome.DELIVERED
    # The next start finds the body Coder already holds, never the older one.
    assert spool.path.read_bytes() == rig.client.bodies[-1]


# --- a Coder without Tasks -------------------------------------------------------------------


@on_virtual_clock
async def test_a_coder_without_tasks_turns_snapshots_off_and_says_so_once(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, TASK)
    assert spool.save(body_of("kept for a server that has no room for it"))
    rig = Rig(tmp_path, interval=5.0, spool=spool, kept=spool.recover())
    rig.client.script = [NO_ROUTE, NO_ROUTE]
    with capture_logs() as logs:
        await asyncio.sleep(1.0)
        assert rig.uploader.tasks_api_missing
        rig.put(0, "more")
        rig.put(1, "and more", urgent=True)
        await asyncio.sleep(2999.0)  # the re-check comes after at least 50 minutes
    assert len(rig.client.posts) == 1
    (said,) = [e for e in logs if e["event"] == "snapshot.no_tasks_api"]
    assert said["log_level"] == "error"
    assert said["message"] == (
        "Coder v2.37.2 has no Tasks API: log snapshots are off; statuses are still relayed"
    )
    assert [e["reason"] for e in logs if e["event"] == "spool.dropped"] == [
        "no Tasks API on this server"
    ]
    assert not spool.path.exists()
    assert rig.metric("sidecar_snapshot_tasks_api") == 0
    # Nothing counts as stuck: snapshots are off, not failing.
    assert rig.pending_since == 0
    assert rig.uploader.blocked_reason is None
    # The stop has nothing to deliver and keeps nothing.
    assert await rig.uploader.flush(5.0) is FlushOutcome.NO_TASKS_API
    assert not spool.path.exists()
    assert rig.client.version_asked == 1


@on_virtual_clock
async def test_a_bare_404_is_a_coder_without_the_endpoint(tmp_path: Path) -> None:
    rig = Rig(tmp_path, interval=60.0, start=False)
    rig.client.script = [result(404)] * 10
    rig.put(0, "hello")
    assert await rig.uploader.flush(10.0) is FlushOutcome.NO_TASKS_API
    assert len(rig.client.posts) == 1
    assert not rig.spool.path.exists()


@on_virtual_clock
async def test_a_server_that_gains_the_tasks_api_is_used_again(tmp_path: Path) -> None:
    rig = Rig(
        tmp_path,
        interval=5.0,
        retry=RetryPolicy(
            transient=Backoff(base=0.01, cap=0.05),
            no_route=Backoff(base=60.0, cap=60.0, rng=Ceiling()),
            no_route_floor=0.0,
        ),
    )
    rig.client.script = [NO_ROUTE]
    with capture_logs() as logs:
        rig.put(0, "hello")
        await asyncio.sleep(1.0)
        assert rig.uploader.tasks_api_missing
        # The server is upgraded; the next check (hourly, here after a minute) finds it.
        await asyncio.sleep(60.0)
    assert rig.client.times == [0.0, 60.0]
    assert not rig.uploader.tasks_api_missing
    assert rig.metric("sidecar_snapshot_tasks_api") == 1
    assert [e["event"] for e in logs if e["event"].startswith("snapshot.")] == [
        "snapshot.no_tasks_api",
        "snapshot.posted",
        "snapshot.tasks_api_found",
    ]

"""The uploader's decisions against an in-memory client with scripted results.

Where a test must show that something did *not* happen, it waits until the uploader has
looked at the change and found nothing to send (`sidecar_snapshot_skipped_total` counts
that), or until the pending gauge went back to 0.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from uuid import UUID

import pytest
from structlog.testing import capture_logs

from sidecar.backoff import Backoff
from sidecar.coder.client import Result, classify
from sidecar.coder.retry import RetryPolicy
from sidecar.mirror import Mirror
from sidecar.models import (
    AgentStatus,
    Message,
    MessageUpdate,
    ReplayStarted,
    Role,
    StatusChange,
)
from sidecar.runtime.metrics import Metrics
from sidecar.spool import Spool, Spooled
from sidecar.uploader import FlushOutcome, Uploader

TASK = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
T = "2026-01-01T00:00:00Z"
DEADLINE = 5.0


def result(status: int | None, retry_after: float | None = None, detail: str = "") -> Result:
    return Result(classify(status, detail), status, detail, retry_after, 1.0)


NO_ROUTE = result(404, detail="Route not found.")


class RecordingClient:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.script: list[Result] = []
        self.reloads = 0
        self.reload_changes = False
        self.posted = asyncio.Condition()
        self.version_asked = 0
        self.gate = asyncio.Event()  # cleared: answers wait until it is set again
        self.gate.set()
        self.hang = False  # requests never get an answer
        self.hanging = asyncio.Event()

    async def post_log_snapshot(
        self, task_id: UUID, body: bytes, *, timeout: float | None = None
    ) -> Result:
        assert task_id == TASK
        if self.hang:
            self.hanging.set()
            await asyncio.Event().wait()
        res = self.script.pop(0) if self.script else result(204)
        async with self.posted:
            self.bodies.append(body)
            self.posted.notify_all()
        await self.gate.wait()
        return res

    async def reload_token(self) -> bool:
        self.reloads += 1
        return self.reload_changes

    async def server_version(self) -> str | None:
        self.version_asked += 1
        return "v2.37.2"

    async def wait_posts(self, n: int, timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout), self.posted:
            await self.posted.wait_for(lambda: len(self.bodies) >= n)

    def contents(self, i: int = -1) -> list[str]:
        return [m["content"] for m in json.loads(self.bodies[i])["messages"]]


@dataclass(frozen=True, slots=True)
class Rig:
    client: RecordingClient
    mirror: Mirror
    uploader: Uploader
    metrics: Metrics
    spool_path: Path

    def put(self, i: int, content: str, role: Role = "agent", *, urgent: bool = False) -> None:
        """A change of the conversation, as the hub reports it."""
        assert self.mirror.apply(MessageUpdate(Message(i, role, content, T)))
        self.uploader.notify(urgent=urgent)

    def metric(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        return 0.0 if value is None else value

    def skipped(self, reason: str) -> float:
        return self.metric_of("sidecar_snapshot_skipped_total", reason=reason)

    def metric_of(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE):
            while not predicate():
                await asyncio.sleep(0.005)

    async def settled(self) -> None:
        """Wait until the uploader has dealt with every change it was told about."""
        await self.until(
            lambda: self.metric("sidecar_snapshot_pending_since_timestamp_seconds") == 0
        )


class RigFactory(Protocol):
    def __call__(
        self,
        *,
        interval: float = 0.2,
        start: bool = True,
        retry: RetryPolicy | None = None,
        spool: Spool | None = None,
        recovered: Spooled | None = None,
        rng: random.Random | None = None,
    ) -> Rig: ...


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[RigFactory]:
    tasks: list[asyncio.Task[None]] = []

    def make(
        *,
        interval: float = 0.2,
        start: bool = True,
        retry: RetryPolicy | None = None,
        spool: Spool | None = None,
        recovered: Spooled | None = None,
        rng: random.Random | None = None,
    ) -> Rig:
        client = RecordingClient()
        mirror = Mirror(10)
        metrics = Metrics()
        spool = spool if spool is not None else Spool(tmp_path, TASK)
        uploader = Uploader(
            client=client,
            task_id=TASK,
            mirror=mirror,
            metrics=metrics,
            interval=interval,
            spool=spool,
            recovered=recovered,
            retry=retry or RetryPolicy(transient=Backoff(base=0.01, cap=0.05)),
            rng=rng,
        )
        if start:
            tasks.append(asyncio.create_task(uploader.run()))
        return Rig(client, mirror, uploader, metrics, spool.path)

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def body_of(*contents: str) -> bytes:
    messages = [{"id": i, "content": c, "role": "agent", "time": T} for i, c in enumerate(contents)]
    return json.dumps({"messages": messages}, separators=(",", ":")).encode()


async def test_the_first_post_after_a_start_comes_within_two_intervals(
    make_rig: RigFactory,
) -> None:
    rig = make_rig(interval=0.3)
    rig.put(0, "hello", "user")
    await rig.client.wait_posts(1)
    assert rig.client.contents() == ["hello"]


async def test_a_turn_that_ended_is_posted_promptly_even_right_after_a_start(
    make_rig: RigFactory,
) -> None:
    rig = make_rig(interval=600.0)
    rig.put(0, "hello", "user")
    rig.put(1, "Hi! Done.", urgent=True)
    # The first post of a start is spread over the interval; a finished turn waits at
    # most the one second that keeps a flapping status from flooding.
    await rig.client.wait_posts(1)
    assert rig.client.contents() == ["hello", "Hi! Done."]


class Fixed(random.Random):
    """A random source that always draws `fraction` of the range."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


async def test_the_first_post_after_a_start_lands_where_the_random_draw_puts_it(
    make_rig: RigFactory,
) -> None:
    # Two sidecars started together: one drew the start of the first two intervals, the
    # other their end. The spread is what keeps a fleet that starts together apart.
    early = make_rig(interval=0.5, rng=Fixed(0.0))
    late = make_rig(interval=0.5, rng=Fixed(1.0))
    late.put(0, "hello", "user")
    early.put(0, "hello", "user")
    await early.client.wait_posts(1)
    assert late.client.bodies == []
    await late.client.wait_posts(1)


async def test_streaming_is_coalesced_and_latest_wins(make_rig: RigFactory) -> None:
    rig = make_rig(interval=0.3)
    rig.put(0, "q", "user")
    await rig.client.wait_posts(1)
    for n in range(50):
        rig.put(1, "a" * (n + 1))
    await rig.client.wait_posts(2)
    await rig.settled()
    # Nothing more came: the second post already carried the newest content.
    assert rig.client.contents(1) == ["q", "a" * 50]
    assert len(rig.client.bodies) == 2


@pytest.mark.parametrize("urgent", [False, True], ids=["change", "turn-ended"])
async def test_identical_body_is_never_reposted(make_rig: RigFactory, urgent: bool) -> None:
    rig = make_rig(interval=0.05)
    rig.put(0, "same")
    await rig.client.wait_posts(1)
    await rig.settled()
    # Told of a change that leaves the body as it was (a status flip, a replay of the
    # same history): the uploader looks, and posts nothing.
    rig.uploader.notify(urgent=urgent)
    await rig.until(lambda: rig.skipped("unchanged") == 1)
    assert len(rig.client.bodies) == 1


async def test_rejected_body_is_not_resent_until_it_changes(make_rig: RigFactory) -> None:
    rig = make_rig(interval=0.05)
    rig.client.script = [result(400, detail="Invalid request body")]
    rig.put(0, "bad?")
    await rig.client.wait_posts(1)
    rig.uploader.notify(urgent=True)
    await rig.until(lambda: rig.skipped("refused") == 1)
    assert len(rig.client.bodies) == 1
    # Still undelivered: the newest conversation is not at the server.
    assert rig.metric("sidecar_snapshot_pending_since_timestamp_seconds") > 0
    rig.put(1, "changed")
    await rig.client.wait_posts(2)
    assert rig.client.contents(1) == ["bad?", "changed"]


async def test_5xx_is_retried_with_the_newest_body(make_rig: RigFactory) -> None:
    rig = make_rig(interval=0.05)
    rig.client.script = [result(503, retry_after=0.2), result(None)]
    rig.client.gate.clear()
    rig.put(0, "v1")
    await rig.client.wait_posts(1)
    rig.put(0, "v2")  # arrives while the first attempt is under way
    rig.client.gate.set()
    await rig.client.wait_posts(3)
    assert rig.client.contents(1) == ["v2"]
    assert rig.client.contents(2) == ["v2"]
    await rig.settled()
    # The undelivered body was spooled while failing, and cleared once accepted.
    assert rig.metric("sidecar_spool_writes_total") >= 1
    assert not rig.spool_path.exists()


async def test_failure_spools_the_body(make_rig: RigFactory) -> None:
    rig = make_rig(interval=0.05, retry=RetryPolicy(transient=Backoff(base=60, cap=60)))
    rig.client.script = [result(502)]
    rig.put(0, "keep me")
    await rig.client.wait_posts(1)
    await rig.until(rig.spool_path.exists)
    assert rig.spool_path.read_bytes() == rig.client.bodies[0]


async def test_not_found_backs_off_for_minutes(make_rig: RigFactory) -> None:
    rig = make_rig(interval=0.05)
    rig.client.script = [result(404, detail="Resource not found")]
    with capture_logs() as logs:
        rig.put(0, "x")
        await rig.client.wait_posts(1)
        await rig.until(lambda: rig.uploader.blocked_reason is not None)
        rig.put(1, "y")
        for _ in range(50):  # the loop looks at the change; no post may follow
            await asyncio.sleep(0)
    assert rig.uploader.blocked_reason == "not_found"
    assert len(rig.client.bodies) == 1
    (logged,) = [e for e in logs if e["event"] == "snapshot.task_not_found"]
    assert logged["retry_in_s"] >= 60


async def test_unauthorized_with_a_rotated_token_retries_at_once_without_spooling(
    make_rig: RigFactory,
) -> None:
    rig = make_rig(interval=0.05)
    rig.client.script = [result(401)]
    rig.client.reload_changes = True
    with capture_logs() as logs:
        rig.put(0, "x")
        await rig.client.wait_posts(2)
        await rig.settled()
    assert rig.client.reloads == 1
    assert rig.uploader.blocked_reason is None
    # The token was re-read before anything was decided: no wait was announced and the
    # body never went to disk for a retry that came at once.
    (logged,) = [e for e in logs if e["event"] == "snapshot.unauthorized"]
    assert logged["token_changed"] is True
    assert logged["retry_in_s"] == 0
    assert rig.metric("sidecar_spool_writes_total") == 0


async def test_unauthorized_without_new_token_backs_off_and_spools(make_rig: RigFactory) -> None:
    rig = make_rig(interval=0.05)
    rig.client.script = [result(403)]
    with capture_logs() as logs:
        rig.put(0, "x")
        await rig.client.wait_posts(1)
        await rig.until(lambda: rig.uploader.blocked_reason is not None)
    assert rig.client.reloads == 1
    assert rig.uploader.blocked_reason == "unauthorized"
    (logged,) = [e for e in logs if e["event"] == "snapshot.unauthorized"]
    assert logged["token_changed"] is False
    assert logged["retry_in_s"] >= 1
    assert rig.spool_path.read_bytes() == rig.client.bodies[0]


async def test_rotated_token_file_lifts_the_401_backoff(make_rig: RigFactory) -> None:
    rig = make_rig(interval=0.05)
    rig.client.script = [result(401)]
    rig.put(0, "x")
    await rig.client.wait_posts(1)
    await rig.until(lambda: rig.uploader.blocked_reason is not None)
    rig.uploader.credentials_changed()
    await rig.client.wait_posts(2)
    assert rig.client.contents() == ["x"]


async def test_empty_conversation_is_never_posted(make_rig: RigFactory) -> None:
    rig = make_rig(interval=0.05, start=False)
    rig.uploader.notify()
    assert await rig.uploader.flush(1.0) is FlushOutcome.NOTHING
    assert rig.client.bodies == []


async def test_flush_delivers_newest_and_is_callable_twice(make_rig: RigFactory) -> None:
    rig = make_rig(interval=60.0)
    rig.put(0, "first", urgent=True)
    await rig.client.wait_posts(1)
    rig.put(1, "last words")  # inside the interval: not posted yet
    assert await rig.uploader.flush(2.0) is FlushOutcome.DELIVERED
    assert rig.client.contents() == ["first", "last words"]
    assert await rig.uploader.flush(2.0) is FlushOutcome.DELIVERED
    assert len(rig.client.bodies) == 2


async def test_flush_retries_until_the_deadline_then_spools(make_rig: RigFactory) -> None:
    rig = make_rig(interval=60.0, start=False)
    rig.client.script = [result(503)] * 1000
    rig.put(0, "undeliverable")
    # The flush keeps to its budget (0.5 s); the outer bound only stops a runaway.
    async with asyncio.timeout(DEADLINE):
        assert await rig.uploader.flush(0.5) is FlushOutcome.SPOOLED
    assert len(rig.client.bodies) > 1
    assert rig.spool_path.read_bytes() == rig.client.bodies[-1]


async def test_flush_that_cannot_spool_says_the_body_is_lost(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    rig = make_rig(interval=60.0, start=False, spool=Spool(blocker, TASK))
    rig.client.script = [result(503)] * 1000
    rig.put(0, "nowhere to go")
    assert await rig.uploader.flush(0.2) is FlushOutcome.LOST


async def test_flush_of_a_refused_body_says_so(make_rig: RigFactory) -> None:
    rig = make_rig(interval=60.0, start=False)
    rig.client.script = [result(400, detail="parsing time failed")]
    rig.put(0, "refused")
    assert await rig.uploader.flush(1.0) is FlushOutcome.REJECTED
    # Asked again, it does not resend what was refused, and still says what happened.
    assert await rig.uploader.flush(1.0) is FlushOutcome.REJECTED
    assert len(rig.client.bodies) == 1
    assert not rig.spool_path.exists()


async def test_spooled_body_is_delivered_on_start(make_rig: RigFactory, tmp_path: Path) -> None:
    body = body_of("from last run")
    spool = Spool(tmp_path, TASK)
    assert spool.save(body)
    rig = make_rig(interval=0.05, spool=spool, recovered=spool.load())
    await rig.client.wait_posts(1)
    assert rig.client.bodies[0] == body
    await rig.settled()
    assert not spool.path.exists()
    assert rig.uploader.pending_age() == 0


async def test_newer_conversation_supersedes_the_spool(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, TASK)
    assert spool.save(body_of("old"))
    rig = make_rig(interval=0.05, start=False, spool=spool, recovered=spool.load())
    rig.put(0, "new")
    assert await rig.uploader.flush(1.0) is FlushOutcome.DELIVERED
    assert rig.client.contents() == ["new"]
    assert len(rig.client.bodies) == 1
    assert not spool.path.exists()


async def test_flush_cut_short_still_spools(make_rig: RigFactory) -> None:
    rig = make_rig(interval=60.0, start=False)
    rig.client.hang = True
    rig.put(0, "interrupted")
    flush = asyncio.create_task(rig.uploader.flush(30.0))
    await asyncio.wait_for(rig.client.hanging.wait(), DEADLINE)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    assert rig.uploader.conclude() is FlushOutcome.SPOOLED
    assert json.loads(rig.spool_path.read_bytes())["messages"][0]["content"] == "interrupted"


def test_outcomes_say_whether_the_server_holds_the_conversation() -> None:
    assert {o for o in FlushOutcome if o.delivered} == {
        FlushOutcome.DELIVERED,
        FlushOutcome.NOTHING,
        FlushOutcome.NO_TASKS_API,
    }


async def test_a_conversation_emptied_by_a_restart_keeps_the_last_one(
    make_rig: RigFactory,
) -> None:
    rig = make_rig(interval=0.05)
    rig.client.script = [result(503)]
    rig.put(0, "before the restart")
    await rig.client.wait_posts(1)
    # agentapi restarts without its state file: its replay is empty.
    rig.mirror.apply(ReplayStarted())
    assert rig.mirror.apply(StatusChange(AgentStatus.STABLE))
    rig.uploader.notify(urgent=True)
    # Nothing empty is ever posted; the last conversation is delivered instead.
    await rig.client.wait_posts(2)
    assert rig.client.contents() == ["before the restart"]
    assert await rig.uploader.flush(1.0) is FlushOutcome.DELIVERED
    assert len(rig.client.bodies) == 2


async def test_a_coder_without_tasks_turns_snapshots_off_and_says_so_once(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, TASK)
    assert spool.save(body_of("kept for a server that has no room for it"))
    rig = make_rig(interval=0.05, spool=spool, recovered=spool.load())
    rig.client.script = [NO_ROUTE, NO_ROUTE]
    with capture_logs() as logs:
        await rig.client.wait_posts(1)
        await rig.until(lambda: rig.uploader.tasks_api_missing)
        rig.put(0, "more")
        rig.put(1, "and more", urgent=True)
        for _ in range(50):  # the loop looks at the changes; no post may follow
            await asyncio.sleep(0)
    assert len(rig.client.bodies) == 1
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
    assert rig.metric("sidecar_snapshot_pending_since_timestamp_seconds") == 0
    assert rig.uploader.blocked_reason is None
    # The stop has nothing to deliver and keeps nothing.
    assert await rig.uploader.flush(5.0) is FlushOutcome.NO_TASKS_API
    assert not spool.path.exists()
    assert rig.client.version_asked == 1


async def test_flush_against_a_coder_without_tasks_asks_once_and_keeps_nothing(
    make_rig: RigFactory,
) -> None:
    rig = make_rig(interval=60.0, start=False)
    rig.client.script = [NO_ROUTE] * 10
    rig.put(0, "hello")
    assert await rig.uploader.flush(10.0) is FlushOutcome.NO_TASKS_API
    assert len(rig.client.bodies) == 1
    assert not rig.spool_path.exists()


async def test_a_server_that_gains_the_tasks_api_is_used_again(make_rig: RigFactory) -> None:
    rig = make_rig(
        interval=0.05,
        retry=RetryPolicy(
            transient=Backoff(base=0.01, cap=0.05),
            no_route=Backoff(base=0.1, cap=0.1),
            no_route_floor=0.0,
        ),
    )
    rig.client.script = [NO_ROUTE]
    with capture_logs() as logs:
        rig.put(0, "hello")
        await rig.until(lambda: rig.uploader.tasks_api_missing)
        # The server is upgraded; the next check (hourly, here at once) finds the route.
        await rig.client.wait_posts(2)
        await rig.until(lambda: not rig.uploader.tasks_api_missing)
    assert rig.client.contents() == ["hello"]
    assert rig.metric("sidecar_snapshot_tasks_api") == 1
    assert [e["event"] for e in logs if e["event"].startswith("snapshot.")] == [
        "snapshot.no_tasks_api",
        "snapshot.posted",
        "snapshot.tasks_api_found",
    ]


class FullDisk(Spool):
    """A spool whose writes fail, as on a full disk, while removing still works."""

    def save(self, body: bytes) -> bool:
        return False


class StuckFile(Spool):
    """A spool whose file cannot be removed (a directory that turned read-only for
    unlinks), while it can still be rewritten."""

    def clear(self, *, reason: str | None = None) -> bool:
        return False


async def test_a_body_that_cannot_be_kept_takes_the_older_spool_with_it(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    older = Spool(tmp_path, TASK)
    assert older.save(body_of("from the last run"))
    spool = FullDisk(tmp_path, TASK)
    rig = make_rig(interval=60.0, start=False, spool=spool, recovered=spool.load())
    rig.client.script = [result(503)] * 1000
    rig.put(0, "newer words that the full disk cannot keep")
    assert await rig.uploader.flush(0.2) is FlushOutcome.LOST
    # Left there, the older body would be delivered over the newer words at next start.
    assert not spool.path.exists()


async def test_a_spool_that_cannot_be_removed_is_overwritten_with_what_coder_holds(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    spool = StuckFile(tmp_path, TASK)
    assert spool.save(body_of("from the last run"))
    rig = make_rig(interval=60.0, start=False, spool=spool, recovered=spool.load())
    rig.put(0, "newer, accepted")
    assert await rig.uploader.flush(1.0) is FlushOutcome.DELIVERED
    # The next start finds the body Coder already holds, never the older one.
    assert spool.path.read_bytes() == rig.client.bodies[-1]

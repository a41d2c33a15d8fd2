"""The uploader's decisions against an in-memory client with scripted results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from uuid import UUID

import pytest

from sidecar.backoff import Backoff
from sidecar.coder.client import Outcome, Result, classify
from sidecar.coder.retry import RetryPolicy
from sidecar.mirror import Mirror
from sidecar.models import Message, MessageUpdate
from sidecar.runtime.metrics import Metrics
from sidecar.spool import Spool
from sidecar.uploader import Uploader

TASK = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
T = "2026-01-01T00:00:00Z"


def result(status: int | None, retry_after: float | None = None, detail: str = "") -> Result:
    return Result(classify(status), status, detail, retry_after, 1.0)


class RecordingClient:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.script: list[Result] = []
        self.reloads = 0
        self.reload_changes = False
        self.posted = asyncio.Condition()

    async def post_log_snapshot(
        self, task_id: UUID, body: bytes, *, timeout: float | None = None
    ) -> Result:
        assert task_id == TASK
        res = self.script.pop(0) if self.script else result(204)
        async with self.posted:
            self.bodies.append(body)
            self.posted.notify_all()
        return res

    async def reload_token(self) -> bool:
        self.reloads += 1
        return self.reload_changes

    async def wait_posts(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self.posted:
            await self.posted.wait_for(lambda: len(self.bodies) >= n)

    def contents(self, i: int = -1) -> list[str]:
        return [m["content"] for m in json.loads(self.bodies[i])["messages"]]


def put(mirror: Mirror, uploader: Uploader, i: int, content: str, role: str = "agent") -> None:
    if mirror.apply(MessageUpdate(Message(i, role, content, T))):  # type: ignore[arg-type]
        uploader.notify()


@pytest.fixture
async def rig(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., tuple[RecordingClient, Mirror, Uploader]]]:
    tasks: list[asyncio.Task[None]] = []

    def make(
        interval: float = 0.2, start: bool = True, **kw: object
    ) -> tuple[RecordingClient, Mirror, Uploader]:
        client = RecordingClient()
        mirror = Mirror(10)
        kw.setdefault("spool", Spool(tmp_path, TASK))
        kw.setdefault("retry", RetryPolicy(transient=Backoff(base=0.01, cap=0.05)))
        uploader = Uploader(
            client=client,  # type: ignore[arg-type]
            task_id=TASK,
            mirror=mirror,
            metrics=Metrics(),
            interval=interval,
            **kw,  # type: ignore[arg-type]
        )
        if start:
            tasks.append(asyncio.create_task(uploader.run()))
        return client, mirror, uploader

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_first_change_is_posted_promptly(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]],
) -> None:
    client, mirror, uploader = rig(interval=30.0)
    put(mirror, uploader, 0, "hello", "user")
    await client.wait_posts(1, timeout=2.0)
    assert client.contents() == ["hello"]


async def test_streaming_is_coalesced_and_latest_wins(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]],
) -> None:
    client, mirror, uploader = rig(interval=0.3)
    put(mirror, uploader, 0, "q", "user")
    await client.wait_posts(1)
    for n in range(50):
        put(mirror, uploader, 1, "a" * (n + 1))
    await client.wait_posts(2)
    # Nothing more is coming: the second post already carries the newest content.
    assert client.contents(1) == ["q", "a" * 50]
    assert len(client.bodies) == 2


async def test_identical_body_is_never_reposted(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]],
) -> None:
    client, mirror, uploader = rig(interval=0.05)
    put(mirror, uploader, 0, "same")
    await client.wait_posts(1)
    uploader.notify(urgent=True)
    uploader.notify()
    put(mirror, uploader, 1, "next")
    await client.wait_posts(2)
    assert client.contents(1) == ["same", "next"]
    assert len(client.bodies) == 2


async def test_rejected_body_is_not_resent_until_it_changes(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]],
) -> None:
    client, mirror, uploader = rig(interval=0.05)
    client.script = [result(400, detail="Invalid request body")]
    put(mirror, uploader, 0, "bad?")
    await client.wait_posts(1)
    uploader.notify()
    uploader.notify(urgent=True)
    put(mirror, uploader, 1, "changed")
    await client.wait_posts(2)
    assert client.contents(1) == ["bad?", "changed"]
    assert len(client.bodies) == 2


async def test_5xx_is_retried_with_the_newest_body(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]], tmp_path: Path
) -> None:
    client, mirror, uploader = rig(interval=0.05)
    client.script = [result(503, retry_after=0.2), result(None)]
    put(mirror, uploader, 0, "v1")
    await client.wait_posts(1)
    put(mirror, uploader, 0, "v2")  # arrives during the Retry-After wait
    await client.wait_posts(3)
    assert client.contents(1) == ["v2"]
    assert client.contents(2) == ["v2"]
    # The undelivered body was spooled while failing, and cleared once accepted.
    assert not (tmp_path / f"{TASK}.json").exists()


async def test_failure_spools_the_body(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]], tmp_path: Path
) -> None:
    client, mirror, uploader = rig(
        interval=0.05, retry=RetryPolicy(transient=Backoff(base=60, cap=60))
    )
    client.script = [result(502)]
    put(mirror, uploader, 0, "keep me")
    await client.wait_posts(1)
    spooled = (tmp_path / f"{TASK}.json").read_bytes()
    assert spooled == client.bodies[0]


async def test_not_found_backs_off_for_minutes(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]],
) -> None:
    client, mirror, uploader = rig(interval=0.05)
    client.script = [result(404, detail="Resource not found")]
    put(mirror, uploader, 0, "x")
    await client.wait_posts(1)
    assert uploader.blocked_reason == "not_found"
    assert uploader._blocked_until - uploader._clock() >= 59
    put(mirror, uploader, 1, "y")
    await asyncio.sleep(0)  # let the loop observe the change; no post may follow
    assert len(client.bodies) == 1


async def test_unauthorized_reloads_token_and_retries_when_it_changed(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]],
) -> None:
    client, mirror, uploader = rig(interval=0.05)
    client.script = [result(401)]
    client.reload_changes = True
    put(mirror, uploader, 0, "x")
    await client.wait_posts(2, timeout=3.0)
    assert client.reloads == 1
    assert uploader.blocked_reason is None


async def test_unauthorized_without_new_token_backs_off(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]],
) -> None:
    client, mirror, uploader = rig(interval=0.05)
    client.script = [result(403)]
    put(mirror, uploader, 0, "x")
    await client.wait_posts(1)
    async with asyncio.timeout(2):
        while client.reloads == 0:
            await asyncio.sleep(0.01)
    assert uploader.blocked_reason == "unauthorized"


async def test_empty_conversation_is_never_posted(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]],
) -> None:
    client, _mirror, uploader = rig(interval=0.05, start=False)
    uploader.notify()
    assert await uploader.flush(1.0) is True
    assert client.bodies == []


async def test_flush_delivers_newest_and_is_callable_twice(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]],
) -> None:
    client, mirror, uploader = rig(interval=60.0)
    put(mirror, uploader, 0, "first")
    await client.wait_posts(1)
    put(mirror, uploader, 1, "last words")  # inside the interval: not posted yet
    assert await uploader.flush(2.0) is True
    assert client.contents() == ["first", "last words"]
    assert await uploader.flush(2.0) is True
    assert len(client.bodies) == 2


async def test_flush_retries_until_the_deadline_then_spools(
    rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]], tmp_path: Path
) -> None:
    client, mirror, uploader = rig(interval=60.0, start=False)
    client.script = [result(503)] * 1000
    put(mirror, uploader, 0, "undeliverable")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await uploader.flush(0.5) is False
    assert loop.time() - started < 1.5
    assert len(client.bodies) > 1
    assert (tmp_path / f"{TASK}.json").read_bytes() == client.bodies[-1]


async def test_spooled_body_is_delivered_on_start(
    tmp_path: Path, rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]]
) -> None:
    body = json.dumps(
        {"messages": [{"id": 3, "content": "from last run", "role": "agent", "time": T}]},
        separators=(",", ":"),
    ).encode()
    Spool(tmp_path, TASK).save(body)
    client, _mirror, uploader = rig(interval=0.05)
    await client.wait_posts(1)
    assert client.bodies[0] == body
    async with asyncio.timeout(2):
        while (tmp_path / f"{TASK}.json").exists():
            await asyncio.sleep(0.01)
    assert uploader.pending_age() == 0


async def test_newer_conversation_supersedes_the_spool(
    tmp_path: Path, rig: Callable[..., tuple[RecordingClient, Mirror, Uploader]]
) -> None:
    old = json.dumps(
        {"messages": [{"id": 0, "content": "old", "role": "agent", "time": T}]},
        separators=(",", ":"),
    ).encode()
    Spool(tmp_path, TASK).save(old)
    client, mirror, uploader = rig(interval=0.05, start=False)
    put(mirror, uploader, 0, "new")
    assert await uploader.flush(1.0)
    assert client.contents() == ["new"]
    assert not (tmp_path / f"{TASK}.json").exists()


async def test_result_outcomes() -> None:
    assert classify(None) is Outcome.RETRY
    assert [classify(s) for s in (200, 204, 400, 401, 403, 404, 408, 409, 413, 429, 500, 503)] == [
        Outcome.OK,
        Outcome.OK,
        Outcome.REJECTED,
        Outcome.UNAUTHORIZED,
        Outcome.UNAUTHORIZED,
        Outcome.NOT_FOUND,
        Outcome.RETRY,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.RETRY,
        Outcome.RETRY,
        Outcome.RETRY,
    ]

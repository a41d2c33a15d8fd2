"""agentapi fake → AgentapiSource → Hub → Mirror → Uploader → CoderClient → Coder fake.

Real loopback servers on both sides; only the daemon process around the pieces is absent
(the end-to-end tests cover it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import pytest
from structlog.testing import capture_logs

from sidecar.agentapi.client import AgentapiClient
from sidecar.backoff import Backoff
from sidecar.coder.client import CoderClient
from sidecar.coder.outcomes import RULES, Outcome
from sidecar.coder.retry import RetryPolicy
from sidecar.coder.token import TokenSource
from sidecar.history import MARKER
from sidecar.hub import Hub
from sidecar.mirror import Mirror
from sidecar.models import AgentStatus
from sidecar.pipeline import Clients, Clocks, Options, Tuning, build_pipeline
from sidecar.runtime.metrics import Metrics
from sidecar.spool import Spool
from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served
from sidecar.uploader import Uploader
from tests.conftest import AgentapiFactory, CoderFactory


@dataclass
class Pipeline:
    agentapi: Served[FakeAgentapi]
    coder: Served[FakeCoder]
    mirror: Mirror
    uploader: Uploader
    hub: Hub
    metrics: Metrics
    token: TokenSource

    def stored(self) -> list[tuple[str, str]] | None:
        snap = self.coder.fake.stored_snapshot()
        if snap is None:
            return None
        return [(m["role"], m["content"]) for m in snap["messages"]]

    def truth(self) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.agentapi.fake.messages][-10:]

    async def wait_stored(self, expected: Callable[[], object], timeout: float = 5.0) -> None:
        await self.coder.fake.wait_for(lambda: self.stored() == expected(), timeout)

    async def logs_readable(self) -> bool:
        url = f"{self.coder.url}/api/v2/tasks/me/{self.coder.fake.task_id}/logs"
        async with (
            aiohttp.ClientSession() as s,
            s.get(url, headers={"Coder-Session-Token": self.coder.fake.token}) as resp,
        ):
            return resp.status == 200


class PipelineFactory(Protocol):
    async def __call__(
        self,
        *,
        interval: float = 0.3,
        events: bool = True,
        token: str | None = None,
        token_file: Path | None = None,
        endpoint_missing: bool = False,
        task_known: bool = True,
        first_post_at: float = 0.0,
    ) -> Pipeline: ...


class Drawn(random.Random):
    """The first post's random draw, fixed: `fraction` of the spread (0: at once)."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for state that no request announces (the uploader's bookkeeping after an
    answer was read), re-checking every few milliseconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
async def make_pipeline(
    make_fake_agentapi: AgentapiFactory, make_fake_coder: CoderFactory, tmp_path: Path
) -> AsyncIterator[PipelineFactory]:
    tasks: list[asyncio.Task[None]] = []
    sessions: list[aiohttp.ClientSession] = []

    async def factory(
        *,
        interval: float = 0.3,
        events: bool = True,
        token: str | None = None,
        token_file: Path | None = None,
        endpoint_missing: bool = False,
        task_known: bool = True,
        first_post_at: float = 0.0,
    ) -> Pipeline:
        agentapi = await make_fake_agentapi()
        agentapi.fake.events_available = events
        coder = await make_fake_coder(endpoint_missing=endpoint_missing, version="v2.37.2")
        if not task_known:
            coder.fake.tasks.clear()
        session = aiohttp.ClientSession()
        sessions.append(session)
        metrics = Metrics()
        tok = (
            TokenSource(path=token_file)
            if token_file is not None
            else TokenSource(value=token or coder.fake.token)
        )
        clients = Clients(
            coder=CoderClient(session=session, base_url=coder.url, token=tok, timeout=2.0),
            agentapi=AgentapiClient(session=session, base_url=agentapi.url),
        )
        built = build_pipeline(
            clients,
            Clocks(),
            Options(task_id=coder.fake.task_id, interval=interval, probe_interval=0.3),
            metrics=metrics,
            spool=Spool(tmp_path / "spool", coder.fake.task_id),
            tuning=Tuning(
                upload_retry=RetryPolicy(
                    transient=Backoff(base=0.05, cap=0.2), auth=Backoff(base=0.1, cap=0.2)
                ),
                stream_backoff=Backoff(base=0.02, cap=0.1),
                poll_interval=0.1,
                first_post_rng=Drawn(first_post_at),
            ),
        )
        assert built.uploader is not None
        tasks.extend(asyncio.create_task(run()) for _, run in built.runs())
        return Pipeline(agentapi, coder, built.mirror, built.uploader, built.hub, metrics, tok)

    yield factory
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for session in sessions:
        await session.close()


async def test_conversation_reaches_coder_and_reads_back(
    make_pipeline: PipelineFactory,
) -> None:
    p = await make_pipeline()
    p.agentapi.fake.add_message("agent", "Hello! Ready to help.")
    p.agentapi.fake.add_message("user", "Fix the build ✓ “quotes” \\ and \x1b[1mANSI\x1b[0m")
    await p.wait_stored(p.truth)
    assert await p.logs_readable()


async def test_streaming_updates_are_coalesced(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(interval=0.5)
    fake = p.agentapi.fake
    fake.add_message("user", "go")
    await p.wait_stored(p.truth)
    fake.set_status("running")
    fake.add_message("agent", "")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(100):  # 100 updates paced over ~1 s, as a streaming agent does
        fake.update_last("token " * (n + 1))
        await asyncio.sleep(0.01)
    elapsed = loop.time() - started
    await p.wait_stored(p.truth, timeout=3)
    posts = len(p.coder.fake.snapshot_posts())
    # One post per interval while streaming (+ the first post and one trailing).
    assert posts <= 2 + int(elapsed / 0.5) + 1, posts


async def test_turn_end_is_posted_promptly(make_pipeline: PipelineFactory) -> None:
    # The first periodic post of this start is drawn at the end of its spread, a minute
    # away: only the finished turn's own path can deliver within the test.
    p = await make_pipeline(interval=30, first_post_at=1.0)
    fake = p.agentapi.fake
    fake.set_status("running")
    fake.add_message("user", "q")
    await fake.wait_for(lambda: p.mirror.status is AgentStatus.RUNNING)
    fake.add_message("agent", "answer")
    fake.set_status("stable")
    await p.wait_stored(p.truth, timeout=3)


async def test_reconnect_after_the_stream_drops(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    fake = p.agentapi.fake
    fake.add_message("user", "one")
    await p.wait_stored(p.truth)
    connects = fake.stream_connects
    fake.drop_streams()
    await fake.wait_for(lambda: fake.stream_connects > connects and fake.subscriber_count == 1)
    fake.add_message("agent", "two")
    await p.wait_stored(p.truth)


async def test_a_restart_joins_the_new_conversation_to_the_old_one(
    make_pipeline: PipelineFactory,
) -> None:
    p = await make_pipeline()
    fake = p.agentapi.fake
    for i in range(6):
        fake.add_message("user" if i % 2 == 0 else "agent", f"old {i}")
    await p.wait_stored(p.truth)
    before = p.truth()
    posts = len(p.coder.fake.accepted_snapshot_posts())
    # agentapi starts again without its state: the agent's screen alone, ids from 0.
    fake.restart([("agent", "fresh session")])
    await until(lambda: [m.content for m in p.mirror.messages()] == ["fresh session"])
    # It says nothing the stored conversation lacks: nothing is posted over it.
    with contextlib.suppress(TimeoutError):
        await p.coder.fake.wait_for(
            lambda: len(p.coder.fake.accepted_snapshot_posts()) > posts, timeout=1.0
        )
    assert len(p.coder.fake.accepted_snapshot_posts()) == posts
    # The person asks again: the old words, a marker, then the new conversation.
    fake.add_message("user", "new question")
    fake.add_message("agent", "new answer")
    expected = [*before, ("agent", MARKER), ("agent", "fresh session")]
    expected += [("user", "new question"), ("agent", "new answer")]
    await p.wait_stored(lambda: expected[-10:])
    ids = [m["id"] for m in p.coder.fake.accepted_snapshot_posts()[-1].json()["messages"]]
    assert ids == sorted(set(ids))
    assert await p.logs_readable()


async def test_polling_fallback_without_events(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(events=False)
    fake = p.agentapi.fake
    fake.add_message("user", "polled")
    await p.wait_stored(p.truth)
    fake.set_status("running")
    fake.add_message("agent", "still polled")
    await p.wait_stored(p.truth)
    assert fake.requests["/events"] >= 1
    # While stable and unchanged, /messages is fetched only now and then (a whole turn
    # can fit between two polls), not on every poll.
    fake.set_status("stable")
    settled = fake.requests["/status"] + 2  # the poll that sees the change, then one more
    await fake.wait_for(lambda: fake.requests["/status"] >= settled)
    fetched = fake.requests["/messages"]
    before = fake.requests["/status"]
    await fake.wait_for(lambda: fake.requests["/status"] >= before + 10, timeout=10)
    assert fake.requests["/messages"] - fetched <= 2


async def test_malformed_frames_and_invalid_messages_are_dropped(
    make_pipeline: PipelineFactory,
) -> None:
    p = await make_pipeline()
    fake = p.agentapi.fake
    fake.add_message("user", "valid")
    await fake.wait_for_subscribers(1)
    await p.wait_stored(p.truth)
    fake.inject_raw(b"event: message_update\ndata: {not json\n\n")
    fake.inject_raw(b'event: message_update\ndata: {"id": 5}\n\n')
    fake.inject_raw(b"\xff\xfe garbage without structure\n\n")
    fake.add_message("system", "a role Coder cannot read back")
    fake.add_message("agent", "after the noise")
    await p.wait_stored(lambda: [("user", "valid"), ("agent", "after the noise")])
    assert await p.logs_readable()
    invalid = {
        s.labels["reason"]: s.value
        for f in p.metrics.registry.collect()
        if f.name == "sidecar_invalid_input"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert invalid["json"] == 1
    # {"id": 5} has no role; "system" is not one Coder can read back.
    assert invalid["role"] == 2


async def test_5xx_then_recovery(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    p.coder.fake.fail_next(503, times=2)
    p.coder.fake.fail_next(500, times=1, retry_after=0)
    p.agentapi.fake.add_message("user", "hello")
    await p.wait_stored(p.truth)
    statuses = [r.status for r in p.coder.fake.snapshot_posts()]
    assert statuses == [503, 503, 500, 204]


async def test_unknown_task_backs_off_for_minutes_and_says_so(
    make_pipeline: PipelineFactory,
) -> None:
    p = await make_pipeline(task_known=False)
    with capture_logs() as logs:
        p.agentapi.fake.add_message("user", "hello")
        await p.coder.fake.wait_for(lambda: len(p.coder.fake.snapshot_posts()) == 1)
        await until(lambda: p.uploader.blocked_reason == RULES[Outcome.NOT_FOUND].readiness)
        p.agentapi.fake.add_message("agent", "more")
        await p.agentapi.fake.wait_for(lambda: p.mirror.version >= 2)
    assert len(p.coder.fake.snapshot_posts()) == 1
    (said,) = [e for e in logs if e["event"] == "snapshot.task_not_found"]
    assert said["retry_in_s"] >= 60
    assert not p.uploader.tasks_api_missing


async def test_a_coder_without_tasks_is_told_apart_and_named_by_its_version(
    make_pipeline: PipelineFactory,
) -> None:
    p = await make_pipeline(endpoint_missing=True)
    with capture_logs() as logs:
        p.agentapi.fake.add_message("user", "hello")
        await until(lambda: p.uploader.tasks_api_missing)
        p.agentapi.fake.add_message("agent", "more")
        await p.agentapi.fake.wait_for(lambda: p.mirror.version >= 2)
    assert len(p.coder.fake.snapshot_posts()) == 1
    (said,) = [e for e in logs if e["event"] == "snapshot.no_tasks_api"]
    assert said["coder_version"] == "v2.37.2"
    assert "statuses are still relayed" in said["message"]
    assert not [e for e in logs if e["event"] == "snapshot.task_not_found"]
    # The version came from buildinfo, asked without the token.
    (info,) = [r for r in p.coder.fake.requests if r.path == "/api/v2/buildinfo"]
    assert "Coder-Session-Token" not in info.headers


async def test_400_is_not_resent(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline(interval=0.1)
    p.coder.fake.fail_next(400)
    p.agentapi.fake.add_message("user", "hello")
    await p.coder.fake.wait_for(lambda: len(p.coder.fake.snapshot_posts()) == 1)
    p.uploader.notify(urgent=True)
    p.agentapi.fake.add_message("agent", "changed")
    await p.wait_stored(p.truth)
    assert [r.status for r in p.coder.fake.snapshot_posts()] == [400, 204]


async def test_401_recovers_after_the_token_file_rotates(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("7d6f5e4c-3b2a-4190-8877-665544332211\n")
    token_file.chmod(0o600)
    p = await make_pipeline(token_file=token_file)
    p.agentapi.fake.add_message("user", "hello")
    await p.coder.fake.wait_for(lambda: any(r.status == 401 for r in p.coder.fake.snapshot_posts()))
    await until(lambda: p.uploader.blocked_reason == RULES[Outcome.UNAUTHORIZED].readiness)
    # A new build's token lands in the file; the next 401 (or the file watcher, in the
    # daemon) re-reads it.
    token_file.write_text(p.coder.fake.token + "\n")
    await p.wait_stored(p.truth, timeout=5)


async def test_hung_and_reset_requests_are_retried(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    p.coder.fake.hang_next()
    p.coder.fake.close_next()
    p.agentapi.fake.add_message("user", "persistent")
    await p.wait_stored(p.truth, timeout=10)
    assert len(p.coder.fake.snapshot_posts()) >= 3


async def test_oversized_conversation_is_fitted(make_pipeline: PipelineFactory) -> None:
    p = await make_pipeline()
    fake = p.agentapi.fake
    fake.add_message("user", "dump the log")
    fake.add_message("agent", "€" * 40_000 + "THE END")
    await p.coder.fake.wait_for(lambda: p.stored() is not None)
    stored = p.stored()
    assert stored is not None
    assert stored[-1][1].endswith("€THE END")
    assert len(p.coder.fake.accepted_snapshot_posts()[-1].body) <= 65_536
    assert await p.logs_readable()

"""Relay + the real CoderClient against FakeCoder's app-status endpoint (loopback HTTP).

FakeCoder validates what coderd validates — state enum, message ≤ 160 bytes, known slug,
agent token — so a report that gets through here is one coderd accepts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from sidecar.backoff import Backoff
from sidecar.coder.client import CoderClient
from sidecar.coder.retry import RetryPolicy
from sidecar.coder.token import TokenSource
from sidecar.models import (
    AgentError,
    AppState,
    ErrorLevel,
    ReplayStarted,
)
from sidecar.relay.delivery import Relay
from sidecar.relay.policy import RelayPolicy
from sidecar.runtime.metrics import Metrics
from sidecar.standins.coder import FakeCoder, RecordedRequest
from sidecar.standins.server import Served
from tests.conftest import CoderFactory
from tests.events import STABLE, agent, at, user

SLUG = "claude-code"
APP_STATUS_PATH = "/api/v2/workspaceagents/me/app-status"
DEADLINE = 5.0


async def until(predicate: Callable[[], bool]) -> None:
    """For the relay's own bookkeeping, which no request to the fake announces."""
    async with asyncio.timeout(DEADLINE):
        while not predicate():
            await asyncio.sleep(0.001)


@dataclass
class Setup:
    coder: Served[FakeCoder]
    relay: Relay
    metrics: Metrics
    token: TokenSource
    task: asyncio.Task[None]

    @property
    def fake(self) -> FakeCoder:
        return self.coder.fake

    def patches(self) -> list[RecordedRequest]:
        return [r for r in self.fake.requests if r.path == APP_STATUS_PATH]

    def answered(self) -> list[int]:
        return [r.status for r in self.patches() if r.status is not None]

    def shown(self) -> list[tuple[str, str, str]]:
        return [(s.state, s.message, s.uri) for s in self.fake.app_statuses]

    async def wait_answered(self, count: int) -> list[int]:
        await self.fake.wait_for(lambda: len(self.answered()) >= count, DEADLINE)
        return self.answered()


@pytest.fixture
async def make_setup(
    make_fake_coder: CoderFactory, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    sessions: list[aiohttp.ClientSession] = []
    setups: list[Setup] = []

    async def factory(slug: str = SLUG, uri: str = "", **relay_kw: Any) -> Setup:
        coder = await make_fake_coder(app_slug=SLUG)
        token_file = tmp_path / f"token-{len(setups)}"
        token_file.write_text(coder.fake.token + "\n")
        token_file.chmod(0o600)
        token = TokenSource(path=token_file)
        session = aiohttp.ClientSession()
        sessions.append(session)
        options: dict[str, Any] = {
            "min_interval": 0.0,
            "retry": RetryPolicy(transient=Backoff(base=0.01, cap=0.05)),
        }
        options.update(relay_kw)
        metrics = Metrics()
        relay = Relay(
            client=CoderClient(session=session, base_url=coder.url, token=token, timeout=2.0),
            slug=slug,
            policy=RelayPolicy(uri=uri),
            metrics=metrics,
            **options,
        )
        setup = Setup(coder, relay, metrics, token, asyncio.create_task(relay.run()))
        setups.append(setup)
        return setup

    yield factory
    for setup in setups:
        await setup.relay.stop(None, timeout=1.0)
        async with asyncio.timeout(DEADLINE):
            await setup.task
    for session in sessions:
        await session.close()


def feed_history(relay: Relay, reply: str = "Fixed: the token check was inverted.") -> None:
    for event in (ReplayStarted(), user(0, "fix the login bug"), agent(1, reply), STABLE):
        relay.observe(event)


async def test_a_report_is_accepted_with_200(make_setup: Callable[..., Any]) -> None:
    s: Setup = await make_setup(uri="https://ide.example/w/1")
    with capture_logs() as logs:
        feed_history(s.relay)
        assert await s.wait_answered(1) == [200]
        await until(lambda: s.relay.accepted is not None)
    assert s.patches()[0].json() == {
        "app_slug": SLUG,
        "state": "idle",
        "message": "Fixed: the token check was inverted.",
        "uri": "https://ide.example/w/1",
    }
    assert s.patches()[0].headers["Coder-Session-Token"] == s.fake.token
    patched = [e for e in logs if e["event"] == "relay.patched"]
    assert [(e["state"], e["status"], e["attempt"]) for e in patched] == [("idle", 200, 1)]
    assert patched[0]["latency_ms"] >= 0


async def test_long_multibyte_messages_fit_the_160_byte_limit(
    make_setup: Callable[..., Any],
) -> None:
    s: Setup = await make_setup()
    reply = "完了しました。" + "ログイン処理を修正し、テストを追加しました€😀" * 10
    request = "€" * 53 + "x" + "😀" * 5  # the cut falls inside multi-byte characters
    feed_history(s.relay, reply=reply)
    assert await s.wait_answered(1) == [200]
    s.relay.observe(user(2, request))
    assert await s.wait_answered(2) == [200, 200]
    for _, message, _ in s.shown():
        assert len(message.encode()) <= 160
        assert message.endswith("…")
    assert s.shown()[0][0] == "idle"
    assert reply.startswith(s.shown()[0][1].removesuffix("…"))
    assert s.shown()[1] == ("working", "€" * 52 + "…", "")


async def test_the_fake_refuses_161_bytes(make_setup: Callable[..., Any]) -> None:
    # The limit above is real: one byte more and coderd (and the fake) say 400.
    s: Setup = await make_setup()
    async with aiohttp.ClientSession() as session:
        client = CoderClient(session=session, base_url=s.coder.url, token=s.token, timeout=2.0)
        fits = await client.patch_app_status(
            slug=SLUG, state=AppState.IDLE, message="€" * 53 + "x", uri=""
        )
        result = await client.patch_app_status(
            slug=SLUG, state=AppState.IDLE, message="€" * 53 + "xx", uri=""
        )
    assert fits.status == 200
    assert result.status == 400
    assert "Message is too long" in result.detail


async def test_every_state_of_the_enum_is_accepted(make_setup: Callable[..., Any]) -> None:
    s: Setup = await make_setup()
    feed_history(s.relay)
    await s.wait_answered(1)
    s.relay.observe(user(2, "deploy it"))
    await s.wait_answered(2)
    s.relay.observe(AgentError(ErrorLevel.ERROR, "deploy failed: quota exceeded", at(3)))
    await s.wait_answered(3)
    assert await s.relay.stop(AppState.COMPLETE, timeout=2.0) is True
    assert s.answered() == [200] * 4
    states = [state for state, _, _ in s.shown()]
    assert states == ["idle", "working", "failure", "complete"]
    assert set(states) == {str(state) for state in AppState}
    assert s.shown()[2][1] == "deploy failed: quota exceeded"


async def test_unknown_slug_is_refused_once_and_not_retried(
    make_setup: Callable[..., Any],
) -> None:
    s: Setup = await make_setup(slug="no-such-app")
    with capture_logs() as logs:
        feed_history(s.relay)
        assert await s.wait_answered(1) == [400]
        await until(lambda: not s.relay.pending)
        s.relay.observe(user(2, "something new"))  # a different report is still tried
        assert await s.wait_answered(2) == [400, 400]
        await until(lambda: not s.relay.pending)
    assert s.shown() == []
    assert [r.json()["state"] for r in s.patches()] == ["idle", "working"]
    rejected = [e for e in logs if e["event"] == "relay.rejected"]
    assert len(rejected) == 2
    assert "Failed to find workspace app" in rejected[0]["detail"]
    assert "no-such-app" in rejected[0]["detail"]
    value = s.metrics.registry.get_sample_value(
        "sidecar_relay_patches_total", {"result": "rejected"}
    )
    assert value == 2


async def test_server_errors_are_retried_until_accepted(make_setup: Callable[..., Any]) -> None:
    s: Setup = await make_setup()
    s.fake.fail_next(503, times=2, path_contains="app-status")
    feed_history(s.relay)
    assert await s.wait_answered(3) == [503, 503, 200]
    assert s.shown() == [("idle", "Fixed: the token check was inverted.", "")]


async def test_a_rotated_token_is_reloaded_and_the_report_delivered(
    make_setup: Callable[..., Any],
) -> None:
    s: Setup = await make_setup()
    new_token = s.fake.rotate_token()
    assert s.token.path is not None
    s.token.path.write_text(new_token + "\n")
    feed_history(s.relay)
    assert await s.wait_answered(2) == [401, 200]
    assert s.patches()[1].headers["Coder-Session-Token"] == new_token


async def test_a_reconnect_replay_sends_nothing(make_setup: Callable[..., Any]) -> None:
    s: Setup = await make_setup()
    feed_history(s.relay)
    await s.wait_answered(1)
    await until(lambda: not s.relay.pending)
    for _ in range(5):
        feed_history(s.relay)
    s.relay.observe(user(2, "next"))
    await s.wait_answered(2)
    assert [state for state, _, _ in s.shown()] == ["idle", "working"]

"""`stop` against the cases coder/registry's own shutdown tests drive its agentapi module's
`agentapi-shutdown.sh` with (registry/coder/modules/agentapi/main.test.ts): normal, many
messages, one huge message, no task, a 404 and a 500 from Coder.

The stand-in Coder here is what those tests use: it answers every log-snapshot POST with
one fixed status and no body, and keeps what was posted. Where the product's contract
differs from the script's on purpose it says so: a 500 leaves the snapshot undelivered,
and `stop` exits 1 with the body spooled (the script exits 0 and loses it).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web

from sidecar.snapshot import MARKER_FORMAT
from sidecar.standins.server import serve
from tests.e2e.harness import SidecarProcess
from tests.fakes.agentapi_runner import AgentapiProcess, agentapi_process
from tests.tracebacks import assert_no_traceback

DEADLINE: Final = 20.0
TASK: Final = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
TOKEN: Final = "5f3b2a1c-0d4e-4f6a-8b7c-9d0e1f2a3b4c"


@dataclass
class RegistryCoder:
    """Every POST under /tasks/{id}/log-snapshot gets `status` and no body."""

    status: int
    posts: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v2/workspaceagents/me/tasks/{task}/log-snapshot", self._snapshot)
        return app

    async def _snapshot(self, request: web.Request) -> web.Response:
        self.posts.append(json.loads(await request.read()))
        return web.Response(status=self.status)


@contextlib.asynccontextmanager
async def registry_coder(status: int) -> AsyncIterator[tuple[RegistryCoder, str]]:
    coder = RegistryCoder(status)
    async with serve(coder.app()) as server:
        yield coder, server.url


async def run_stop(
    home: Path, coder_url: str, agentapi: AgentapiProcess, task: str = TASK
) -> tuple[int, list[dict[str, Any]]]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "CODER_AGENT_URL": coder_url,
        "CODER_AGENT_TOKEN": TOKEN,
        "CODER_TASK_ID": task,
        "SIDECAR_STATE_DIR": str(home / "state"),
        "SIDECAR_SHUTDOWN_TIMEOUT": "2",
        "SIDECAR_LOG_FORMAT": "json",
        **agentapi.env(),
    }
    proc = SidecarProcess(env, ["stop"])
    await proc.start()
    try:
        code = await proc.wait(DEADLINE)
    finally:
        await proc.kill()
    assert_no_traceback(proc.output())
    return code, proc.logs


def contents(post: dict[str, Any]) -> list[str]:
    return [m["content"] for m in post["messages"]]


def turns(n: int) -> list[str]:
    return [f"{'user' if i % 2 == 0 else 'agent'}:Message {i + 1}" for i in range(n)]


async def stopped(agentapi: AgentapiProcess) -> bool:
    """agentapi got one SIGTERM and had exited when `stop` returned (its exit is only
    reaped here: the short bound is no wait for it)."""
    signals = [name for what, name in agentapi.whats() if what == "signal"]
    return signals.count("SIGTERM") == 1 and await agentapi.wait_exit(timeout=2.0) == 0


@pytest.mark.parametrize(
    ("case", "messages", "stored"),
    [
        ("normal", ["user:Hello", "agent:Hi", "user:Fix it", "agent:Done", "user:Great"], 5),
        ("many", turns(15), 10),
    ],
)
async def test_the_conversation_is_posted_and_agentapi_stopped(
    tmp_path: Path, case: str, messages: list[str], stored: int
) -> None:
    async with (
        registry_coder(204) as (coder, url),
        agentapi_process(tmp_path, *messages) as agentapi,
    ):
        code, _logs = await run_stop(tmp_path, url, agentapi)
        assert await stopped(agentapi)
    assert code == 0
    (post,) = coder.posts
    assert contents(post) == [m.split(":", 1)[1] for m in messages][-stored:]


async def test_one_huge_message_is_cut_to_fit(tmp_path: Path) -> None:
    huge = "x" * 69_000 + "THE END"
    async with (
        registry_coder(204) as (coder, url),
        agentapi_process(tmp_path, f"agent:{huge}") as agentapi,
    ):
        code, _logs = await run_stop(tmp_path, url, agentapi)
        assert await stopped(agentapi)
    assert code == 0
    (post,) = coder.posts
    (content,) = contents(post)
    prefix = MARKER_FORMAT.split("{cut}", 1)[0]
    assert content.startswith(prefix)
    assert content.endswith("THE END")
    assert len(json.dumps(post, ensure_ascii=False, separators=(",", ":")).encode()) <= 65_536


async def test_no_task_skips_the_snapshot_and_still_stops_agentapi(tmp_path: Path) -> None:
    async with (
        registry_coder(204) as (coder, url),
        agentapi_process(tmp_path, "user:Hello") as agentapi,
    ):
        code, logs = await run_stop(tmp_path, url, agentapi, task="")
        assert await stopped(agentapi)
    assert code == 0
    assert coder.posts == []
    assert "oneshot.skipped" in [e["event"] for e in logs]


async def test_a_bare_404_means_not_supported_exit_0_and_nothing_kept(tmp_path: Path) -> None:
    async with (
        registry_coder(404) as (coder, url),
        agentapi_process(tmp_path, "user:Hello", "agent:Hi") as agentapi,
    ):
        code, logs = await run_stop(tmp_path, url, agentapi)
        assert await stopped(agentapi)
    assert code == 0
    assert len(coder.posts) == 1  # asked once, at once: no retries for a missing route
    assert not (tmp_path / "state" / f"{TASK}.json").exists()
    (done,) = [e for e in logs if e["event"] == "oneshot.done"]
    assert done["snapshot"] == "no_tasks_api"


async def test_a_500_is_retried_then_spooled_and_agentapi_still_stopped(tmp_path: Path) -> None:
    async with (
        registry_coder(500) as (coder, url),
        agentapi_process(tmp_path, "user:Hello", "agent:Hi") as agentapi,
    ):
        code, _logs = await run_stop(tmp_path, url, agentapi)
        assert await stopped(agentapi)
    # The script exits 0 here and the conversation is gone; `stop` keeps it for the
    # daemon's next start and says it was not delivered.
    assert code == 1
    assert len(coder.posts) > 1
    spooled = json.loads((tmp_path / "state" / f"{TASK}.json").read_bytes())
    assert contents(spooled) == ["Hello", "Hi"]

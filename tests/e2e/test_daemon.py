"""The real `coder-task-sidecar run` process against the loopback fakes, with real signals."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.e2e.conftest import SidecarFactory
from tests.e2e.harness import (
    SidecarProcess,
    base_env,
    end_the_turn,
    metric,
    run_to_exit,
    stored_contents,
)
from tests.e2e.workspace import Workspace
from tests.tracebacks import assert_no_traceback


async def wait_events_seen(proc: SidecarProcess, http: str, count: int) -> None:
    """Wait (with a deadline) until the sidecar has read `count` message_update events."""
    async with asyncio.timeout(10):
        while await metric(http, "sidecar_agentapi_events_total", type="message_update") < count:
            await asyncio.sleep(0.02)


async def test_snapshot_follows_the_conversation(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    agentapi.add_message("agent", "Hello! Ready to help.")
    agentapi.add_message("user", "Fix the tests")
    proc = await start_sidecar(workspace.env())
    await coder.wait_for(
        lambda: stored_contents(coder) == ["Hello! Ready to help.", "Fix the tests"], timeout=10
    )
    agentapi.set_status("running")
    agentapi.add_message("agent", "Looking")
    agentapi.update_last("Looking at the failing tests now")
    await coder.wait_for(lambda: (stored_contents(coder) or [""])[-1].endswith("now"), timeout=10)
    ev = await proc.wait_log("snapshot.posted")
    assert ev["status"] == 204
    assert ev["bytes"] > 0
    assert await proc.stop() == 0
    assert proc.events("shutdown.complete")[0]["snapshot_delivered"] is True


async def start_with_an_unposted_reply(
    workspace: Workspace, start_sidecar: SidecarFactory, prompt: str, reply: str
) -> SidecarProcess:
    """A sidecar on a 600 s interval that has posted the turn's end (`prompt`), then read
    the agent's `reply`: inside the interval nothing else is posted, so only a stop can
    deliver the reply."""
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    agentapi.add_message("user", prompt)
    agentapi.set_status("running")
    proc = await start_sidecar(
        workspace.env(SIDECAR_SNAPSHOT_INTERVAL="600", SIDECAR_HTTP_ADDR="127.0.0.1:0")
    )
    await end_the_turn(agentapi)
    await coder.wait_for(lambda: stored_contents(coder) == [prompt], timeout=10)
    listening = await proc.wait_log("health.listening")
    agentapi.add_message("agent", reply)
    await wait_events_seen(proc, f"http://127.0.0.1:{listening['port']}", 2)
    return proc


async def test_sigterm_posts_the_newest_content_and_exits_zero(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    coder = workspace.coder.fake
    reply = "The repo holds a daemon and its tests."
    proc = await start_with_an_unposted_reply(workspace, start_sidecar, "Summarize the repo", reply)
    assert stored_contents(coder) == ["Summarize the repo"]
    assert await proc.stop() == 0
    assert stored_contents(coder) == ["Summarize the repo", reply]
    assert coder.stored_snapshot() is not None


async def test_sigterm_after_agentapi_died_still_posts_last_known_conversation(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    reply = "Old pond / a frog jumps in / sound of water"
    proc = await start_with_an_unposted_reply(workspace, start_sidecar, "Write a haiku", reply)
    await workspace.agentapi.server.stop()
    await proc.wait_log("agentapi.unreachable")
    assert await proc.stop() == 0
    assert stored_contents(workspace.coder.fake) == ["Write a haiku", reply]


async def test_second_signal_during_flush_forces_exit_and_spools(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    agentapi.add_message("user", "hello")
    proc = await start_sidecar(workspace.env(SIDECAR_SHUTDOWN_TIMEOUT="60"))
    await coder.wait_for(lambda: stored_contents(coder) == ["hello"], timeout=10)
    coder.fail_next(503, times=10_000)
    agentapi.add_message("agent", "unsent reply")
    await proc.wait_log("snapshot.retry")
    proc.signal(signal.SIGTERM)
    await proc.wait_log("shutdown.requested")
    proc.signal(signal.SIGINT)
    code = await proc.wait(timeout=10)
    assert code == 1
    assert proc.events("shutdown.forced")
    spooled = workspace.spool_path.read_text()
    assert "unsent reply" in spooled


async def test_token_never_appears_in_output(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    agentapi.add_message("user", "hi")
    workspace.token_file.chmod(0o644)  # also makes it warn about the file mode
    old = coder.token
    new = coder.rotate_token()  # the old token is now refused with 401
    proc = await start_sidecar(workspace.token_file_env(SIDECAR_LOG_LEVEL="debug"))
    await proc.wait_log("snapshot.unauthorized")
    workspace.token_file.write_text(new)
    await coder.wait_for(lambda: stored_contents(coder) == ["hi"], timeout=15)
    assert await proc.stop() == 0
    out = proc.output()
    assert proc.events("token.file_exposed")
    assert old not in out
    assert new not in out
    assert old[:8] not in out
    assert new[:8] not in out


def _only_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


async def test_bad_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    secret = "0d7f6a52-5b0e-4b3e-9a55-5d3c1c3f9e21"
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "CODER_AGENT_URL"),
        ({"CODER_AGENT_URL": "http://c"}, "CODER_AGENT_TOKEN"),
        ({"CODER_AGENT_URL": "nope", "CODER_AGENT_TOKEN": secret}, "CODER_AGENT_URL"),
        (
            {"CODER_AGENT_URL": "http://c", "CODER_AGENT_TOKEN": secret, "CODER_TASK_ID": "x"},
            "CODER_TASK_ID",
        ),
        (
            {"CODER_AGENT_URL": "http://c", "CODER_AGENT_TOKEN_FILE": str(tmp_path / "missing")},
            "CODER_AGENT_TOKEN_FILE",
        ),
        (
            {
                "CODER_AGENT_URL": "http://c",
                "CODER_AGENT_TOKEN": secret,
                "SIDECAR_SNAPSHOT_INTERVAL": "-3",
            },
            "SIDECAR_SNAPSHOT_INTERVAL",
        ),
    ]
    for args in (["run"], ["snapshot"], ["check"]):
        for settings, variable in cases:
            code, out, err = await run_to_exit(base_env(tmp_path, **settings), args)
            assert code == 2, (args, settings, err)
            line = _only_line(err)
            assert variable in line
            assert_no_traceback(err)
            assert out == ""
            assert secret not in err

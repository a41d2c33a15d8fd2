"""`snapshot` and `check`, run as the real executable against the loopback fakes."""

from __future__ import annotations

import uuid

from tests.e2e.conftest import SidecarFactory
from tests.e2e.harness import run_to_exit, stored_contents
from tests.e2e.workspace import Workspace


async def test_snapshot_posts_and_exits_zero(workspace: Workspace) -> None:
    coder = workspace.coder.fake
    for i in range(12):
        workspace.agentapi.fake.add_message("user" if i % 2 == 0 else "agent", f"message {i}")
    code, _out, err = await run_to_exit(workspace.env(), ["snapshot"])
    assert code == 0, err
    assert stored_contents(coder) == [f"message {i}" for i in range(2, 12)]
    assert len(coder.snapshot_posts()) == 1


async def test_snapshot_falls_back_to_the_state_file(workspace: Workspace) -> None:
    workspace.agentapi.fake.add_message("user", "saved on exit")
    workspace.agentapi.fake.write_state_file(workspace.state_file)
    await workspace.agentapi.server.stop()
    code, _out, err = await run_to_exit(
        workspace.env(AGENTAPI_STATE_FILE=str(workspace.state_file)), ["snapshot"]
    )
    assert code == 0, err
    assert stored_contents(workspace.coder.fake) == ["saved on exit"]


async def test_snapshot_with_nothing_to_post_exits_zero(workspace: Workspace) -> None:
    await workspace.agentapi.server.stop()
    code, _out, err = await run_to_exit(workspace.env(), ["snapshot"])
    assert code == 0, err
    assert workspace.coder.fake.snapshot_posts() == []
    assert "oneshot.nothing_to_post" in err


async def test_snapshot_with_coder_down_spools_then_the_daemon_delivers_it(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    coder = workspace.coder.fake
    workspace.agentapi.fake.add_message("user", "do not lose me")
    coder_url = workspace.coder.url
    await workspace.coder.server.stop()
    code, _out, err = await run_to_exit(workspace.env(), ["snapshot"])
    assert code == 1
    assert "spool.written" in err
    spooled = workspace.spool_path
    assert b"do not lose me" in spooled.read_bytes()

    # Next start: Coder is back, agentapi is gone — the spool alone carries the conversation.
    await workspace.agentapi.server.stop()
    await workspace.coder.server.start()
    assert workspace.coder.url == coder_url
    proc = await start_sidecar(workspace.env())
    await coder.wait_for(lambda: stored_contents(coder) == ["do not lose me"], 10)
    await proc.wait_log("spool.cleared")
    assert not spooled.exists()
    assert await proc.stop() == 0


async def test_check_reports_ok(workspace: Workspace) -> None:
    coder = workspace.coder.fake
    workspace.agentapi.fake.add_message("user", "hi")
    workspace.agentapi.fake.add_message("agent", "hello")
    code, out, err = await run_to_exit(
        workspace.env(CODER_MCP_APP_STATUS_SLUG="claude-code"), ["check"]
    )
    assert code == 0, out + err
    assert "[ok  ] agentapi: status stable, 2 messages" in out
    assert "[ok  ] coder token: accepted" in out
    assert "[--  ] coder version: v2.35.4" in out
    assert "[--  ] proxy for coder: none" in out
    assert f"[ok  ] log snapshots: the Tasks API is there and knows task {coder.task_id}" in out
    assert "[ok  ] status relay: statuses are accepted for slug 'claude-code'" in out
    assert f"[ok  ] state dir: {workspace.state_dir} is writable" in out
    assert "result: ok" in out
    assert coder.token not in out + err
    assert coder.stored_snapshot() is None  # the probe stored nothing
    assert [s.state for s in coder.app_statuses] == ["idle"]


async def test_check_fails_clearly(workspace: Workspace) -> None:
    await workspace.agentapi.server.stop()
    env = workspace.env(CODER_TASK_ID=str(uuid.uuid4()), CODER_MCP_APP_STATUS_SLUG="unknown-slug")
    code, out, _err = await run_to_exit(env, ["check"])
    assert code == 1
    assert "[FAIL] agentapi:" in out
    assert f"[FAIL] log snapshots: Coder does not know task {env['CODER_TASK_ID']}" in out
    assert "→ CODER_TASK_ID must be this workspace's task" in out
    assert "[--  ] status relay: not probed" in out

    env["CODER_AGENT_TOKEN"] = str(uuid.uuid4())
    code, out, _err = await run_to_exit(env, ["check"])
    assert code == 1
    assert "[FAIL] coder token: the token was rejected" in out
    assert env["CODER_AGENT_TOKEN"] not in out

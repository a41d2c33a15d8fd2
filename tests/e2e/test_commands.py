"""`snapshot` and `check`, run as the real executable against the loopback fakes."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.e2e.conftest import SidecarFactory
from tests.e2e.harness import run_to_exit, sidecar_env, stored_contents
from tests.fakes.agentapi import FakeAgentapi
from tests.fakes.coder import FakeCoder
from tests.fakes.server import Served


async def dead_url(fake_agentapi: Served[FakeAgentapi]) -> str:
    url = fake_agentapi.url
    await fake_agentapi.server.stop()
    return url


async def test_snapshot_posts_and_exits_zero(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], fake_coder: Served[FakeCoder]
) -> None:
    for i in range(12):
        fake_agentapi.fake.add_message("user" if i % 2 == 0 else "agent", f"message {i}")
    code, _out, err = await run_to_exit(
        sidecar_env(tmp_path, fake_agentapi.url, fake_coder), ["snapshot"]
    )
    assert code == 0, err
    assert stored_contents(fake_coder.fake) == [f"message {i}" for i in range(2, 12)]
    assert len(fake_coder.fake.snapshot_posts()) == 1


async def test_snapshot_falls_back_to_the_state_file(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], fake_coder: Served[FakeCoder]
) -> None:
    fake_agentapi.fake.add_message("user", "saved on exit")
    state = tmp_path / "agentapi" / "state.json"
    fake_agentapi.fake.write_state_file(state)
    url = await dead_url(fake_agentapi)
    code, _out, err = await run_to_exit(
        sidecar_env(tmp_path, url, fake_coder, AGENTAPI_STATE_FILE=str(state)), ["snapshot"]
    )
    assert code == 0, err
    assert stored_contents(fake_coder.fake) == ["saved on exit"]


async def test_snapshot_with_nothing_to_post_exits_zero(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], fake_coder: Served[FakeCoder]
) -> None:
    url = await dead_url(fake_agentapi)
    code, _out, err = await run_to_exit(sidecar_env(tmp_path, url, fake_coder), ["snapshot"])
    assert code == 0, err
    assert fake_coder.fake.snapshot_posts() == []
    assert "oneshot.nothing_to_post" in err


async def test_snapshot_with_coder_down_spools_then_the_daemon_delivers_it(
    tmp_path: Path,
    fake_agentapi: Served[FakeAgentapi],
    fake_coder: Served[FakeCoder],
    start_sidecar: SidecarFactory,
) -> None:
    fake_agentapi.fake.add_message("user", "do not lose me")
    coder_url = fake_coder.url
    await fake_coder.server.stop()
    code, _out, err = await run_to_exit(
        sidecar_env(tmp_path, fake_agentapi.url, fake_coder), ["snapshot"]
    )
    assert code == 1
    assert "spool.written" in err
    spooled = tmp_path / "state" / f"{fake_coder.fake.task_id}.json"
    assert b"do not lose me" in spooled.read_bytes()

    # Next start: Coder is back, agentapi is gone — the spool alone carries the conversation.
    agentapi_url = await dead_url(fake_agentapi)
    await fake_coder.server.start()
    assert fake_coder.url == coder_url
    proc = await start_sidecar(sidecar_env(tmp_path, agentapi_url, fake_coder))
    await fake_coder.fake.wait_for(
        lambda: stored_contents(fake_coder.fake) == ["do not lose me"], 10
    )
    await proc.wait_log("spool.cleared")
    assert not spooled.exists()
    assert await proc.stop() == 0


async def test_check_reports_ok(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], fake_coder: Served[FakeCoder]
) -> None:
    fake_agentapi.fake.add_message("user", "hi")
    fake_agentapi.fake.add_message("agent", "hello")
    code, out, err = await run_to_exit(
        sidecar_env(
            tmp_path, fake_agentapi.url, fake_coder, CODER_MCP_APP_STATUS_SLUG="claude-code"
        ),
        ["check"],
    )
    assert code == 0, out + err
    assert "[ok  ] agentapi: status stable, 2 messages" in out
    assert "[ok  ] coder token: accepted" in out
    assert "[--  ] coder version: v2.35.4" in out
    assert "[--  ] proxy for coder: none" in out
    assert (
        f"[ok  ] log snapshots: the Tasks API is there and knows task {fake_coder.fake.task_id}"
        in out
    )
    assert "[ok  ] status relay: statuses are accepted for slug 'claude-code'" in out
    assert f"[ok  ] state dir: {tmp_path / 'state'} is writable" in out
    assert "result: ok" in out
    assert fake_coder.fake.token not in out + err
    assert fake_coder.fake.stored_snapshot() is None  # the probe stored nothing
    assert [s.state for s in fake_coder.fake.app_statuses] == ["idle"]


async def test_check_fails_clearly(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], fake_coder: Served[FakeCoder]
) -> None:
    url = await dead_url(fake_agentapi)
    env = sidecar_env(
        tmp_path,
        url,
        fake_coder,
        CODER_TASK_ID=str(uuid.uuid4()),
        CODER_MCP_APP_STATUS_SLUG="unknown-slug",
    )
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

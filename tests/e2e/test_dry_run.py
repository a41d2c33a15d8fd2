"""`run --dry-run` and SIDECAR_DRY_RUN=1: the real process mirrors a real agentapi (the
loopback stand-in) and prints each snapshot and status it would send; Coder hears
nothing, no token is needed, and nothing is kept in the state directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served
from tests.e2e.conftest import SidecarFactory
from tests.e2e.harness import SidecarProcess, base_env

pytestmark = pytest.mark.timeout(60)

ZERO_TASK = "00000000-0000-0000-0000-000000000000"


def _dry_env(home: Path, agentapi: Served[FakeAgentapi], **extra: str) -> dict[str, str]:
    """What a template author has without a Coder: agentapi's URL and the app's slug."""
    return base_env(
        home,
        CODER_MCP_AI_AGENTAPI_URL=agentapi.url,
        CODER_MCP_APP_STATUS_SLUG="claude-code",
        SIDECAR_STATE_DIR=str(home / "state"),
        SIDECAR_SNAPSHOT_INTERVAL="1",
        SIDECAR_AGENTAPI_PROBE_INTERVAL="1",
        **extra,
    )


async def _a_turn(agentapi: FakeAgentapi, sidecar: SidecarProcess) -> None:
    """A question, the agent at work, its answer streamed, then the turn's end."""
    await agentapi.wait_for_subscribers(1, timeout=10)
    agentapi.set_status("running")
    agentapi.add_message("user", "add a --verbose flag")
    agentapi.add_message("agent", "Reading cli.py")
    await sidecar.wait_output("would be relayed for app 'claude-code': working")
    agentapi.update_last("Reading cli.py\nAdded --verbose; the tests pass.")
    agentapi.set_status("stable")


def _printed(sidecar: SidecarProcess) -> list[str]:
    return [line for line in sidecar.stdout.decode().splitlines() if line.startswith("dry-run: ")]


@pytest.mark.parametrize("how", ["flag", "variable"])
async def test_dry_run_prints_what_it_would_send_and_sends_nothing(
    how: str,
    tmp_path: Path,
    fake_agentapi: Served[FakeAgentapi],
    fake_coder: Served[FakeCoder],
    start_sidecar: SidecarFactory,
) -> None:
    # A Coder is configured, with a token, to show that a dry run sends it nothing.
    env = _dry_env(
        tmp_path,
        fake_agentapi,
        CODER_AGENT_URL=fake_coder.url,
        CODER_AGENT_TOKEN=fake_coder.fake.token,
        CODER_TASK_ID=str(fake_coder.fake.task_id),
    )
    args = ["run", "--dry-run"] if how == "flag" else ["run"]
    if how == "variable":
        env["SIDECAR_DRY_RUN"] = "1"
    sidecar = await start_sidecar(env, args)
    on = await sidecar.wait_log("dry_run.on")
    assert "nothing is sent to Coder" in on["note"]
    assert (await sidecar.wait_log("daemon.started"))["coder"] == "(dry run)"
    await _a_turn(fake_agentapi.fake, sidecar)
    await sidecar.wait_output("would be relayed for app 'claude-code': idle")
    assert await sidecar.stop() == 0

    printed = _printed(sidecar)
    snapshots = [line for line in printed if "snapshot #" in line]
    task = fake_coder.fake.task_id
    assert snapshots, sidecar.output()
    assert re.fullmatch(
        rf"dry-run: snapshot #\d+ would be posted for task {task}: 2 messages \(ids 0–1\), "
        r"[\d,]+ bytes; newest \(agent\): \"Added --verbose; the tests pass.\"",
        snapshots[-1],
    ), snapshots[-1]
    statuses = [line for line in printed if "status would be relayed" in line]
    assert "dry-run: status would be relayed for app 'claude-code': working" in "\n".join(
        statuses
    ), printed
    assert statuses[-1].startswith("dry-run: status would be relayed for app 'claude-code': idle")
    # The printed size is the body's: the same body a real run would post.
    size = re.search(r"([\d,]+) bytes", snapshots[-1])
    assert size is not None
    assert sidecar.events("snapshot.posted")[-1]["bytes"] == int(size[1].replace(",", ""))
    assert fake_coder.fake.requests == []
    state_dir = tmp_path / "state"
    assert not state_dir.exists() or list(state_dir.iterdir()) == []


async def test_dry_run_needs_no_coder_variables_at_all(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], start_sidecar: SidecarFactory
) -> None:
    sidecar = await start_sidecar(_dry_env(tmp_path, fake_agentapi), ["run", "--dry-run"])
    await _a_turn(fake_agentapi.fake, sidecar)
    await sidecar.wait_output("2 messages (ids 0–1)")
    assert await sidecar.stop() == 0
    printed = "\n".join(_printed(sidecar))
    # Without CODER_TASK_ID the snapshots name a placeholder task.
    assert f"would be posted for task {ZERO_TASK}: 2 messages" in printed
    assert "Traceback" not in sidecar.output()


async def test_without_dry_run_the_token_is_still_required(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], start_sidecar: SidecarFactory
) -> None:
    env = _dry_env(tmp_path, fake_agentapi, SIDECAR_DRY_RUN="0")
    sidecar = await start_sidecar(env, ["run"])
    assert await sidecar.wait() == 2
    assert "CODER_AGENT_URL: is required" in sidecar.output()


async def test_check_in_a_dry_run_probes_agentapi_only(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], start_sidecar: SidecarFactory
) -> None:
    env = _dry_env(tmp_path, fake_agentapi, SIDECAR_DRY_RUN="true")
    sidecar = await start_sidecar(env, ["check"])
    assert await sidecar.wait() == 0
    out = sidecar.stdout.decode()
    assert re.search(r"SIDECAR_DRY_RUN +on: nothing is sent to Coder", out), out
    assert "[ok  ] agentapi: status stable" in out
    assert "[--  ] coder: not probed: SIDECAR_DRY_RUN is on" in out
    assert re.search(r"token +\(unset: not needed in a dry run\)", out), out


async def test_snapshot_in_a_dry_run_prints_the_one_it_would_post_and_keeps_nothing(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], start_sidecar: SidecarFactory
) -> None:
    fake_agentapi.fake.add_message("user", "add a --verbose flag")
    fake_agentapi.fake.add_message("agent", "Done.")
    env = _dry_env(tmp_path, fake_agentapi, SIDECAR_DRY_RUN="yes")
    sidecar = await start_sidecar(env, ["snapshot"])
    assert await sidecar.wait() == 0
    assert _printed(sidecar) == [
        f"dry-run: snapshot #1 would be posted for task {ZERO_TASK}: 2 messages (ids 0–1), "
        f'{sidecar.events("snapshot.posted")[0]["bytes"]} bytes; newest (agent): "Done."'
    ]
    state_dir = tmp_path / "state"
    assert not state_dir.exists() or list(state_dir.iterdir()) == []

"""What real workspaces do to the daemon, tried on the real process: values from the
environment, redirects, signals, a state directory that cannot keep anything, a second
daemon, a busy health port, and a conversation that quotes the credential.

Each class has several cases; every one runs `coder-task-sidecar` against the loopback
fakes and checks what the fake Coder ends up holding, the exit status, and the log.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Final

import pytest

from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served
from tests.conftest import CoderFactory
from tests.e2e.conftest import SidecarFactory
from tests.e2e.harness import (
    SidecarProcess,
    base_env,
    end_the_turn,
    run_to_exit,
    stored_contents,
)
from tests.e2e.workspace import Workspace
from tests.faults.rig import Rig
from tests.tracebacks import assert_no_traceback

DEADLINE: Final = 15.0
COMMANDS: Final = (["run"], ["snapshot"], ["check"])


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# --- 1. values from the environment ----------------------------------------------------


@pytest.mark.parametrize("padding", ["\n", "\r\n", "  \t"], ids=["lf", "crlf", "blanks"])
async def test_a_token_with_surrounding_whitespace_works(
    workspace: Workspace, start_sidecar: SidecarFactory, padding: str
) -> None:
    coder = workspace.coder.fake
    workspace.agentapi.fake.add_message("user", "a Kubernetes secret ends in a newline")
    proc = await start_sidecar(workspace.env(CODER_AGENT_TOKEN=coder.token + padding))
    await coder.wait_for(lambda: stored_contents(coder) is not None, DEADLINE)
    assert await proc.stop() == 0
    assert proc.events("shutdown.complete")[-1]["snapshot"] == "delivered"
    assert_no_traceback(proc.output())


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("CODER_AGENT_TOKEN", "{token}\n{token}", "control"),
        ("CODER_AGENT_TOKEN", "\ufeff{token}", "control"),
        ("CODER_AGENT_URL", "http://user:{token}@127.0.0.1:1", "password"),
        ("CODER_AGENT_URL", "http://127.0.0.1:1/?token={token}", "query"),
        ("CODER_AGENT_URL", "http://127.0.0.1:70000", "port"),
        ("SIDECAR_SNAPSHOT_INTERVAL", "1e-9", "from 1 to 3600"),
        ("SIDECAR_SHUTDOWN_TIMEOUT", "1e9", "from 1 to 600"),
    ],
)
async def test_bad_values_exit_2_with_one_line_from_every_command(
    tmp_path: Path, fake_coder: Served[FakeCoder], variable: str, value: str, problem: str
) -> None:
    token = fake_coder.fake.token
    env = base_env(
        tmp_path, CODER_AGENT_URL=fake_coder.url, CODER_AGENT_TOKEN=token, CODER_TASK_ID=""
    )
    env[variable] = value.format(token=token)
    for args in COMMANDS:
        code, out, err = await run_to_exit(env, args)
        assert code == 2, (args, err)
        line = one_line(err)
        assert line.startswith(f"coder-task-sidecar: configuration error: {variable}: "), line
        assert problem in line
        assert token not in out + err
        assert out == ""


async def test_a_token_file_that_is_a_fifo_is_refused_at_once(
    tmp_path: Path, fake_coder: Served[FakeCoder]
) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    env = base_env(tmp_path, CODER_AGENT_URL=fake_coder.url, CODER_AGENT_TOKEN_FILE=str(fifo))
    code, _out, err = await run_to_exit(env, ["run"], timeout=DEADLINE)
    assert code == 2
    assert "CODER_AGENT_TOKEN_FILE" in one_line(err)


async def test_odd_values_of_every_variable_never_print_a_traceback(
    workspace: Workspace,
) -> None:
    # `check` runs every probe the daemon would; a value it survives, the others do too.
    odd = {
        "SIDECAR_STATE_DIR": "/dev/null/x",
        "SIDECAR_HTTP_ADDR": "[::1]:99999",
        "SIDECAR_LOG_LEVEL": "trace",
        "AGENTAPI_STATE_FILE": "/dev/zero",
        "CODER_MCP_APP_STATUS_SLUG": "\x1b[31m",
        "SIDECAR_RELAY_URI": "\udcff",
        "SIDECAR_SNAPSHOT_MAX_MESSAGES": "1e3",
        "WATCHDOG_USEC": "-1",
        "HTTPS_PROXY": "::",
    }
    for variable, value in odd.items():
        env = workspace.env(**{variable: value})
        code, out, err = await run_to_exit(env, ["check"], timeout=DEADLINE)
        assert code in (0, 1, 2), (variable, code)
        assert_no_traceback(out + err, variable)
        if code == 2:
            assert variable in one_line(err)


async def test_an_unknown_variable_is_warned_about_with_the_closest_name(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    proc = await start_sidecar(workspace.env(SIDECAR_SNAPSHOT_INTERVALL="5"))
    warned = await proc.wait_log("config.unknown_variable")
    assert warned["variable"] == "SIDECAR_SNAPSHOT_INTERVALL"
    assert warned["did_you_mean"] == "SIDECAR_SNAPSHOT_INTERVAL"
    await proc.wait_log("daemon.started")
    assert await proc.stop() == 0
    assert len(proc.events("config.unknown_variable")) == 1


# --- 2. redirects -------------------------------------------------------------------------


async def test_a_redirect_is_never_followed_and_its_body_is_kept_and_retried(
    workspace: Workspace, make_fake_coder: CoderFactory, start_sidecar: SidecarFactory
) -> None:
    coder = workspace.coder.fake
    elsewhere = await make_fake_coder(token=coder.token, task_id=coder.task_id)
    location = elsewhere.url + coder.snapshot_path() + "?format=agentapi"
    coder.redirect_next(location, status=308, times=2)
    workspace.agentapi.fake.add_message("user", "behind an http → https redirect")
    proc = await start_sidecar(workspace.env())
    said = await proc.wait_log("snapshot.redirected", timeout=DEADLINE)
    assert said["location"] == location
    assert "CODER_AGENT_URL" in said["hint"]
    await coder.wait_for(workspace.spool_path.exists, DEADLINE)
    # Retried with back-off (once more redirected, then through), logged once.
    await coder.wait_for(lambda: stored_contents(coder) is not None, 30)
    assert len(proc.events("snapshot.redirected")) == 1
    # The token never went where the redirect pointed.
    assert elsewhere.fake.requests == []
    assert await proc.stop() == 0


async def test_shutdown_while_redirected_spools_and_says_so(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    workspace.coder.fake.redirect_next("https://127.0.0.1:9/moved", status=301, times=1000)
    workspace.agentapi.fake.add_message("user", "redirected all along")
    proc = await start_sidecar(workspace.env())
    await proc.wait_log("snapshot.redirected", timeout=DEADLINE)
    assert await proc.stop() == 0
    done = proc.events("shutdown.complete")[-1]
    assert done["snapshot"] == "spooled"
    assert done["snapshot_delivered"] is False
    assert "redirected all along" in workspace.spool_path.read_text()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_check_fails_naming_the_redirect(workspace: Workspace, status: int) -> None:
    workspace.coder.fake.redirect_next(
        "https://coder.example.com/", status, 10, path_contains="/api/"
    )
    code, out, _err = await run_to_exit(workspace.env(), ["check"])
    assert code == 1
    assert "redirected to https://coder.example.com/" in out
    assert "→ set CODER_AGENT_URL to the URL it points to" in out


# --- 3. signals ---------------------------------------------------------------------------


async def test_sighup_is_a_stop_request_with_the_final_flush(rig: Rig) -> None:
    rig.agentapi.fake.add_message("user", "hello")
    rig.agentapi.fake.set_status("running")
    await rig.start_sidecar(SIDECAR_SNAPSHOT_INTERVAL="600")
    await end_the_turn(rig.agentapi.fake)
    await rig.wait_truth()
    async with rig.seen(1):
        # Not posted yet: a message while the agent works waits for the (long) interval.
        rig.agentapi.fake.add_message("agent", "last words before the workspace stopped")
    rig.proc.signal(signal.SIGHUP)
    assert await rig.proc.wait(DEADLINE) == 0
    assert rig.proc.events("shutdown.requested")[0]["signal"] == "SIGHUP"
    assert rig.proc.events("shutdown.complete")[-1]["snapshot"] == "delivered"
    await rig.assert_truth()


async def test_sighup_to_the_process_group_as_coders_agent_sends_it(
    workspace: Workspace,
) -> None:
    coder = workspace.coder.fake
    workspace.agentapi.fake.add_message("user", "started from a coder_script")
    proc = SidecarProcess(workspace.env())
    await proc.start(new_session=True)
    try:
        await coder.wait_for(lambda: stored_contents(coder) is not None, DEADLINE)
        assert proc.proc is not None
        os.killpg(proc.proc.pid, signal.SIGHUP)
        assert await proc.wait(DEADLINE) == 0
        assert proc.events("shutdown.complete")[-1]["snapshot"] == "delivered"
    finally:
        await proc.kill()


async def test_a_repeated_sigterm_is_one_stop_request(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    agentapi.add_message("user", "hello")
    proc = await start_sidecar(workspace.env())
    await coder.wait_for(lambda: stored_contents(coder) == ["hello"], DEADLINE)
    # The final flush meets a slow Coder; the supervisor signals again meanwhile.
    coder.fail_next(503, times=3, retry_after=1)
    agentapi.add_message("agent", "said while stopping")
    await proc.wait_log("snapshot.retry", timeout=DEADLINE)
    proc.signal(signal.SIGTERM)
    await proc.wait_log("shutdown.requested")
    # One at a time: the kernel merges a signal sent while the same one is pending.
    proc.signal(signal.SIGTERM)
    await proc.wait_log("shutdown.repeated")
    proc.signal(signal.SIGTERM)
    await proc.wait_log("shutdown.repeated", count=2)
    assert await proc.wait(DEADLINE) == 0
    assert len(proc.events("shutdown.repeated")) == 2
    assert not proc.events("shutdown.forced")
    done = proc.events("shutdown.complete")[-1]
    assert done["forced"] is False
    assert done["snapshot"] == "delivered"
    assert stored_contents(coder) == ["hello", "said while stopping"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
async def test_snapshot_killed_mid_post_spools_and_exits_without_a_traceback(
    workspace: Workspace, sig: signal.Signals
) -> None:
    coder = workspace.coder.fake
    coder.hang_next(times=10)
    workspace.agentapi.fake.add_message("user", "posting when the hook ran out of time")
    proc = SidecarProcess(workspace.env(SIDECAR_SHUTDOWN_TIMEOUT="60"), ["snapshot"])
    await proc.start()
    try:
        await coder.wait_for(lambda: len(coder.snapshot_posts()) == 1, DEADLINE)
        proc.signal(sig)
        assert await proc.wait(DEADLINE) == 1
    finally:
        await proc.kill()
    assert_no_traceback(proc.output())
    assert "KeyboardInterrupt" not in proc.output()
    assert proc.events("oneshot.interrupted")[0]["signal"] == sig.name
    assert "posting when the hook ran out of time" in workspace.spool_path.read_text()


async def test_a_signal_during_start_up_leaves_no_half_written_file(
    workspace: Workspace,
) -> None:
    state = workspace.state_dir
    state.mkdir()
    # What a write killed mid-way leaves: a temp file beside the spool.
    stale = state / ".spool-leftover.tmp"
    stale.write_text('{"messages":[{"id":0')
    os.utime(stale, (0, 0))
    for delay in (0.0, 0.05, 0.2):
        proc = SidecarProcess(workspace.env())
        await proc.start()
        try:
            await asyncio.sleep(delay)  # a signal at several points of the start-up
            proc.signal(signal.SIGTERM)
            await proc.wait(DEADLINE)
        finally:
            await proc.kill()
        assert_no_traceback(proc.output())
    leftovers = [p.name for p in state.iterdir() if p.suffix == ".tmp"]
    assert leftovers == [] or leftovers == [stale.name]
    # A full start cleans up what a killed write left behind.
    proc = SidecarProcess(workspace.env())
    await proc.start()
    try:
        await proc.wait_log("spool.temp_removed", timeout=DEADLINE)
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    assert not stale.exists()


# --- 4. an honest shutdown ------------------------------------------------------------------


async def test_a_state_dir_that_is_a_file_is_said_at_start_and_a_lost_snapshot_exits_1(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    not_a_dir = workspace.home / "state-file"
    not_a_dir.write_text("")
    await _lost_snapshot(workspace, start_sidecar, str(not_a_dir))


async def _lost_snapshot(
    workspace: Workspace, start_sidecar: SidecarFactory, state_dir: str
) -> None:
    workspace.coder.fake.fail_next(503, times=10_000)
    workspace.agentapi.fake.add_message("user", "nowhere to keep this")
    env = workspace.env(SIDECAR_STATE_DIR=state_dir, SIDECAR_SHUTDOWN_TIMEOUT="1")
    proc = await start_sidecar(env)
    unusable = await proc.wait_log("spool.unwritable", timeout=DEADLINE)
    assert unusable["path"] == state_dir
    await proc.wait_log("snapshot.retry", timeout=DEADLINE)
    assert await proc.stop() == 1
    done = proc.events("shutdown.complete")[-1]
    assert done["snapshot"] == "lost"
    assert done["spooled"] is False
    assert done["snapshot_delivered"] is False
    code, out, _err = await run_to_exit(env, ["check"])
    assert code == 1
    assert "[FAIL] state dir" in out
    assert "→ set SIDECAR_STATE_DIR to a writable directory" in out


# --- 5. one daemon per state directory --------------------------------------------------------


async def test_a_second_daemon_says_who_holds_the_lock_and_exits_0(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    env = workspace.env(CODER_MCP_APP_STATUS_SLUG="claude-code")
    first = await start_sidecar(env)
    await first.wait_log("daemon.started")
    second = await start_sidecar(env)
    assert await second.wait(DEADLINE) == 0
    assert first.proc is not None
    assert second.events("daemon.already_running")[0]["pid"] == first.proc.pid
    # Only one daemon reports: one status for one change, not two.
    agentapi.add_message("user", "fix the bug")
    await coder.wait_for(lambda: len(coder.app_statuses) >= 1, DEADLINE)
    agentapi.add_message("agent", "Fixed it.")
    await coder.wait_for(lambda: stored_contents(coder) == ["fix the bug", "Fixed it."], DEADLINE)
    assert await first.stop() == 0
    assert len(coder.app_statuses) == len({(s.state, s.message) for s in coder.app_statuses})
    # The lock goes with its holder, even a killed one.
    third = await start_sidecar(env)
    await third.wait_log("daemon.started")
    third.signal(signal.SIGKILL)
    await third.wait(DEADLINE)
    fourth = await start_sidecar(env)
    await fourth.wait_log("daemon.started")
    assert await fourth.stop() == 0


# --- 8. the health listener ----------------------------------------------------------------------


async def test_a_health_port_in_use_exits_2_naming_the_variable(
    workspace: Workspace, busy_port: int
) -> None:
    env = workspace.env(SIDECAR_HTTP_ADDR=f"127.0.0.1:{busy_port}")
    code, _out, err = await run_to_exit(env, ["run"], timeout=DEADLINE)
    assert code == 2
    assert_no_traceback(err)
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, err
    assert lines[0].startswith("coder-task-sidecar: configuration error: SIDECAR_HTTP_ADDR:")


@pytest.mark.parametrize("addr", ["0.0.0.0:0", "[::]:0"])
async def test_a_wildcard_health_bind_is_warned_about(
    workspace: Workspace, start_sidecar: SidecarFactory, addr: str
) -> None:
    proc = await start_sidecar(workspace.env(SIDECAR_HTTP_ADDR=addr))
    exposed = await proc.wait_log("health.exposed", timeout=DEADLINE)
    assert "reachable from other hosts" in exposed["note"]
    assert await proc.stop() == 0


# --- 9. the credential never leaves in a snapshot ------------------------------------------------


async def test_the_token_in_the_conversation_never_reaches_coder(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    token = coder.token
    agentapi.add_message("user", "print your environment")
    agentapi.add_message(
        "agent", f"PATH=/usr/bin\nCODER_AGENT_TOKEN={token}\nHOME=/home/coder\nsee: {token[:20]}"
    )
    proc = await start_sidecar(workspace.env(CODER_MCP_APP_STATUS_SLUG="claude-code"))
    await coder.wait_for(lambda: stored_contents(coder) is not None, DEADLINE)
    await coder.wait_for(lambda: len(coder.app_statuses) >= 1, DEADLINE)
    assert await proc.stop() == 0
    stored = stored_contents(coder)
    assert stored is not None
    assert "CODER_AGENT_TOKEN=[secret removed by coder-task-sidecar]" in stored[1]
    for request in coder.requests:
        assert token.encode() not in request.body
    assert all(token not in s.message for s in coder.app_statuses)

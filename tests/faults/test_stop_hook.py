"""`coder-task-sidecar stop`, the template's run_on_stop hook, with the real processes: the
daemon, an agentapi stand-in with a pid file and a state file, and the fake Coder."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any, Final

import pytest

from tests.e2e.harness import SidecarProcess, end_the_turn, run_to_exit, stored_contents
from tests.fakes.agentapi_runner import agentapi_process
from tests.faults.rig import Rig
from tests.tracebacks import assert_no_traceback

DEADLINE: Final = 20.0


async def run_stop(rig: Rig, **extra: str) -> tuple[int, list[dict[str, Any]]]:
    proc = SidecarProcess(rig.env(**extra), ["stop"])
    await proc.start()
    try:
        code = await proc.wait(DEADLINE)
    finally:
        await proc.kill()
    assert_no_traceback(proc.output())
    return code, proc.logs


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [str(e["event"]) for e in logs]


async def test_with_the_daemon_running_and_agentapi_gone_stop_stores_the_daemons_newest(
    rig: Rig,
) -> None:
    rig.agentapi.fake.add_message("user", "fix the flaky test")
    rig.agentapi.fake.set_status("running")
    daemon = await rig.start_sidecar(SIDECAR_SNAPSHOT_INTERVAL="600")
    await end_the_turn(rig.agentapi.fake)
    await rig.wait_truth()
    async with rig.seen(1):
        rig.agentapi.fake.add_message("agent", "Fixed: the test waited on a timer.")
    # agentapi is gone by the time the hook runs; the daemon's mirror is all there is.
    await rig.agentapi.server.stop()
    code, logs = await run_stop(rig)
    assert code == 0
    assert stored_contents(rig.coder.fake) == [
        "fix the flaky test",
        "Fixed: the test waited on a timer.",
    ]
    assert await daemon.proc.wait(DEADLINE) == 0
    (stopped,) = [e for e in logs if e["event"] == "stop.daemon_stopped"]
    assert stopped["snapshot"] == "delivered"
    assert daemon.proc.proc is not None
    assert stopped["pid"] == daemon.proc.proc.pid
    # The hook never needed the HTTP stack: it posted nothing itself.
    assert "stop.no_daemon" not in events(logs)


async def test_a_daemon_that_could_not_deliver_makes_stop_exit_1(rig: Rig) -> None:
    rig.agentapi.fake.add_message("user", "hello")
    await rig.start_sidecar(SIDECAR_SHUTDOWN_TIMEOUT="1")
    await rig.wait_truth()
    rig.coder.fake.fail_next(503, times=10_000)
    async with rig.seen(1):
        rig.agentapi.fake.add_message("agent", "unsent")
    code, logs = await run_stop(rig, SIDECAR_SHUTDOWN_TIMEOUT="1")
    assert code == 1
    (stopped,) = [e for e in logs if e["event"] == "stop.daemon_stopped"]
    assert stopped["snapshot"] == "spooled"
    assert "unsent" in rig.spool_path.read_text()


async def test_without_a_daemon_agentapi_is_asked_to_save_the_snapshot_posted_then_it_stops(
    rig: Rig, tmp_path: Path
) -> None:
    async with agentapi_process(tmp_path, "user:run the tests", "agent:All green.") as agentapi:
        code, logs = await run_stop(rig, **agentapi.env())
        assert code == 0
        # Step 3 waited for agentapi: it has exited when the hook returns.
        assert agentapi.proc.returncode is not None or await agentapi.proc.wait() == 0
        whats = agentapi.whats()
    # SIGUSR1 is the first thing agentapi sees; the hook reads /messages without waiting
    # for that save (agentapi answers, so its state file is not the snapshot's source).
    assert whats[0] == ("signal", "SIGUSR1")
    assert whats.index(("request", "/messages")) < whats.index(("signal", "SIGTERM"))
    # One SIGTERM (a second would kill agentapi mid-save); nothing changed since the
    # SIGUSR1 save, so agentapi's final save is skipped; it has exited.
    assert [w for w in whats if w[0] == "signal"] == [("signal", "SIGUSR1"), ("signal", "SIGTERM")]
    assert whats[-3:] == [("signal", "SIGTERM"), ("save_skipped", "unchanged"), ("exited", None)]
    assert stored_contents(rig.coder.fake) == ["run the tests", "All green."]
    assert events(logs)[0] == "stop.no_daemon"
    assert events(logs)[-2:] == ["stop.agentapi_stopped", "stop.agentapi_saved"]


async def test_without_a_daemon_and_agentapi_gone_the_state_file_speaks(
    rig: Rig, tmp_path: Path
) -> None:
    async with agentapi_process(tmp_path, "user:save me", "agent:Saved.") as agentapi:
        env = agentapi.env()
        # agentapi answers signals but no longer HTTP: its state file is the last word.
        env["CODER_MCP_AI_AGENTAPI_URL"] = "http://127.0.0.1:9"
        code, _logs = await run_stop(rig, **env)
    assert code == 0
    assert stored_contents(rig.coder.fake) == ["save me", "Saved."]


async def test_an_agentapi_that_will_not_stop_is_said_to_be_running(
    rig: Rig, tmp_path: Path
) -> None:
    async with agentapi_process(tmp_path, "user:hi", ignore_sigterm=True) as agentapi:
        code, logs = await run_stop(rig, **agentapi.env())
        assert agentapi.proc.returncode is None
    assert code == 0
    assert "stop.agentapi_still_running" in events(logs)


async def test_a_stale_pid_file_naming_another_process_is_never_signalled(
    rig: Rig, tmp_path: Path
) -> None:
    bystander = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        pid_file = tmp_path / "agentapi.pid"
        pid_file.write_text(f"{bystander.pid}\n")
        rig.agentapi.fake.add_message("user", "hi")
        code, logs = await run_stop(rig, AGENTAPI_PID_FILE=str(pid_file))
        assert code == 0
        assert "stop.agentapi_pid_reused" in events(logs)
        assert bystander.returncode is None
    finally:
        bystander.kill()
        await bystander.wait()


async def test_without_a_task_stop_exits_0_at_once(rig: Rig, tmp_path: Path) -> None:
    async with agentapi_process(tmp_path, "user:hi") as agentapi:
        code, logs = await run_stop(rig, CODER_TASK_ID="", **agentapi.env())
    assert code == 0
    assert "oneshot.skipped" in events(logs)
    assert rig.coder.fake.snapshot_posts() == []


@pytest.mark.parametrize("daemon", [False, True], ids=["no-daemon", "daemon"])
async def test_against_a_coder_without_tasks_stop_exits_0_and_keeps_nothing(
    rig: Rig, daemon: bool
) -> None:
    rig.coder.fake.endpoint_missing = True
    rig.agentapi.fake.add_message("user", "hello")
    if daemon:
        started = await rig.start_sidecar()
        await started.proc.wait_log("snapshot.no_tasks_api", timeout=DEADLINE)
    code, logs = await run_stop(rig)
    assert code == 0
    assert not rig.spool_path.exists()
    if daemon:
        (stopped,) = [e for e in logs if e["event"] == "stop.daemon_stopped"]
        assert stopped["snapshot"] == "no_tasks_api"
    else:
        assert len(rig.coder.fake.snapshot_posts()) == 1
        (done,) = [e for e in logs if e["event"] == "oneshot.done"]
        assert done["snapshot"] == "no_tasks_api"


async def test_a_configuration_error_is_one_line_and_exit_2(rig: Rig) -> None:
    code, _out, err = await run_to_exit(rig.env(SIDECAR_SHUTDOWN_TIMEOUT="0"), ["stop"])
    assert code == 2
    assert err.strip().splitlines() == [
        "coder-task-sidecar: configuration error: SIDECAR_SHUTDOWN_TIMEOUT: must be a number "
        "of seconds from 1 to 600"
    ]


async def test_stop_signals_agentapi_once_and_waits_out_its_slow_final_save(
    rig: Rig, tmp_path: Path
) -> None:
    # Something changed since agentapi's last save, and its save takes a while: a second
    # SIGTERM would kill it mid-save, leaving only <file>.tmp.
    async with agentapi_process(
        tmp_path, "user:hello", args=["--save-delay", "1.5", "--save-state", "true"]
    ) as agentapi:
        proc = SidecarProcess(rig.env(**agentapi.env(), AGENTAPI_SAVE_STATE="false"), ["stop"])
        await proc.start()
        try:
            await proc.wait_log("stop.no_daemon", timeout=DEADLINE)
            await agentapi.wait_journal("signal")
            # The hook itself is signalled meanwhile (a supervisor, `timeout`): it finishes.
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
                proc.signal(sig)
            code = await proc.wait(DEADLINE)
        finally:
            await proc.kill()
        assert await agentapi.wait_exit() == 0
        whats = agentapi.whats()
    assert_no_traceback(proc.output())
    assert code == 0
    assert [w for w in whats if w[0] == "signal"] == [("signal", "SIGTERM")]
    assert whats[-2:] == [("saved", None), ("exited", None)]
    assert agentapi.state_file is not None
    assert agentapi.state_file.exists()
    assert not agentapi.state_file.with_name(agentapi.state_file.name + ".tmp").exists()
    held = [e["signal"] for e in proc.logs if e["event"] == "stop.signal_held"]
    assert sorted(held) == ["SIGHUP", "SIGTERM", "SIGUSR1"]
    assert events(proc.logs)[-1] == "stop.agentapi_stopped"


async def test_with_a_daemon_stop_does_not_wait_for_agentapis_save(
    rig: Rig, tmp_path: Path
) -> None:
    async with agentapi_process(tmp_path, "user:hello", args=["--save-delay", "2"]) as agentapi:
        rig.agentapi.fake.add_message("user", "hello")
        await rig.start_sidecar()
        await rig.wait_truth()
        code, logs = await run_stop(rig, **agentapi.env())
        whats = agentapi.whats()
    assert code == 0
    # The daemon was stopped (its final snapshot told) before agentapi's slow SIGUSR1 save
    # was done: the two ran side by side.
    assert events(logs)[0] == "stop.daemon_stopped"
    assert whats[0] == ("signal", "SIGUSR1")
    assert [w for w in whats if w[0] == "signal"] == [("signal", "SIGUSR1"), ("signal", "SIGTERM")]

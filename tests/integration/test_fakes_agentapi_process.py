"""The agentapi stand-in process handles its files and signals as agentapi's cmd/server
does: the pid file, saves only of a changed conversation, the first shutdown signal
saving and exiting, a second one killing it mid-save; 0.11 with none of it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.agentapi_runner import ROOT, AgentapiProcess, agentapi_process

DEADLINE = 20.0


async def get(url: str, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as http,
        http.get(url + path) as r,
    ):
        return r.status, await r.json()


async def send(agentapi: AgentapiProcess, content: str) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as http,
        http.post(agentapi.url + "/message", json={"type": "user", "content": content}) as r,
    ):
        return r.status


def saved_contents(path: Path) -> list[str]:
    return [m["message"] for m in json.loads(path.read_bytes())["messages"]]


async def test_the_pid_file_is_written_plainly_and_removed_at_a_graceful_exit(
    tmp_path: Path,
) -> None:
    async with agentapi_process(tmp_path, "user:hi") as agentapi:
        assert agentapi.pid_file.read_text() == f"{agentapi.proc.pid}\n"
        assert stat.S_IMODE(agentapi.pid_file.stat().st_mode) == 0o600
        # A second agentapi with the same pid file refuses to start.
        second = await run_to_exit(
            "--journal",
            str(tmp_path / "j2"),
            "--port-file",
            str(tmp_path / "p2"),
            "--pid-file",
            str(agentapi.pid_file),
        )
        assert second == (1, f"another instance is already running with PID {agentapi.proc.pid}")
        agentapi.signal(signal.SIGTERM)
        assert await agentapi.wait_exit() == 0
    assert not agentapi.pid_file.exists()


async def run_to_exit(*args: str) -> tuple[int, str]:
    """The stand-in with `args`, expected to refuse to start: (exit code, its reason)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.agentapi_process",
        *args,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(DEADLINE):
        _out, err = await proc.communicate()
    line = err.decode().strip().splitlines()[0].removeprefix("Error: ").split(" (PID file")[0]
    return proc.returncode or 0, line


async def test_sigusr1_saves_only_what_changed(tmp_path: Path) -> None:
    async with agentapi_process(tmp_path, "user:run the tests", "agent:All green.") as agentapi:
        state = agentapi.state_file
        assert state is not None
        agentapi.signal(signal.SIGUSR1)
        await agentapi.wait_journal("saved")
        assert saved_contents(state) == ["run the tests", "All green."]
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        first = state.stat()
        agentapi.signal(signal.SIGUSR1)
        await agentapi.wait_journal("save_skipped")
        assert (state.stat().st_ino, state.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
        assert await send(agentapi, "and the linter") == 200
        agentapi.signal(signal.SIGUSR1)
        await agentapi.wait_journal("saved", count=2)
        assert saved_contents(state)[-1] == "and the linter"
        agentapi.signal(signal.SIGTERM)
        assert await agentapi.wait_exit() == 0
    assert agentapi.whats() == [
        ("signal", "SIGUSR1"),
        ("saved", None),
        ("signal", "SIGUSR1"),
        ("save_skipped", "unchanged"),
        ("request", "/message"),
        ("signal", "SIGUSR1"),
        ("saved", None),
        ("signal", "SIGTERM"),
        ("save_skipped", "unchanged"),
        ("exited", None),
    ]
    assert not (state.parent / (state.name + ".tmp")).exists()


@pytest.mark.parametrize("how", ["flag", "environment"])
async def test_save_state_false_never_writes(tmp_path: Path, how: str) -> None:
    args = ["--save-state", "false"] if how == "flag" else []
    env = None if how == "flag" else {**os.environ, "AGENTAPI_SAVE_STATE": "false"}
    async with agentapi_process(tmp_path, "user:hi", args=args, env=env) as agentapi:
        agentapi.signal(signal.SIGUSR1)
        await agentapi.wait_journal("save_skipped")
        agentapi.signal(signal.SIGTERM)
        assert await agentapi.wait_exit() == 0
    assert ("save_skipped", "disabled") in agentapi.whats()
    assert agentapi.state_file is not None
    assert not agentapi.state_file.exists()


async def test_acp_refuses_a_state_file_and_never_saves(tmp_path: Path) -> None:
    home = tmp_path / "refused"
    home.mkdir()
    refused = await run_to_exit(
        "--journal",
        str(home / "j"),
        "--port-file",
        str(home / "p"),
        "--state-file",
        str(home / "state.json"),
        "--experimental-acp",
    )
    assert refused == (1, "ACP mode doesn't support state persistence")
    args = ["--experimental-acp", "--save-state", "false", "--load-state", "false"]
    async with agentapi_process(tmp_path, args=args) as agentapi:
        assert (await get(agentapi.url, "/status"))[1]["transport"] == "acp"
        assert await send(agentapi, "hello") == 200
        _status, body = await get(agentapi.url, "/messages")
        agentapi.signal(signal.SIGUSR1)
        await agentapi.wait_journal("save_skipped")
    assert [(m["id"], m["role"]) for m in body["messages"]] == [(0, "user"), (1, "agent")]
    assert ("save_skipped", "acp") in agentapi.whats()


async def test_a_state_file_present_at_start_is_loaded_and_not_saved_again(
    tmp_path: Path,
) -> None:
    state = tmp_path / ".agentapi-module" / "agentapi-state.json"
    state.parent.mkdir()
    state.write_text(
        '{"version":1,"messages":[{"id":0,"message":"from the last session","role":"agent",'
        '"time":"2025-01-02T03:04:05Z"}],"initial_prompt":"","initial_prompt_sent":false}\n'
    )
    async with agentapi_process(tmp_path) as agentapi:
        _status, body = await get(agentapi.url, "/messages")
        agentapi.signal(signal.SIGTERM)
        assert await agentapi.wait_exit() == 0
    assert [m["content"] for m in body["messages"]] == ["from the last session"]
    assert agentapi.whats() == [
        ("loaded", None),
        ("request", "/messages"),
        ("signal", "SIGTERM"),
        ("save_skipped", "unchanged"),
        ("exited", None),
    ]


async def test_a_second_sigterm_kills_it_mid_save(tmp_path: Path) -> None:
    state = tmp_path / ".agentapi-module" / "agentapi-state.json"
    state.parent.mkdir()
    old = (
        '{"version":1,"messages":[{"id":0,"message":"old","role":"user",'
        '"time":"2025-01-02T03:04:05Z"}],"initial_prompt":"","initial_prompt_sent":false}\n'
    )
    state.write_text(old)
    temp = state.with_name(state.name + ".tmp")
    async with agentapi_process(
        tmp_path, "agent:new since the load", args=["--save-delay", "60"]
    ) as agentapi:
        agentapi.signal(signal.SIGTERM)
        await agentapi.wait_until(temp.exists, "the temp file")
        agentapi.signal(signal.SIGUSR1)  # ignored from the first shutdown signal on
        await agentapi.wait_until(lambda: ("signal", "SIGUSR1") in agentapi.whats(), "SIGUSR1")
        assert agentapi.proc.returncode is None
        agentapi.signal(signal.SIGTERM)
        assert await agentapi.wait_exit() == -signal.SIGTERM
    assert state.read_text() == old
    assert saved_contents(temp) == ["old", "new since the load"]
    assert [e for e in agentapi.entries() if e["what"] == "signal"][1]["ignored"] is True
    assert agentapi.whats() == [("loaded", None), ("signal", "SIGTERM"), ("signal", "SIGUSR1")]
    assert agentapi.pid_file.exists()  # left stale


async def test_ignore_sigterm_hangs_after_the_save_and_dies_of_a_second_signal(
    tmp_path: Path,
) -> None:
    async with agentapi_process(tmp_path, "user:hi", ignore_sigterm=True) as agentapi:
        agentapi.signal(signal.SIGTERM)
        await agentapi.wait_journal("saved")
        assert agentapi.proc.returncode is None
        agentapi.signal(signal.SIGINT)
        assert await agentapi.wait_exit() == -signal.SIGINT


async def test_0_11_has_no_state_file_ignores_sigusr1_and_exits_on_sigterm(
    tmp_path: Path,
) -> None:
    home = tmp_path / "refused"
    home.mkdir()
    refused = await run_to_exit(
        "--version",
        "0.11",
        "--journal",
        str(home / "j"),
        "--port-file",
        str(home / "p"),
        "--state-file",
        str(home / "state.json"),
    )
    assert refused == (1, "unknown flag: --state-file")
    async with agentapi_process(
        tmp_path, "user:hi", version="0.11", state_file=False, pid_file=False
    ) as agentapi:
        _code, status = await get(agentapi.url, "/status")
        agentapi.signal(signal.SIGUSR1)
        await agentapi.wait_until(lambda: ("signal", "SIGUSR1") in agentapi.whats(), "SIGUSR1")
        assert (await get(agentapi.url, "/status"))[0] == 200  # still alive
        agentapi.signal(signal.SIGTERM)
        assert await agentapi.wait_exit() == 0
    assert "transport" not in status
    assert not agentapi.pid_file.exists()
    assert [w for w, _ in agentapi.whats() if w != "request"] == ["signal", "signal", "exited"]
    assert agentapi.entries()[1]["ignored"] is True


async def test_0_11_dies_of_sighup(tmp_path: Path) -> None:
    async with agentapi_process(tmp_path, version="0.11", state_file=False) as agentapi:
        assert agentapi.pid_file.read_text() == f"{agentapi.proc.pid}\n"  # asked for
        agentapi.signal(signal.SIGHUP)
        assert await agentapi.wait_exit() == -signal.SIGHUP
    assert agentapi.whats() == [("signal", "SIGHUP")]


async def test_allowed_hosts_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "AGENTAPI_ALLOWED_HOSTS": "agentapi.internal"}
    async with (
        agentapi_process(tmp_path, env=env) as agentapi,
        aiohttp.ClientSession() as http,
        http.get(agentapi.url + "/status") as r,
    ):
        assert r.status == 400
        assert await r.text() == "Invalid host header. Allowed hosts: agentapi.internal\n"

"""Starting tests/fakes/agentapi_process.py as a child process, where a template's agentapi
module leaves its files (`<home>/.agentapi-module/`), and reading its journal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tests.fakes.agentapi_process import read_journal

__all__ = ["AgentapiProcess", "agentapi_process"]

ROOT: Final = Path(__file__).resolve().parents[2]
START_DEADLINE: Final = 20.0
_POLL_S: Final = 0.01  # the journal and the port file are another process's files


@dataclass
class AgentapiProcess:
    proc: asyncio.subprocess.Process
    home: Path
    pid_file: Path
    state_file: Path | None
    journal: Path
    url: str

    def entries(self) -> list[dict[str, Any]]:
        return [e for e in read_journal(self.journal) if e["what"] != "started"]

    def whats(self) -> list[tuple[str, str | None]]:
        """(what, signal name or request path or save reason) for every entry."""
        return [
            (e["what"], e.get("name") or e.get("path") or e.get("reason")) for e in self.entries()
        ]

    def env(self) -> dict[str, str]:
        """What the registry's agentapi module exports to a `run_on_stop` script."""
        env = {"CODER_MCP_AI_AGENTAPI_URL": self.url, "AGENTAPI_PID_FILE": str(self.pid_file)}
        if self.state_file is not None:
            env["AGENTAPI_STATE_FILE"] = str(self.state_file)
        return env

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait_until(
        self, predicate: Callable[[], bool], what: str, timeout: float = START_DEADLINE
    ) -> None:
        """Wait until `predicate()` holds (it reads the process's files), or fail."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await asyncio.sleep(_POLL_S)
        except TimeoutError:
            raise AssertionError(
                f"agentapi: {what} not within {timeout} s; journal {self.whats()}"
            ) from None

    async def wait_journal(self, what: str, count: int = 1) -> None:
        await self.wait_until(
            lambda: sum(e["what"] == what for e in self.entries()) >= count, f"{count}× {what}"
        )

    async def wait_exit(self, timeout: float = START_DEADLINE) -> int:
        async with asyncio.timeout(timeout):
            return await self.proc.wait()


@contextlib.asynccontextmanager
async def agentapi_process(
    tmp_path: Path,
    *messages: str,
    version: str = "0.12",
    state_file: bool = True,
    pid_file: bool = True,
    ignore_sigterm: bool = False,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[AgentapiProcess]:
    """The agentapi stand-in holding `messages` ("role:text"), with the module's pid file
    and state file unless told otherwise; killed afterwards whatever happened."""
    home = tmp_path / ".agentapi-module"
    home.mkdir(exist_ok=True)
    port_file = home / "port"
    pid_path, state_path = home / "agentapi.pid", home / "agentapi-state.json"
    command = [
        sys.executable,
        "-m",
        "tests.fakes.agentapi_process",
        "--version",
        version,
        "--journal",
        str(home / "journal"),
        "--port-file",
        str(port_file),
    ]
    if pid_file:
        command += ["--pid-file", str(pid_path)]
    if state_file:
        command += ["--state-file", str(state_path)]
    for message in messages:
        command += ["--message", message]
    if ignore_sigterm:
        command.append("--ignore-sigterm")
    command += args
    proc = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=env)
    try:
        async with asyncio.timeout(START_DEADLINE):
            while not port_file.exists():
                if proc.returncode is not None:
                    raise AssertionError("the agentapi stand-in exited at start")
                await asyncio.sleep(_POLL_S)
        yield AgentapiProcess(
            proc,
            home,
            pid_path,
            state_path if state_file else None,
            home / "journal",
            f"http://127.0.0.1:{port_file.read_text()}",
        )
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()

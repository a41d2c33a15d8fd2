"""Runs the real `coder-task-sidecar` executable as a child process for end-to-end tests.

Its stderr carries JSON log lines (stderr is not a TTY); they are collected as they arrive
so a test can wait for a named event with a deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from tests.tools import sidecar_command


def base_env(home: Path, **settings: str) -> dict[str, str]:
    """A clean environment: nothing from the test runner's (no NOTIFY_SOCKET, no token)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "SIDECAR_LOG_FORMAT": "json",
    }
    env.update(settings)
    return env


async def end_the_turn(agentapi: FakeAgentapi) -> None:
    """The agent turns stable once the sidecar listens: a turn's end, which is posted
    within a second whatever the interval (the first post of a start is otherwise
    spread over the first interval)."""
    await agentapi.wait_for_subscribers(1, timeout=10)
    agentapi.set_status("stable")


def stored_contents(coder: FakeCoder) -> list[str] | None:
    stored = coder.stored_snapshot()
    return None if stored is None else [m["content"] for m in stored["messages"]]


async def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with `labels` on a sidecar's /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url + "/metrics") as resp,
    ):
        text = await resp.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += float(sample.value)
    return total


class SidecarProcess:
    def __init__(self, env: Mapping[str, str], args: Sequence[str] = ("run",)) -> None:
        self.env = dict(env)
        self.args = list(args)
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.logs: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, *, new_session: bool = False) -> SidecarProcess:
        """Start the process; `new_session` puts it in a session (and process group) of
        its own, as Coder's agent starts a coder_script."""
        self.proc = await asyncio.create_subprocess_exec(
            *sidecar_command(),
            *self.args,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=new_session,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._drain(self.proc.stdout, self.stdout, parse=False)),
            asyncio.create_task(self._drain(self.proc.stderr, self.stderr, parse=True)),
        ]
        return self

    async def _drain(self, stream: asyncio.StreamReader, sink: bytearray, *, parse: bool) -> None:
        while line := await stream.readline():
            sink.extend(line)
            if parse:
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict):
                        self.logs.append(obj)
            self._changed.set()
        self._changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e.get("event") == name]

    async def wait_log(self, name: str, timeout: float = 10.0, count: int = 1) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while len(self.events(name)) < count:
                if (
                    self.proc is not None
                    and self.proc.returncode is not None
                    and all(r.done() for r in self._readers)
                ):
                    raise AssertionError(f"sidecar exited before logging {name}:\n{self.output()}")
                self._changed.clear()
                await self._changed.wait()
        return self.events(name)[count - 1]

    async def wait_output(self, text: str, timeout: float = 10.0) -> None:
        """Wait until stdout holds `text`."""
        async with asyncio.timeout(timeout):
            while text.encode() not in self.stdout:
                if self.proc is not None and all(r.done() for r in self._readers):
                    raise AssertionError(
                        f"sidecar exited before printing {text!r}:\n{self.output()}"
                    )
                self._changed.clear()
                await self._changed.wait()

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await asyncio.gather(*self._readers)
        return code

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as systemd or a container runtime stops it; its exit code."""
        self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def output(self) -> str:
        return self.stdout.decode(errors="replace") + self.stderr.decode(errors="replace")


async def run_to_exit(
    env: Mapping[str, str], args: Sequence[str], timeout: float = 30.0
) -> tuple[int, str, str]:
    proc = SidecarProcess(env, args)
    await proc.start()
    try:
        code = await proc.wait(timeout)
    finally:
        await proc.kill()
    return code, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


__all__ = [
    "SidecarProcess",
    "base_env",
    "end_the_turn",
    "metric",
    "run_to_exit",
    "sidecar_command",
    "stored_contents",
]

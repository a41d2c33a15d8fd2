"""agentapi as a process of its own, for the `stop` hook's tests and benchmark.

Serves the FakeAgentapi on 127.0.0.1 and behaves as agentapi ≥ 0.12.0 does with
`--pid-file` and `--state-file`: writes its pid file at start, saves the state file on
SIGUSR1, and on SIGTERM saves it and exits. Everything it sees (signals, requests) is
appended to a journal as JSON lines, so a test can tell what happened in which order.

    python -m tests.fakes.agentapi_process --pid-file P --state-file S --journal J \\
        --port-file F [--message role:text ...] [--ignore-sigterm]

The module name holds "agentapi", so the process's command line does too, as the real
one's does (`stop` checks it before it signals a pid from a pid file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.agentapi import FakeAgentapi
from tests.fakes.server import serve


class Journal:
    def __init__(self, path: Path) -> None:
        self._path = path

    def write(self, what: str, **fields: Any) -> None:
        entry = {"what": what, "at": time.monotonic(), **fields}
        with self._path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def main(args: argparse.Namespace) -> None:
    journal = Journal(Path(args.journal))
    fake = FakeAgentapi()
    for spec in args.message:
        role, _, text = spec.partition(":")
        fake.add_message(role, text)

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        journal.write("request", method=request.method, path=request.path)
        return await handler(request)

    fake.app.middlewares.insert(0, record)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def save(signame: str) -> None:
        journal.write("signal", name=signame)
        fake.write_state_file(args.state_file)
        journal.write("saved")

    def terminate() -> None:
        save("SIGTERM")
        if not args.ignore_sigterm:
            done.set()

    loop.add_signal_handler(signal.SIGUSR1, save, "SIGUSR1")
    loop.add_signal_handler(signal.SIGTERM, terminate)
    async with serve(fake.app) as server:
        Path(args.pid_file).write_text(f"{os.getpid()}\n", encoding="utf-8")
        temp = Path(args.port_file + ".tmp")
        temp.write_text(str(server.port), encoding="utf-8")
        temp.replace(args.port_file)
        journal.write("started", port=server.port)
        await done.wait()
    journal.write("exited")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--state-file", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--message", action="append", default=[])
    parser.add_argument("--ignore-sigterm", action="store_true")
    asyncio.run(main(parser.parse_args()))

"""agentapi as a process of its own, for the `stop` hook's tests and benchmark.

Serves the FakeAgentapi on 127.0.0.1 and handles files and signals as agentapi's
`cmd/server` does. Everything it sees (signals, requests) and does (saves, skipped saves,
its exit) is appended to a journal as JSON lines, so a test can tell what happened in
which order.

    python -m tests.fakes.agentapi_process --journal J --port-file F [--version V]
        [--pid-file P] [--state-file S] [--save-state BOOL] [--load-state BOOL]
        [--experimental-acp] [--allowed-hosts H,H] [--first-screen TEXT]
        [--message role:text ...] [--send-duration S] [--save-delay S] [--ignore-sigterm]

`--version 0.12` (the default; "main" is the same here) behaves as agentapi ≥ 0.12.0:

* Flags are also read from `AGENTAPI_<FLAG>` (`AGENTAPI_PID_FILE`, `AGENTAPI_STATE_FILE`,
  `AGENTAPI_SAVE_STATE`, …); a flag wins over its variable.
* `--pid-file`: `"<pid>\\n"` written at start, not atomically (mode 0600, the directory
  created 0700), refused when it names a process still running; removed at a graceful
  exit if it still holds this pid.
* `--state-file` turns `--load-state` and `--save-state` on unless they are set. A state
  file present at start is loaded (the agent is ready at once here). `--experimental-acp`
  (the ACP transport) refuses to start with either on: ACP has no state file.
* SIGUSR1 saves the state file only when the conversation changed since the last save
  (journal `save_skipped` otherwise, with the reason); the write goes to `<file>.tmp`,
  fsync, rename, mode 0600. `--save-delay S` makes every save take S seconds more
  between writing the temp file and its fsync.
* The first SIGTERM, SIGINT or SIGHUP saves (if changed), ends the `/events` streams
  cleanly, stops serving and exits 0. The process stops listening for those three
  signals on the first one: a second one kills it with the default action, mid-save if
  the save is still going (leaving `<file>.tmp` behind). SIGUSR1 is ignored from then on.

`--version 0.11` behaves as agentapi 0.11.x: no state file (`--state-file` is an unknown
flag) and no `AGENTAPI_*` variables but `AGENTAPI_ALLOWED_HOSTS`; SIGUSR1 is ignored (a
Go program's default); the first SIGTERM or SIGINT stops the agent and the server and
exits 0 without saving anything, later ones are ignored; SIGHUP kills it. agentapi 0.11
writes no pid file: `--pid-file` here writes one only so a test can find the process.

`--ignore-sigterm` plays an agentapi whose shutdown hangs after its final save (the agent
it runs never exits): it keeps running, and still dies of a second signal.

The module name holds "agentapi", so the process's command line does too, as the real
one's does (`stop` checks it before it signals a pid from a pid file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from sidecar.standins.agentapi import DEFAULT_ALLOWED_HOSTS, VERSIONS, FakeAgentapi
from sidecar.standins.server import serve

__all__ = ["Journal", "read_journal"]

_SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The flags a 0.11 agentapi has among those read from the environment here.
_V0_11_ENV: Final = frozenset(("allowed-hosts",))


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


class StartError(Exception):
    """agentapi refuses to start (it prints the reason and exits 1)."""


@dataclass(frozen=True, slots=True)
class Config:
    version: str
    pid_file: Path | None
    state_file: Path | None
    load_state: bool
    save_state: bool
    acp: bool
    allowed_hosts: tuple[str, ...]


def _setting(args: argparse.Namespace, env: Mapping[str, str], flag: str) -> str | None:
    """A flag's value, else its AGENTAPI_<FLAG> variable (viper's AutomaticEnv)."""
    given: str | None = getattr(args, flag.replace("-", "_"))
    if given is not None:
        return given
    if args.version == "0.11" and flag not in _V0_11_ENV:
        return None
    return env.get("AGENTAPI_" + flag.upper().replace("-", "_"))


def _boolean(text: str, flag: str) -> bool:
    if text.lower() in ("1", "t", "true"):
        return True
    if text.lower() in ("0", "f", "false"):
        return False
    raise StartError(f"invalid argument {text!r} for --{flag}")


def resolve(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """cmd/server's reading of the flags, and its refusals."""
    if args.version == "0.11":
        for flag in ("state-file", "load-state", "save-state", "experimental-acp"):
            if getattr(args, flag.replace("-", "_")) is not None:
                raise StartError(f"unknown flag: --{flag}")
    pid_file = _setting(args, env, "pid-file")
    state_file = _setting(args, env, "state-file") or None
    load, save = _setting(args, env, "load-state"), _setting(args, env, "save-state")
    acp = _boolean(_setting(args, env, "experimental-acp") or "false", "experimental-acp")
    if state_file is None:
        for flag, value in (("load-state", load), ("save-state", save)):
            if value is not None and _boolean(value, flag):
                raise StartError(f"--{flag} requires --state-file to be set")
    load_state = state_file is not None and (load is None or _boolean(load, "load-state"))
    save_state = state_file is not None and (save is None or _boolean(save, "save-state"))
    if acp and (load_state or save_state):
        raise StartError("ACP mode doesn't support state persistence")
    hosts = _setting(args, env, "allowed-hosts")
    allowed = tuple(hosts.replace(",", " ").split()) if hosts else DEFAULT_ALLOWED_HOSTS
    return Config(
        version=args.version,
        pid_file=Path(pid_file) if pid_file else None,
        state_file=Path(state_file) if state_file else None,
        load_state=load_state,
        save_state=save_state,
        acp=acp,
        allowed_hosts=allowed,
    )


def write_pid_file(path: Path) -> None:
    """writePIDFile: refuse a live owner, then write without a temp file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError, ValueError):
        existing = int(path.read_text(encoding="utf-8").strip())
        if existing != os.getpid() and _running(existing):
            raise StartError(
                f"another instance is already running with PID {existing} (PID file: {path})"
            )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")


def remove_pid_file(path: Path) -> None:
    """cleanupPIDFile: only a file that still names this process."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text(encoding="utf-8").strip()) == os.getpid():
            path.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Agentapi:
    """The signal handling of cmd/server around a FakeAgentapi."""

    def __init__(
        self,
        config: Config,
        fake: FakeAgentapi,
        journal: Journal,
        *,
        save_delay: float,
        ignore_sigterm: bool,
    ) -> None:
        self._config = config
        self._fake = fake
        self._journal = journal
        self._save_delay = save_delay
        self._ignore_sigterm = ignore_sigterm
        self._shutting_down = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGUSR1, self._on_sigusr1)
        for sig in _SHUTDOWN_SIGNALS:
            if sig == signal.SIGHUP and self._config.version == "0.11":
                # 0.11 never asks for SIGHUP: Go's default action, death.
                loop.add_signal_handler(sig, self._die_of, loop, sig)
            else:
                loop.add_signal_handler(sig, self._on_shutdown_signal, loop, sig)

    def _on_sigusr1(self) -> None:
        if self._config.version == "0.11" or self._shutting_down:
            self._journal.write("signal", name="SIGUSR1", ignored=True)
            return
        self._journal.write("signal", name="SIGUSR1")
        self._spawn(self._save("SIGUSR1"))

    def _on_shutdown_signal(self, loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
        if self._shutting_down:
            # 0.11 still has the signal registered, but nothing reads it any more.
            self._journal.write("signal", name=sig.name, ignored=True)
            return
        self._journal.write("signal", name=sig.name)
        self._shutting_down = True
        if self._config.version != "0.11":
            # signal.Stop after the first one: the next is Go's default action, death.
            for stopping in _SHUTDOWN_SIGNALS:
                loop.remove_signal_handler(stopping)
                signal.signal(stopping, signal.SIG_DFL)
        self._spawn(self._shut_down())

    def _die_of(self, loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
        self._journal.write("signal", name=sig.name)
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _save(self, source: str) -> None:
        config = self._config
        if config.acp:
            self._journal.write("save_skipped", source=source, reason="acp")
            return
        if config.state_file is None or not config.save_state:
            self._journal.write("save_skipped", source=source, reason="disabled")
            return
        outcome = await self._fake.save_state(config.state_file, delay=self._save_delay)
        if outcome == "saved":
            self._journal.write("saved", source=source)
        else:
            self._journal.write("save_skipped", source=source, reason=outcome)

    async def _shut_down(self) -> None:
        if self._config.version != "0.11":
            await self._save("shutdown")
        if self._ignore_sigterm:
            return  # the agent never exits: neither does agentapi
        self._fake.drop_streams(abort=False)  # the server's stop ends each stream
        self.done.set()


async def run(args: argparse.Namespace, config: Config) -> None:
    journal = Journal(Path(args.journal))
    fake = FakeAgentapi(
        version=config.version,
        transport="acp" if config.acp else "pty",
        message0=args.first_screen is not None and not config.acp,
        allowed_hosts=config.allowed_hosts,
        send_duration=args.send_duration,
    )
    if args.first_screen is not None and not config.acp:
        fake.show_first_screen(args.first_screen)
    if config.state_file is not None and config.load_state:
        if fake.load_state(config.state_file):
            journal.write("loaded", messages=len(fake.messages))
        elif fake.errors:
            journal.write("load_failed", warning=fake.errors[-1].message)
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
    agentapi = Agentapi(
        config, fake, journal, save_delay=args.save_delay, ignore_sigterm=args.ignore_sigterm
    )
    agentapi.install(asyncio.get_running_loop())
    async with serve(fake.app) as server:
        temp = Path(args.port_file + ".tmp")
        temp.write_text(str(server.port), encoding="utf-8")
        temp.replace(args.port_file)
        journal.write("started", port=server.port, pid=os.getpid())
        await agentapi.done.wait()
    if config.pid_file is not None and config.version != "0.11":
        remove_pid_file(config.pid_file)
    journal.write("exited")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--journal", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--version", choices=VERSIONS, default="0.12")
    parser.add_argument("--pid-file")
    parser.add_argument("--state-file")
    parser.add_argument("--load-state")
    parser.add_argument("--save-state")
    parser.add_argument("--experimental-acp", nargs="?", const="true")
    parser.add_argument("--allowed-hosts")
    parser.add_argument("--first-screen")
    parser.add_argument("--message", action="append", default=[])
    parser.add_argument("--send-duration", type=float, default=0.0)
    parser.add_argument("--save-delay", type=float, default=0.0)
    parser.add_argument("--ignore-sigterm", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    try:
        config = resolve(args, os.environ)
        if config.pid_file is not None:
            write_pid_file(config.pid_file)
    except StartError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    asyncio.run(run(args, config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

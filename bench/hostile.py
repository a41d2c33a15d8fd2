"""Hostile peers and stray signals: peak RSS of the real sidecar process per hostile body,
and what each signal does to the daemon, against the package at a git revision.

    python bench/hostile.py [--quick] [--baseline REV] [--case-timeout S]

Every figure is one fresh `python -m sidecar <command>` process (`run`, `snapshot` or
`check`), run from this checkout ("now") and, with --baseline, from the `sidecar` package
at REV exported with `git archive` into a temporary directory (run from there, that
directory first on PYTHONPATH; nothing in the checkout changes). The peers are this
process's loopback servers (bench/_hostile_servers.py, sidecar/standins) for both.

1. Peak RSS (VmHWM, polled from /proc while the process runs) per hostile body: from
   Coder, the snapshot POST's error answer; from agentapi, /messages, /status and /events.
   `run` gets SIGTERM once the hostile exchange is over (or at the case's deadline);
   `snapshot` and `check` run to their end. A process past 2 GB is killed.
2. Signals: the daemon, after its first snapshot was stored and a newer message arrived,
   gets one signal; then its exit, whether the newest message reached Coder, its logs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import _common  # first: puts the repo root on sys.path
import _hostile_servers as hs
import aiohttp

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import serve

BOUND_MB = 150.0  # what the product promises, whatever a peer sends
CAP_MB = 2048.0  # the machine's safety: a process past this is killed
STOP_WAIT = 15.0  # SIGTERM → exit, with SIDECAR_SHUTDOWN_TIMEOUT=3
_LINE_CAP = 1 << 20  # a log line longer than this is not kept (a body echoed in full)
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))\b")
_NOTABLE = ("snapshot.flush_requested", "signal.ignored", "shutdown.requested", "task.crashed")


# --- one sidecar process, watched -----------------------------------------------------------


def _proc_kb(pid: int) -> dict[str, float]:
    try:
        with open(f"/proc/{pid}/status") as status:
            pairs = (line.partition(":") for line in status)
            return {k: float(v.split()[0]) for k, _, v in pairs if k in ("VmHWM", "VmRSS")}
    except OSError:
        return {}


def _exit(code: int | None) -> str:
    if code is None:
        return "—"
    return f"{code} ({signal.Signals(-code).name})" if code < 0 else str(code)


@dataclass
class Ran:
    peak_mb: float
    code: int | None
    outcome: str
    traceback: bool


@dataclass
class Sidecar:
    """A sidecar child: its JSON log events, its other lines (the newest 40), a scan for
    tracebacks over all it writes, and its peak RSS from a thread that also enforces
    CAP_MB (a thread: an event loop busy writing a hostile body must not delay the kill)."""

    tree: Path
    args: list[str]
    env: dict[str, str]
    logs: list[dict[str, object]] = field(default_factory=list)
    raw: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    traceback: bool = False
    peak_kb: float = 0.0
    capped: bool = False
    proc: asyncio.subprocess.Process | None = None
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> Sidecar:
        pipe = subprocess.PIPE
        self.proc = proc = _common.track(
            await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "sidecar", *self.args),
                cwd=self.tree,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=pipe,
                stderr=pipe,
            )
        )
        streams = [s for s in (proc.stdout, proc.stderr) if s is not None]
        self._readers = [asyncio.create_task(self._drain(s)) for s in streams]
        threading.Thread(target=self._watch, args=(proc.pid,), daemon=True).start()
        return self

    def _watch(self, pid: int) -> None:
        while not self.exited() and (kb := _proc_kb(pid)):  # a zombie has no memory figures
            self.peak_kb = max(self.peak_kb, kb.get("VmHWM", 0.0))
            if kb.get("VmRSS", 0.0) > CAP_MB * 1024 and not self.capped:
                self.capped = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        pending, tail = b"", b""
        while chunk := await stream.read(1 << 16):
            self.traceback = self.traceback or b"Traceback" in tail + chunk
            tail = chunk[-16:]
            *lines, pending = (pending + chunk).split(b"\n")
            pending = pending if len(pending) < _LINE_CAP else b""
            for line in lines:
                self._line(line)
        self._line(pending)

    def _line(self, line: bytes) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            if line.strip():
                self.raw.append(line[:300].decode(errors="replace"))
            return
        if isinstance(obj, dict):
            self.logs.append(obj)

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in self.logs if e.get("event") == name]

    def exited(self) -> bool:
        return self.proc is None or self.proc.returncode is not None

    async def wait(self, timeout: float) -> bool:
        assert self.proc is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.proc.wait()
                await asyncio.gather(*self._readers)
        return self.exited()

    async def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate` holds or the process exits; whether it holds."""
        with contextlib.suppress(TimeoutError):
            await _common.wait_until(lambda: predicate() or self.exited(), timeout, "", 0.02)
        return predicate()

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    def code(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def exception(self) -> str:
        """The exception named by the newest traceback, JSON-logged or printed raw."""
        texts = [str(e["exception"]) for e in self.logs if "exception" in e] + ["\n".join(self.raw)]
        for line in reversed("\n".join(texts).splitlines()):
            if m := _EXC.match(line.strip()):
                return m.group(1).rsplit(".", 1)[-1]
        return "a"

    def result(self, *, killed_after: float | None = None) -> Ran:
        if self.capped:
            outcome = f"> {CAP_MB / 1024:g} GB (killed)"
        elif killed_after is not None:
            outcome = f"killed after {killed_after:.0f} s"
        elif self.traceback:
            outcome = f"{self.exception()} traceback"
        else:
            # What the logs say happened: the warnings, by name, and the end's verdict.
            said = collections.Counter(
                str(e.get("event")) for e in self.logs if e.get("level") in ("warning", "error")
            )
            parts = [f"exit {self.code()}", *(f"{k} ×{n}" if n > 1 else k for k, n in said.items())]
            parts += [line.strip() for line in self.raw if "[FAIL]" in line][:1]
            parts += [f"snapshot {e.get('snapshot')}" for e in self.events("shutdown.complete")]
            outcome = " · ".join(parts)
        return Ran(self.peak_kb / 1024, self.code(), outcome, self.traceback)


def environment(tree: Path, home: Path, peers: hs.Peers, **extra: str) -> dict[str, str]:
    (home / "state").mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(tree),
        "CODER_AGENT_URL": peers.coder,
        "CODER_AGENT_TOKEN": peers.token,
        "CODER_TASK_ID": peers.task,
        "CODER_MCP_AI_AGENTAPI_URL": peers.agentapi,
        "SIDECAR_STATE_DIR": str(home / "state"),
        "SIDECAR_SNAPSHOT_INTERVAL": "1",
        "SIDECAR_SHUTDOWN_TIMEOUT": "3",
        "SIDECAR_HTTP_TIMEOUT": "1",  # the least both versions accept
        "SIDECAR_LOG_FORMAT": "json",
        **extra,
    }


# --- table 1: hostile bodies --------------------------------------------------------------


async def hostile_run(tree: Path, command: str, setup: hs.Setup, timeout: float) -> Ran:
    with tempfile.TemporaryDirectory(prefix="hostile-home-") as home:
        async with setup() as peers:
            sidecar = await Sidecar(tree, [command], environment(tree, Path(home), peers)).start()
            helper = asyncio.create_task(peers.after_start()) if peers.after_start else None
            started = time.monotonic()
            try:
                if command != "run":
                    done = await sidecar.wait(timeout)
                    return sidecar.result(killed_after=None if done else timeout)
                over = await sidecar.until(peers.exchanged, timeout)
                sidecar.signal(signal.SIGTERM)
                if not await sidecar.wait(STOP_WAIT):
                    return sidecar.result(killed_after=time.monotonic() - started)
                ran = sidecar.result()
                if not over and not sidecar.capped:
                    ran.outcome += f" (exchange not over in {timeout:g} s)"
                return ran
            finally:
                if helper is not None:
                    helper.cancel()
                    await asyncio.gather(helper, return_exceptions=True)
                sidecar.signal(signal.SIGKILL)
                await sidecar.wait(10)


# --- table 2: signals ---------------------------------------------------------------------

SIGNALS = tuple(
    signal.Signals[f"SIG{n}"] for n in ("USR1", "USR2", "ALRM", "HUP", "TERM", "INT", "PIPE")
)
FIRST, NEWEST = "Looking at the tokenizer.", "Fixed: the tokenizer keeps the last line now."


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


async def _updates(port: object) -> float:
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
    return _common.prom_value(text, "sidecar_agentapi_events_total", type="message_update")


async def _ready_for_a_signal(sidecar: Sidecar, fake: FakeAgentapi, coder: FakeCoder) -> bool:
    """The first snapshot is stored and a newer message was read, not yet posted; whether
    Coder holds the newer one already (the signal's column is void then)."""
    if not await sidecar.until(lambda: bool(sidecar.events("health.listening")), 15):
        raise TimeoutError("no health.listening")
    port = sidecar.events("health.listening")[0]["port"]
    await fake.wait_for_subscribers(1, timeout=15)
    # A turn's end is posted at once, whatever the interval: the first snapshot.
    fake.set_status("running")
    fake.add_message("agent", FIRST)
    fake.set_status("stable")
    await coder.wait_for(lambda: hs.holds(coder, FIRST), 15)
    seen = await _updates(port)
    fake.add_message("agent", NEWEST)
    async with asyncio.timeout(15):
        while await _updates(port) <= seen:
            await asyncio.sleep(0.02)
    await asyncio.sleep(1.5)  # past a prompt post: from here, only a signal posts
    return hs.holds(coder, NEWEST)


async def signal_run(tree: Path, sig: signal.Signals) -> list[str]:
    """[after the signal, newest at Coder, logged, traceback] for one fresh daemon."""
    fake, coder = FakeAgentapi(), FakeCoder()
    fake.add_message("user", "fix the parser")
    with tempfile.TemporaryDirectory(prefix="hostile-home-") as home:
        async with serve(fake.app) as agentapi, serve(coder.app) as server:
            peers = hs.Peers(
                server.url, agentapi.url, coder.token, str(coder.task_id), lambda: True
            )
            env = environment(
                tree,
                Path(home),
                peers,
                SIDECAR_SNAPSHOT_INTERVAL="3600",
                SIDECAR_HTTP_ADDR="127.0.0.1:0",
            )
            sidecar = await Sidecar(tree, ["run"], env).start()
            try:
                try:
                    already = await _ready_for_a_signal(sidecar, fake, coder)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    # A daemon that never got this far is a finding, not the bench's crash.
                    return [f"never ready: {exc}"[:60], "—", "—", _yes(sidecar.traceback)]
                mark = len(sidecar.logs)
                sidecar.signal(sig)
                flushed = sig is signal.SIGUSR1 and await sidecar.until(
                    lambda: hs.holds(coder, NEWEST), 3
                )
                ended = flushed is False and await sidecar.wait(3)
                notable = {
                    str(e["event"]) for e in sidecar.logs[mark:] if e.get("event") in _NOTABLE
                }
                newest = "yes" if hs.holds(coder, NEWEST) else "no"
                if ended:
                    effect = f"exit {_exit(sidecar.code())}"
                else:
                    sidecar.signal(signal.SIGTERM)
                    await sidecar.wait(STOP_WAIT)
                    effect = f"still running; SIGTERM → exit {_exit(sidecar.code())}"
                    if newest == "no" and hs.holds(coder, NEWEST):
                        newest = "no (yes after SIGTERM)"
                newest += " (already before the signal)" if already else ""
                return [effect, newest, ", ".join(sorted(notable)) or "—", _yes(sidecar.traceback)]
            finally:
                sidecar.signal(signal.SIGKILL)
                await sidecar.wait(10)


# --- the benchmark ------------------------------------------------------------------------


@contextlib.contextmanager
def trees(baseline: str | None) -> Iterator[dict[str, Path]]:
    """{label: tree}, the baseline's first; each checked to import its own `sidecar`."""
    found = {"now": _common.REPO}
    with tempfile.TemporaryDirectory(prefix="hostile-base-") as tmp:
        if baseline:
            archive = [
                "git",
                "-C",
                str(_common.REPO),
                "archive",
                "--format=tar",
                baseline,
                "sidecar",
            ]
            blob = subprocess.run(archive, check=True, capture_output=True).stdout
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                tar.extractall(tmp, filter="data")
            found = {baseline: Path(tmp), **found}
        for name, tree in found.items():
            probe = [sys.executable, "-c", "import sidecar; print(sidecar.__file__)"]
            env = {**os.environ, "PYTHONPATH": str(tree)}
            out = subprocess.run(
                probe, cwd=tree, env=env, check=True, capture_output=True, text=True
            )
            if not out.stdout.startswith(str(tree)):
                raise RuntimeError(f"{name}: the child imports {out.stdout.strip()}, not {tree}")
        yield found


async def main_async(quick: bool, baseline: str | None, timeout: float) -> int:
    sizes = hs.Sizes(128, 64, 30_000, 2_000_000) if quick else hs.Sizes()
    print(_common.machine_line())
    _common.note(
        f"bound {BOUND_MB:g} MB (VmHWM of the sidecar process); a process past {CAP_MB:g} MB is "
        f"killed; `run` gets SIGTERM once the hostile exchange is over, at most after {timeout:g} s"
    )
    if quick:
        _common.note(
            "quick: sizes shrunk (Coder bodies 128 MiB, /messages 64 MB, 30,000 names, "
            "replay 10 × 2 MB); the default runs the issue's sizes"
        )
    ok = True
    with trees(baseline) as found:
        labels, rows = list(found), []
        for name, commands, setup in hs.cases(sizes):
            for command in commands:
                ran = {k: await hostile_run(t, command, setup, timeout) for k, t in found.items()}
                now = ran["now"]
                ok = ok and now.peak_mb < BOUND_MB and not now.traceback
                cells = [
                    c
                    for r in ran.values()
                    for c in (_common.fmt(r.peak_mb), _exit(r.code), r.outcome)
                ]
                ratio = [_common.ratio(now.peak_mb, ran[labels[0]].peak_mb)] if baseline else []
                rows.append(
                    [name, command, *cells, *ratio, _common.verdict(now.peak_mb < BOUND_MB)]
                )
        heads = [h for k in labels for h in (f"{k} peak MB", f"{k} exit", f"{k} outcome")]
        ratio_head = [f"now / {baseline}"] if baseline else []
        _common.table(
            "Peak RSS per hostile body (VmHWM of the sidecar process)",
            ["case", "command", *heads, *ratio_head, f"now < {BOUND_MB:g} MB"],
            rows,
        )
        rows = []
        for sig in SIGNALS:
            got = {k: await signal_run(t, sig) for k, t in found.items()}
            rows.append([sig.name, *(cell for k in labels for cell in got[k])])
        what = ("after the signal", "newest at Coder", "logged", "traceback")
        heads = [f"{k} {h}" for k in labels for h in what]
        _common.table(
            "Signals to the daemon (after its first snapshot and a newer message)",
            ["signal", *heads],
            rows,
        )
    _common.note("`stop` killed while it waits: not measured (bench/shutdown.py times `stop`).")
    return 0 if ok else 1


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--baseline", default=None, help="git revision to run side by side")
    p.add_argument("--case-timeout", type=float, default=0.0, help="deadline of one process, s")
    args = p.parse_args()
    timeout = args.case_timeout or (25.0 if args.quick else 45.0)
    _common.run(lambda: main_async(args.quick, args.baseline, timeout), timeout=3600)


if __name__ == "__main__":
    main()

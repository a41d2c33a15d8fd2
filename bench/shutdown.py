"""Shutdown, side by side: how fast the final snapshot is stored, and whether it is.

    python bench/shutdown.py [--quick] [--repeat N]

For three conversations (10 ASCII messages of 30 KiB; one 70,000-character message; one
message of 40,000 '€') it measures, against the loopback fakes (sidecar/standins):

  (a) daemon   the real `coder-task-sidecar run` process: settle (its first snapshot is
               stored), change the conversation, wait until /metrics counts the event,
               SIGTERM, and time SIGTERM → the fake Coder stored the newest body;
  (b) oneshot  `coder-task-sidecar snapshot`: process start → stored;
  (c) baseline bench/baseline/shutdown-snapshot.sh (curl + jq, today's shutdown hook):
               process start → stored.

Then the `run_on_stop` hook, with agentapi as a process of its own
(tests/fakes/agentapi_process.py: a pid file, its state file saved on SIGUSR1 and SIGTERM
when the conversation changed since its last save, and it exits on SIGTERM), each timed
start → stored and start → exit:

  (d) registry bench/baseline/agentapi-shutdown.sh, the steps of the Coder registry's
               agentapi module `run_on_stop` script, which templates run today: SIGUSR1,
               `sleep 1`, fetch /messages, trim with jq, post; SIGTERM agentapi and check
               once a second until it is gone;
  (e) stop, daemon running   `coder-task-sidecar stop` with AGENTAPI_PID_FILE and
               AGENTAPI_STATE_FILE set, beside a settled daemon (`run`, interval 600 s)
               that holds the final words unposted, as in (a). The daemon reads an
               in-process fake agentapi, so the words can arrive after its first post; the
               agentapi process that `stop` signals holds the same final conversation;
  (f) stop, no daemon        the same without a daemon: `stop` reads agentapi and posts.

All three run in two variants of agentapi's state, persistence on in both:

  new to save          agentapi holds the conversation and has not saved it (no state
                       file yet): its SIGUSR1 writes the state file;
  nothing new to save  agentapi loaded the conversation from its state file at start and
                       nothing happened since: it skips the SIGUSR1 save (and the one at
                       its exit), so the state file is never rewritten.

"stored" means the POST was answered 204 and the logs read-back
(GET /api/v2/tasks/me/{task}/logs) answers 200. Ratios are against the curl + jq baseline
in the first table and against the registry script (same variant) in the second. Aims:
the daemon stores ≤ 100 ms after SIGTERM; with a daemon running, in each variant `stop`
stores ≤ 100 ms and exits ≤ 1 s after it starts (every run), and is ≥ 5× faster
(start → exit) than the registry script on every conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import _common  # first: puts the repo root on sys.path
import aiohttp

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import serve
from tests.e2e.harness import SidecarProcess, base_env, end_the_turn, sidecar_command
from tests.fakes.agentapi_process import read_journal

SCRIPT = _common.BENCH / "baseline" / "shutdown-snapshot.sh"
REGISTRY_SCRIPT = _common.BENCH / "baseline" / "agentapi-shutdown.sh"
AIM_MS = 100.0
STOP_EXIT_AIM_MS = 1000.0  # `stop` (daemon running), start → exit
STOP_SPEEDUP_AIM = 5.0  # `stop` (daemon running) vs the registry script, start → exit
STEP_TIMEOUT = 20.0


# --- the conversations ------------------------------------------------------------------


def ascii_text(chars: int, seed: int) -> str:
    """Terminal-like ASCII: 79-character numbered lines, distinct per seed."""
    lines: list[str] = []
    total = 0
    n = 0
    while total < chars:
        line = f"[{seed:02d}:{n:05d}] " + "lorem ipsum dolor sit amet consectetur " * 2
        line = line[:79] + "\n"
        lines.append(line)
        total += len(line)
        n += 1
    return "".join(lines)[:chars]


@dataclass(frozen=True)
class Case:
    name: str
    final: list[tuple[str, str]]  # (role, content)
    # How the daemon run gets there: the settled conversation, then one change.
    settle: list[tuple[str, str]]
    change: Callable[[FakeAgentapi], object]  # what it returns is not used


def cases() -> list[Case]:
    ten = [("user" if i % 2 == 0 else "agent", ascii_text(30 * 1024, i)) for i in range(10)]
    long = ascii_text(70_000, 42)
    euro = "€" * 40_000
    return [
        Case(
            "10 × 30 KiB ASCII",
            ten,
            ten[:9],
            lambda a: a.add_message(ten[9][0], ten[9][1]),
        ),
        Case(
            "1 × 70,000 chars",
            [("agent", long)],
            [("agent", long[:1000])],
            lambda a: a.update_last(long),
        ),
        Case(
            "1 × 40,000 '€'",
            [("agent", euro)],
            [("agent", euro[:1000])],
            lambda a: a.update_last(euro),
        ),
    ]


# --- one run ----------------------------------------------------------------------------


@dataclass
class Run:
    to_stored_ms: float | None = None  # None: nothing newest was stored
    to_exit_ms: float | None = None
    exit_code: int | None = None
    post_status: int | None = None
    readback: int | None = None
    body_bytes: int | None = None
    messages: int | None = None  # messages in the last body posted
    kept: int | None = None  # characters of the newest message it carried
    # The stop hook (from agentapi's journal): start → SIGUSR1 → SIGTERM → exit, in ms
    phases: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.post_status == 204 and self.readback == 200


SIDECAR_MARKER = re.compile(r"\[… (\d+) earlier characters cut by coder-task-sidecar …\]\n")
BASELINE_MARKER = "[... earlier output truncated ...]\n"
REGISTRY_MARKER = "[...content truncated, showing last 56KB...]\n\n"


def kept_chars(stored: str, final: str) -> int | None:
    """How many characters of `final` the stored content carries (a tail behind a cut
    marker, or all of it); None when it is not `final` or a tail of it."""
    if stored == final:
        return len(final)
    m = SIDECAR_MARKER.match(stored)
    if m is not None:
        tail = stored[m.end() :]
        ok = int(m.group(1)) + len(tail) == len(final) and final.endswith(tail)
        return len(tail) if ok else None
    for marker in (BASELINE_MARKER, REGISTRY_MARKER):
        if stored.startswith(marker):
            tail = stored[len(marker) :]
            return len(tail) if final.endswith(tail) and tail else None
    return None


def newest_stored(coder: FakeCoder, final: list[tuple[str, str]], accepted_before: int) -> bool:
    """The fake accepted a new snapshot whose newest message is the final conversation's
    newest, whole or as a marked tail (not an earlier version of it)."""
    if len(coder.accepted_snapshot_posts()) <= accepted_before:
        return False
    stored = coder.stored_snapshot()
    if not stored or not stored["messages"]:
        return False
    last = stored["messages"][-1]
    role, content = final[-1]
    return (
        last.get("id") == len(final) - 1
        and last.get("role") == role
        and isinstance(last.get("content"), str)
        and kept_chars(last["content"], content) is not None
    )


def stored_ms(
    coder: FakeCoder, final: list[tuple[str, str]], accepted_before: int, started: float
) -> float | None:
    """ms from `started` to the store of the newest body. The store time is the arrival of
    the accepted request: the fake's handler stores it without awaiting anything."""
    if not newest_stored(coder, final, accepted_before):
        return None
    return (coder.accepted_snapshot_posts()[-1].at - started) * 1000


async def readback(session: aiohttp.ClientSession, coder_url: str, coder: FakeCoder) -> int:
    """The logs read-back's status; 0 when it answers 200 without a snapshot."""
    url = f"{coder_url}/api/v2/tasks/me/{coder.task_id}/logs"
    async with session.get(url) as resp:
        body = await resp.read()
        if resp.status == 200 and not json.loads(body).get("snapshot"):
            return 0
        return resp.status


def finish(run: Run, coder: FakeCoder, final: list[tuple[str, str]]) -> None:
    posts = coder.snapshot_posts()
    if posts:
        run.post_status = posts[-1].status
        # the fake reads at most 65,537 bytes of a body: the header tells the real size
        length = posts[-1].headers.get("Content-Length")
        run.body_bytes = int(length) if length else len(posts[-1].body)
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            messages = posts[-1].json()["messages"]
            run.messages = len(messages)
            run.kept = kept_chars(messages[-1]["content"], final[-1][1])


def env_for(
    home: Path, agentapi_url: str, coder_url: str, coder: FakeCoder, **extra: str
) -> dict[str, str]:
    return base_env(
        home,
        CODER_AGENT_URL=coder_url,
        CODER_AGENT_TOKEN=coder.token,
        CODER_TASK_ID=str(coder.task_id),
        CODER_MCP_AI_AGENTAPI_URL=agentapi_url,
        CODER_MCP_APP_STATUS_SLUG="claude-code",
        SIDECAR_STATE_DIR=str(home / "state"),
        SIDECAR_SHUTDOWN_TIMEOUT="10",
        **extra,
    )


async def events_seen(session: aiohttp.ClientSession, http: str) -> float:
    async with session.get(http + "/metrics") as resp:
        text = await resp.text()
    return _common.prom_value(text, "sidecar_agentapi_events_total", type="message_update")


async def time_to_stored_and_exit(
    run: Run,
    proc: SidecarProcess,
    coder: FakeCoder,
    final: list[tuple[str, str]],
    accepted_before: int,
    started: float,
) -> None:
    """Record when the newest conversation was stored and when the process ended."""
    with contextlib.suppress(TimeoutError):
        await coder.wait_for(lambda: newest_stored(coder, final, accepted_before), STEP_TIMEOUT)
    run.to_stored_ms = stored_ms(coder, final, accepted_before, started)
    run.exit_code = await proc.wait(STEP_TIMEOUT)
    run.to_exit_ms = (time.monotonic() - started) * 1000


@contextlib.asynccontextmanager
async def fakes(
    run: Run,
    case: Case,
    seed: list[tuple[str, str]],
    session: aiohttp.ClientSession,
) -> AsyncIterator[tuple[FakeAgentapi, FakeCoder, str, str]]:
    """Both fakes served, agentapi holding `seed`; afterwards, what Coder stored is judged
    against the case's final conversation and read back."""
    agentapi, coder = FakeAgentapi(), FakeCoder()
    for role, content in seed:
        agentapi.add_message(role, content)
    async with serve(agentapi.app) as a_srv, serve(coder.app) as c_srv:
        yield agentapi, coder, a_srv.url, c_srv.url
        finish(run, coder, case.final)
        run.readback = await readback(session, c_srv.url, coder)


async def settle_daemon(
    run: Run,
    proc: SidecarProcess,
    case: Case,
    agentapi: FakeAgentapi,
    coder: FakeCoder,
    session: aiohttp.ClientSession,
) -> int:
    """Start the daemon (`run`, interval 600 s) and bring it where a shutdown finds it: its
    first snapshot stored, then the case's change received and not posted. Returns the
    accepted POSTs so far."""
    # The first post of a start is spread over the interval; a turn that ends is posted
    # within a second: the settled conversation arrives as a turn that ends.
    agentapi.set_status("running")
    await proc.start()
    assert proc.proc is not None
    _common.track(proc.proc)
    await end_the_turn(agentapi)
    await coder.wait_for(lambda: bool(coder.accepted_snapshot_posts()), STEP_TIMEOUT)
    listening = await proc.wait_log("health.listening", STEP_TIMEOUT)
    http = f"http://127.0.0.1:{listening['port']}"
    seen = await events_seen(session, http)
    case.change(agentapi)
    async with asyncio.timeout(STEP_TIMEOUT):
        while await events_seen(session, http) < seen + 1:
            await asyncio.sleep(0.005)
    if newest_stored(coder, case.final, 0):
        run.notes.append("newest stored before the shutdown (not a shutdown figure)")
    return len(coder.accepted_snapshot_posts())


def daemon_env(
    home: Path, agentapi_url: str, coder_url: str, coder: FakeCoder, **extra: str
) -> dict[str, str]:
    return env_for(
        home,
        agentapi_url,
        coder_url,
        coder,
        SIDECAR_SNAPSHOT_INTERVAL="600",  # after settling only a shutdown can post
        SIDECAR_HTTP_ADDR="127.0.0.1:0",
        SIDECAR_AGENTAPI_PROBE_INTERVAL="5",
        **extra,
    )


async def run_daemon(case: Case, home: Path, session: aiohttp.ClientSession) -> Run:
    run = Run()
    async with fakes(run, case, case.settle, session) as (agentapi, coder, a_url, c_url):
        proc = SidecarProcess(daemon_env(home, a_url, c_url, coder))
        try:
            accepted_before = await settle_daemon(run, proc, case, agentapi, coder, session)
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            await time_to_stored_and_exit(run, proc, coder, case.final, accepted_before, started)
        finally:
            await proc.kill()
    return run


async def run_oneshot(case: Case, home: Path, session: aiohttp.ClientSession) -> Run:
    run = Run()
    async with fakes(run, case, case.final, session) as (_, coder, a_url, c_url):
        env = env_for(home, a_url, c_url, coder)
        proc = SidecarProcess(env, ["snapshot"])
        started = time.monotonic()
        await proc.start()
        assert proc.proc is not None
        _common.track(proc.proc)
        try:
            await time_to_stored_and_exit(run, proc, coder, case.final, 0, started)
        finally:
            await proc.kill()
    return run


async def run_script(
    script: Path, run: Run, env: dict[str, str], coder: FakeCoder, final: list[tuple[str, str]]
) -> None:
    """Run a shell baseline to its end: start → stored, start → exit, and its last error
    line as a note when it failed or stored nothing."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _common.track(proc)
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            out, err = await proc.communicate()
        run.exit_code = proc.returncode
        run.to_exit_ms = (time.monotonic() - started) * 1000
        run.to_stored_ms = stored_ms(coder, final, 0, started)
        if run.exit_code or run.to_stored_ms is None:
            lines = err.decode(errors="replace").strip().splitlines()
            lines = lines or out.decode(errors="replace").strip().splitlines()
            run.notes.append(lines[-1][:80] if lines else f"exit {run.exit_code}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_baseline(case: Case, home: Path, session: aiohttp.ClientSession) -> Run:
    run = Run()
    async with fakes(run, case, case.final, session) as (_, coder, a_url, c_url):
        await run_script(SCRIPT, run, env_for(home, a_url, c_url, coder), coder, case.final)
    return run


# --- the stop hook ------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """What agentapi has to save when the hook starts (persistence is on in both)."""

    name: str
    # agentapi loaded the conversation from its state file at start and nothing changed
    # since: it skips every save, and the state file is never rewritten.
    loaded: bool


VARIANTS = (
    Variant("new to save", loaded=False),
    Variant("nothing new to save", loaded=True),
)


@dataclass(frozen=True)
class AgentapiProcess:
    """tests/fakes/agentapi_process.py running: what a template's agentapi module leaves."""

    proc: asyncio.subprocess.Process
    pid_file: Path
    state_file: Path
    journal: Path
    url: str
    loaded: bool

    def env(self) -> dict[str, str]:
        return {
            "AGENTAPI_PID_FILE": str(self.pid_file),
            "AGENTAPI_STATE_FILE": str(self.state_file),
        }

    async def check(self, run: Run, started: float) -> None:
        """Notes unless it got SIGUSR1, saved (or skipped every save, when it had nothing
        new) and then exited on SIGTERM (the hook waited for that: here a moment only lets
        asyncio collect the status); the hook's phases from when agentapi got its signals
        (its journal has this clock)."""
        journal = read_journal(self.journal)
        seen = [(e["what"], e.get("name")) for e in journal]
        at: dict[str, float] = {}
        for e in journal:
            if e["what"] == "signal" and not e.get("ignored"):
                at.setdefault(e["name"], float(e["at"]))
        saved = any(e["what"] == "saved" for e in journal)
        if self.loaded and saved:
            run.notes.append("agentapi saved: it had something new")
        elif not self.loaded and not saved:
            run.notes.append("agentapi saved nothing")
        if "SIGUSR1" not in at:
            run.notes.append("agentapi got no SIGUSR1")
        elif "SIGTERM" in at and run.to_exit_ms is not None:
            usr1, term = (at["SIGUSR1"] - started) * 1000, (at["SIGTERM"] - started) * 1000
            run.phases = (usr1, term - usr1, run.to_exit_ms - term)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self.proc.wait()
        if ("exited", None) not in seen or self.proc.returncode is None:
            run.notes.append("agentapi still running after the hook")


@contextlib.asynccontextmanager
async def agentapi_process(
    home: Path, messages: list[tuple[str, str]], variant: Variant
) -> AsyncIterator[AgentapiProcess]:
    """agentapi with a pid file and a state file, holding `messages` (loaded from that
    file when the variant says so); killed afterwards whatever happened. It is started
    (and has written its port) before any timing starts."""
    where = home / ".agentapi-module"
    where.mkdir()
    port_file = where / "port"
    state_file = where / "agentapi-state.json"
    journal = where / "journal"
    args = [
        sys.executable,
        "-m",
        "tests.fakes.agentapi_process",
        "--pid-file",
        str(where / "agentapi.pid"),
        "--state-file",
        str(state_file),
        "--journal",
        str(journal),
        "--port-file",
        str(port_file),
    ]
    if variant.loaded:
        saved = FakeAgentapi()
        for role, content in messages:
            saved.add_message(role, content)
        saved.write_state_file(state_file)
    else:
        for role, content in messages:
            args += ["--message", f"{role}:{content}"]
    with (where / "output").open("wb") as output:
        proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=_common.REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    _common.track(proc)
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            while not port_file.exists():
                if proc.returncode is not None:
                    raise RuntimeError(f"the agentapi process exited at start; see {where}/output")
                await asyncio.sleep(0.01)
        # It journals the load before it listens.
        if variant.loaded and not any(e["what"] == "loaded" for e in read_journal(journal)):
            raise RuntimeError(f"the agentapi process did not load {state_file}")
        yield AgentapiProcess(
            proc,
            where / "agentapi.pid",
            state_file,
            journal,
            f"http://127.0.0.1:{port_file.read_text(encoding='utf-8')}",
            variant.loaded,
        )
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def check_stop_logs(run: Run, proc: SidecarProcess, *, daemon: bool, variant: Variant) -> None:
    """Notes unless `stop` took the path the row is about, step by step: the daemon's
    flush (or its own post), agentapi stopped, and then (the state file's rewrite is told
    once agentapi has exited) whether agentapi saved; and a note for each warning or
    error it logged."""
    events = [str(e.get("event")) for e in proc.logs]
    expected = [
        "stop.daemon_stopped" if daemon else "stop.no_daemon",
        "stop.agentapi_stopped",
        "stop.agentapi_save_skipped" if variant.loaded else "stop.agentapi_saved",
    ]
    after = 0
    for name in expected:
        if name not in events:
            run.notes.append(f"no {name} logged")
        elif name not in events[after:]:
            run.notes.append(f"{name} logged out of order")
        else:
            after = events.index(name, after) + 1
    run.notes.extend(
        f"{e.get('event')} ({e['level']})"
        for e in proc.logs
        if e.get("level") in ("warning", "error")
    )


async def run_registry(
    case: Case, variant: Variant, home: Path, session: aiohttp.ClientSession
) -> Run:
    run = Run()
    async with (
        fakes(run, case, case.final, session) as (_, coder, _a_url, c_url),
        agentapi_process(home, case.final, variant) as agentapi,
    ):
        env = env_for(home, agentapi.url, c_url, coder, **agentapi.env())
        started = time.monotonic()
        await run_script(REGISTRY_SCRIPT, run, env, coder, case.final)
        await agentapi.check(run, started)
    return run


async def run_stop_daemon(
    case: Case, variant: Variant, home: Path, session: aiohttp.ClientSession
) -> Run:
    run = Run()
    async with (
        fakes(run, case, case.settle, session) as (fake, coder, a_url, c_url),
        agentapi_process(home, case.final, variant) as agentapi,
    ):
        env = daemon_env(home, a_url, c_url, coder, **agentapi.env())
        daemon = SidecarProcess(env)
        stop = SidecarProcess(env, ["stop"])
        started = time.monotonic()
        try:
            accepted_before = await settle_daemon(run, daemon, case, fake, coder, session)
            started = time.monotonic()
            await stop.start()
            assert stop.proc is not None
            _common.track(stop.proc)
            await stop_to_exit(run, stop, coder, case.final, accepted_before, started)
            # `stop` saw it exit; this only collects its status.
            code = await daemon.wait(STEP_TIMEOUT)
            if code != 0:
                run.notes.append(f"daemon exit {code}")
        finally:
            await stop.kill()
            await daemon.kill()
        check_stop_logs(run, stop, daemon=True, variant=variant)
        await agentapi.check(run, started)
    return run


async def run_stop_alone(
    case: Case, variant: Variant, home: Path, session: aiohttp.ClientSession
) -> Run:
    run = Run()
    async with (
        fakes(run, case, case.final, session) as (_, coder, _a_url, c_url),
        agentapi_process(home, case.final, variant) as agentapi,
    ):
        env = env_for(home, agentapi.url, c_url, coder, **agentapi.env())
        stop = SidecarProcess(env, ["stop"])
        started = time.monotonic()
        try:
            await stop.start()
            assert stop.proc is not None
            _common.track(stop.proc)
            await stop_to_exit(run, stop, coder, case.final, 0, started)
        finally:
            await stop.kill()
        check_stop_logs(run, stop, daemon=False, variant=variant)
        await agentapi.check(run, started)
    return run


async def stop_to_exit(
    run: Run,
    proc: SidecarProcess,
    coder: FakeCoder,
    final: list[tuple[str, str]],
    accepted_before: int,
    started: float,
) -> None:
    """`stop` returns only after whatever it stores is stored (the daemon has exited, or it
    posted itself): wait for its exit, then read when the store happened."""
    run.exit_code = await proc.wait(STEP_TIMEOUT)
    run.to_exit_ms = (time.monotonic() - started) * 1000
    run.to_stored_ms = stored_ms(coder, final, accepted_before, started)


# --- the report -------------------------------------------------------------------------

METHODS = {
    "daemon (SIGTERM → stored)": run_daemon,
    "oneshot (start → stored)": run_oneshot,
    "baseline sh (start → stored)": run_baseline,
}
BASELINE = "baseline sh (start → stored)"
# The run_on_stop hook, against the registry's script (the second table).
STOP_METHODS = {
    "registry script (start → stored)": run_registry,
    "stop, daemon running (start → stored)": run_stop_daemon,
    "stop, no daemon (start → stored)": run_stop_alone,
}
REGISTRY = "registry script (start → stored)"
STOP_DAEMON = "stop, daemon running (start → stored)"
COLUMNS = [
    "conversation",
    "method",
    "→ stored ms",
    "min–max",
    "vs {base}",
    "→ exit ms",
    "vs {base}",
    "accepted",
    "POST / logs",
    "body bytes",
    "msgs / newest chars kept",
    "exit",
    "notes",
]


@dataclass(frozen=True)
class Summary:
    """The runs of one case and method; the POST figures are the last run's."""

    stored_ms: float | None  # median; None unless every run stored the newest
    stored_min: float | None
    stored_max: float | None
    exit_ms: float
    ok: int
    n: int
    post: int | None
    readback: int | None
    body_bytes: int | None
    messages: int | None
    kept: int | None
    exit: list[int | None]
    notes: list[str]
    phases: tuple[float, float, float] | None  # medians, over the runs that have them


def summarize(runs: list[Run]) -> Summary:
    stored = [r.to_stored_ms for r in runs if r.to_stored_ms is not None and r.accepted]
    exits = [r.to_exit_ms for r in runs if r.to_exit_ms is not None]
    last = runs[-1]
    return Summary(
        stored_ms=_common.median(stored) if len(stored) == len(runs) else None,
        stored_min=min(stored) if stored else None,
        stored_max=max(stored) if stored else None,
        exit_ms=_common.median(exits),
        ok=sum(r.accepted for r in runs),
        n=len(runs),
        post=last.post_status,
        readback=last.readback,
        body_bytes=last.body_bytes,
        messages=last.messages,
        kept=last.kept,
        exit=sorted({r.exit_code for r in runs}, key=str),
        notes=sorted({n for r in runs for n in r.notes}),
        phases=_median_phases([r.phases for r in runs if r.phases is not None]),
    )


def _median_phases(
    phases: list[tuple[float, float, float]],
) -> tuple[float, float, float] | None:
    if not phases:
        return None
    a, b, c = (_common.median([p[i] for p in phases]) for i in range(3))
    return (a, b, c)


def table_rows(
    results: Mapping[tuple[str, ...], Summary], base_method: str, base_name: str
) -> list[list[str]]:
    """One row per key (its labels, then the method), ratios against the row with the same
    labels and `base_method`."""
    rows: list[list[str]] = []
    for (*labels, method), r in results.items():
        base = results[(*labels, base_method)]
        rows.append(
            [
                *labels,
                method,
                _common.fmt(r.stored_ms),
                f"{_common.fmt(r.stored_min)}–{_common.fmt(r.stored_max)}",
                (
                    _common.ratio(r.stored_ms, base.stored_ms)
                    if base.stored_ms is not None
                    else (f"{base_name} failed" if r.stored_ms is not None else "—")
                ),
                _common.fmt(r.exit_ms),
                _common.ratio(r.exit_ms, base.exit_ms),
                f"{r.ok}/{r.n}",
                f"{r.post or '—'} / "
                + ("200 no snapshot" if r.readback == 0 else str(r.readback or "—")),
                _common.fmt(r.body_bytes, 0) if r.body_bytes else "—",
                f"{r.messages or '—'} / {_common.fmt(r.kept, 0) if r.kept else '—'}",
                ",".join(str(c) for c in r.exit),
                "; ".join(r.notes),
            ]
        )
    return rows


async def main_async(repeat: int) -> int:
    sidecar_command()  # a clear error when the console script is not installed
    for script in (SCRIPT, REGISTRY_SCRIPT):
        if not script.exists():
            raise SystemExit(f"missing {script}")
    results: dict[tuple[str, ...], Summary] = {}  # (conversation, method)
    stop_results: dict[tuple[str, ...], Summary] = {}  # (variant, conversation, method)
    daemon_all: list[float] = []
    stop_daemon_runs: dict[str, list[Run]] = {v.name: [] for v in VARIANTS}
    homes = itertools.count()
    with tempfile.TemporaryDirectory(prefix="bench-shutdown-") as tmp:

        async def repeated(fn: Callable[[Path], Awaitable[Run]]) -> list[Run]:
            runs: list[Run] = []
            for _ in range(repeat):
                home = Path(tmp) / str(next(homes))
                home.mkdir()
                runs.append(await fn(home))
            return runs

        async with aiohttp.ClientSession() as session:
            for case in cases():
                for method, fn in METHODS.items():
                    runs = await repeated(functools.partial(fn, case, session=session))
                    if method.startswith("daemon"):
                        daemon_all.extend(r.to_stored_ms for r in runs if r.to_stored_ms)
                    results[(case.name, method)] = summarize(runs)
                    _common.note(f"  done: {case.name} / {method}")
            for variant in VARIANTS:
                for case in cases():
                    for method, stop_fn in STOP_METHODS.items():
                        runs = await repeated(
                            functools.partial(stop_fn, case, variant, session=session)
                        )
                        if method == STOP_DAEMON:
                            stop_daemon_runs[variant.name].extend(runs)
                        stop_results[(variant.name, case.name, method)] = summarize(runs)
                        _common.note(f"  done: {variant.name} / {case.name} / {method}")

    _common.note(f"\n{_common.machine_line()}  ·  repeat {repeat} (median, min–max)")
    _common.table(
        "Shutdown: time to the stored snapshot (ms) and whether Coder accepted it",
        [c.format(base="baseline") for c in COLUMNS],
        table_rows(results, BASELINE, "baseline"),
    )
    _common.table(
        "Stop hook (run_on_stop): `coder-task-sidecar stop` vs the registry's "
        "agentapi-shutdown.sh, from the hook's start (ms), per variant of agentapi's state",
        ["agentapi", *(c.format(base="registry") for c in COLUMNS)],
        table_rows(stop_results, REGISTRY, "registry"),
    )
    _common.table(
        "Stop hook: where the time goes (ms, medians; agentapi's journal dates its signals)",
        [
            "agentapi",
            "conversation",
            "method",
            "start → SIGUSR1",
            "SIGUSR1 → SIGTERM to agentapi",
            "SIGTERM → hook exit",
        ],
        [
            [
                variant,
                case_name,
                method.removesuffix(" (start → stored)"),
                *map(_common.fmt, r.phases),
            ]
            for (variant, case_name, method), r in stop_results.items()
            if r.phases is not None
        ],
    )
    worst = max(daemon_all) if daemon_all else None
    ok = worst is not None and worst <= AIM_MS and len(daemon_all) == len(cases()) * repeat
    _common.table(
        "Issue figure: ms from SIGTERM to the snapshot stored (daemon)",
        ["runs", "median", "p100 (worst)", "aim", "verdict"],
        [
            [
                len(daemon_all),
                _common.fmt(_common.median(daemon_all)),
                _common.fmt(worst),
                f"≤ {AIM_MS:.0f} ms",
                _common.verdict(ok),
            ]
        ],
    )
    _common.table(
        "Stop hook aims (daemon running), per variant of agentapi's state",
        ["agentapi", "figure", "runs", "median", "worst", "aim", "verdict"],
        [
            row
            for variant in VARIANTS
            for row in stop_aims(variant.name, stop_results, stop_daemon_runs[variant.name])
        ],
    )
    return 0


def stop_aims(
    variant: str, results: Mapping[tuple[str, ...], Summary], runs: list[Run]
) -> list[list[object]]:
    """`stop` with a daemon running, in one variant: stored ≤ AIM_MS and exited
    ≤ STOP_EXIT_AIM_MS after it starts (every run), and ≥ STOP_SPEEDUP_AIM× faster than the
    registry script, start → exit (median per conversation, the smallest counts)."""
    stored = [r.to_stored_ms for r in runs if r.accepted and r.to_stored_ms is not None]
    exits = [r.to_exit_ms for r in runs if r.to_exit_ms is not None]
    speedups = {
        name: results[(variant, name, REGISTRY)].exit_ms / r.exit_ms
        for (v, name, method), r in results.items()
        if v == variant and method == STOP_DAEMON and r.exit_ms > 0
    }
    slowest = min(speedups, key=lambda name: speedups[name]) if speedups else None
    least = speedups[slowest] if slowest is not None else None

    def within(figure: str, values: list[float], aim: float) -> list[object]:
        worst = max(values) if values else None
        ok = worst is not None and worst <= aim and len(values) == len(runs)
        return [
            variant,
            figure,
            f"{len(values)}/{len(runs)}",
            _common.fmt(_common.median(values) if values else None),
            _common.fmt(worst),
            f"≤ {aim:,.0f} ms",
            _common.verdict(ok),
        ]

    return [
        within("`stop` start → snapshot stored (ms)", stored, AIM_MS),
        within("`stop` start → exit (ms)", exits, STOP_EXIT_AIM_MS),
        [
            variant,
            "registry script ÷ `stop`, start → exit (per conversation)",
            len(speedups),
            f"×{_common.median(list(speedups.values())):.1f}" if speedups else "—",
            f"×{least:.1f} ({slowest})" if least is not None else "—",
            f"≥ ×{STOP_SPEEDUP_AIM:.0f}",
            _common.verdict(
                least is not None and least >= STOP_SPEEDUP_AIM and len(speedups) == len(cases())
            ),
        ],
    ]


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=0, help="runs per case and method")
    args = p.parse_args()
    if args.repeat < 0:
        p.error("--repeat must be at least 1 (0: the default)")
    repeat = args.repeat or (1 if args.quick else 5)
    # One run of every case, method and variant takes about a minute (with a hook that
    # waits out its bound for a save that never comes); twice that per run bounds it.
    _common.run(lambda: main_async(repeat), timeout=120 + 120 * repeat)


if __name__ == "__main__":
    main()

"""Shutdown, side by side: how fast the final snapshot is stored, and whether it is.

    python bench/shutdown.py [--quick] [--repeat N]

For three conversations (10 ASCII messages of 30 KiB; one 70,000-character message; one
message of 40,000 '€') it measures, against the loopback fakes (tests/fakes):

  (a) daemon   the real `coder-task-sidecar run` process: settle (its first snapshot is
               stored), change the conversation, wait until /metrics counts the event,
               SIGTERM, and time SIGTERM → the fake Coder stored the newest body;
  (b) oneshot  `coder-task-sidecar snapshot`: process start → stored;
  (c) baseline bench/baseline/shutdown-snapshot.sh (curl + jq, today's shutdown hook):
               process start → stored.

"stored" means the POST was answered 204 and the logs read-back
(GET /api/v2/tasks/me/{task}/logs) answers 200. Ratios are against the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import _common  # first: puts the repo root on sys.path
import aiohttp

from tests.e2e.harness import SidecarProcess, base_env, sidecar_command
from tests.fakes.agentapi import FakeAgentapi
from tests.fakes.coder import FakeCoder
from tests.fakes.server import serve

SCRIPT = _common.BENCH / "baseline" / "shutdown-snapshot.sh"
AIM_MS = 100.0
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
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.post_status == 204 and self.readback == 200


SIDECAR_MARKER = re.compile(r"\[… (\d+) earlier characters cut by coder-task-sidecar …\]\n")
BASELINE_MARKER = "[... earlier output truncated ...]\n"


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
    if stored.startswith(BASELINE_MARKER):
        tail = stored[len(BASELINE_MARKER) :]
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


async def run_daemon(case: Case, home: Path, session: aiohttp.ClientSession) -> Run:
    run = Run()
    async with fakes(run, case, case.settle, session) as (agentapi, coder, a_url, c_url):
        env = env_for(
            home,
            a_url,
            c_url,
            coder,
            SIDECAR_SNAPSHOT_INTERVAL="600",  # after settling only SIGTERM can post
            SIDECAR_HTTP_ADDR="127.0.0.1:0",
            SIDECAR_AGENTAPI_PROBE_INTERVAL="5",
        )
        proc = SidecarProcess(env)
        await proc.start()
        assert proc.proc is not None
        _common.track(proc.proc)
        try:
            await coder.wait_for(lambda: bool(coder.accepted_snapshot_posts()), STEP_TIMEOUT)
            listening = await proc.wait_log("health.listening", STEP_TIMEOUT)
            http = f"http://127.0.0.1:{listening['port']}"
            seen = await events_seen(session, http)
            case.change(agentapi)
            async with asyncio.timeout(STEP_TIMEOUT):
                while await events_seen(session, http) < seen + 1:
                    await asyncio.sleep(0.005)
            accepted_before = len(coder.accepted_snapshot_posts())
            if newest_stored(coder, case.final, 0):
                run.notes.append("newest stored before SIGTERM (not a shutdown figure)")
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


async def run_baseline(case: Case, home: Path, session: aiohttp.ClientSession) -> Run:
    run = Run()
    async with fakes(run, case, case.final, session) as (_, coder, a_url, c_url):
        env = env_for(home, a_url, c_url, coder)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(SCRIPT),
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
            run.to_stored_ms = stored_ms(coder, case.final, 0, started)
            text = (out + err).decode(errors="replace").strip().splitlines()
            if run.exit_code:
                run.notes.append(text[-1][:80] if text else f"exit {run.exit_code}")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return run


# --- the report -------------------------------------------------------------------------

METHODS = {
    "daemon (SIGTERM → stored)": run_daemon,
    "oneshot (start → stored)": run_oneshot,
    "baseline sh (start → stored)": run_baseline,
}


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
    )


async def main_async(args: argparse.Namespace) -> int:
    repeat = args.repeat or (1 if args.quick else 5)
    sidecar_command()  # a clear error when the console script is not installed
    if not SCRIPT.exists():
        raise SystemExit(f"missing {SCRIPT}")
    results: dict[tuple[str, str], Summary] = {}
    daemon_all: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-shutdown-") as tmp:
        async with aiohttp.ClientSession() as session:
            for case in cases():
                for method, fn in METHODS.items():
                    runs: list[Run] = []
                    for i in range(repeat):
                        home = Path(tmp) / f"{len(results)}-{i}"
                        home.mkdir()
                        runs.append(await fn(case, home, session))
                    if method.startswith("daemon"):
                        daemon_all.extend(r.to_stored_ms for r in runs if r.to_stored_ms)
                    results[(case.name, method)] = summarize(runs)
                    _common.note(f"  done: {case.name} / {method}")

    rows: list[list[str]] = []
    for (case_name, method), r in results.items():
        base = results[(case_name, "baseline sh (start → stored)")]
        rows.append(
            [
                case_name,
                method,
                _common.fmt(r.stored_ms),
                f"{_common.fmt(r.stored_min)}–{_common.fmt(r.stored_max)}",
                (
                    _common.ratio(r.stored_ms, base.stored_ms)
                    if base.stored_ms is not None
                    else ("baseline failed" if r.stored_ms is not None else "—")
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
    _common.note(f"\n{_common.machine_line()}  ·  repeat {repeat} (median, min–max)")
    _common.table(
        "Shutdown: time to the stored snapshot (ms) and whether Coder accepted it",
        [
            "conversation",
            "method",
            "→ stored ms",
            "min–max",
            "vs baseline",
            "→ exit ms",
            "vs baseline",
            "accepted",
            "POST / logs",
            "body bytes",
            "msgs / newest chars kept",
            "exit",
            "notes",
        ],
        rows,
    )
    worst = max(daemon_all) if daemon_all else None
    ok = worst is not None and worst <= AIM_MS and len(daemon_all) == 3 * repeat
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
    return 0


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=0, help="runs per case and method")
    args = p.parse_args()
    _common.run(lambda: main_async(args), timeout=600)


if __name__ == "__main__":
    main()

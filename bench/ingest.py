"""Ingest: events per second and CPU µs per event; the replay of a long history on connect.

    python bench/ingest.py [--quick] [--events N] [--replay-messages N]

1. Live stream: N `message_update` events (default 100,000; an agent message updated in
   place with a growing content, turns with running/stable) served by a minimal raw SSE
   handler in a separate process (bench/_fakes_proc.py), read by the real AgentapiSource →
   Hub → Mirror, with an Uploader (real CoderClient → FakeCoder, 5 s interval, in the fakes
   process) uploading as in production. Wall time and this process's CPU time
   (time.process_time) per event. Then the sidecar-only cost: the same bytes, pre-built,
   fed in 64 KiB chunks to the parser alone, + validation, + mirror, and the full
   synchronous reader path (AgentapiSource's reader → Hub → Mirror → Uploader.notify).
2. Replay on connect: 20,000 messages of 4 KiB (then status_change), read by a fresh
   child process running the same pieces: seconds, MB/s and peak RSS (ru_maxrss).

Aims (from the issue): ≥ 50,000 events/s; replay ≥ 40 MB/s; peak RSS ≤ 80 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import _common  # first: puts the repo root on sys.path
import _fakes_proc
import aiohttp
from _pipeline import Pipeline, count, nowhere, posts, session_for

from sidecar.agentapi.sse import SSEParser
from sidecar.agentapi.stream import Connection
from sidecar.mirror import Mirror
from sidecar.models import Invalid, parse_sse_event
from tests.e2e.harness import SidecarProcess, base_env

AIM_EVENTS_S = 50_000
AIM_REPLAY_MB_S = 40.0
AIM_RSS_MB = 80.0
CHUNK = 64 * 1024
MB = 1_000_000
PIPELINE_ROWS = ("pipeline: socket → Uploader", "pipeline: … + Relay")


# --- 1. live stream -----------------------------------------------------------------------


async def live_pipeline(fakes: _fakes_proc.Fakes, relay: bool) -> dict[str, Any]:
    """One run: a new session and pipeline; the fakes serve the whole stream to each
    connection. Server figures are totals since the fakes started."""
    info = fakes.info
    async with session_for(info) as session:
        p = Pipeline(info, session, relay)
        p.start_workers()
        await asyncio.sleep(0.2)  # let the workers park
        cpu0, t0 = time.process_time(), time.perf_counter()
        p.start_source()
        await _common.wait_until(
            lambda: count(p.metrics, "message_update") >= info["events"],
            timeout=300,
            what=f"{info['events']} message_update events",
            poll=0.01,
        )
        t1, cpu1 = time.perf_counter(), time.process_time()
        during = posts(p.metrics)
        delivered = await p.stop()
    stats = await fakes.stats()
    n = info["events"]
    return {
        "events": n,
        "bytes": info["bytes"],
        "wall": t1 - t0,
        "cpu": cpu1 - cpu0,
        "posts_during": during,
        "final_delivered": delivered,
        "server": stats,
    }


async def chunks_of(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def chunk_list(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def stage_parser(chunks: list[bytes]) -> int:
    parser = SSEParser()
    return sum(len(parser.feed(c)) for c in chunks)


def stage_validate(chunks: list[bytes]) -> int:
    parser = SSEParser()
    n = 0
    for c in chunks:
        for frame in parser.feed(c):
            parse_sse_event(frame.event, frame.data)
            n += 1
    return n


def stage_mirror(chunks: list[bytes]) -> int:
    parser = SSEParser()
    mirror = Mirror(10)
    n = 0
    for c in chunks:
        for frame in parser.feed(c):
            event = parse_sse_event(frame.event, frame.data)
            if event is not None and not isinstance(event, Invalid):
                mirror.apply(event)
            n += 1
    return n


async def stage_reader(data: bytes, relay: bool) -> int:
    """AgentapiSource's own reader coroutine and dispatch (metrics counter, validation)
    → Hub → Mirror → Uploader.notify (→ Relay.observe): the daemon's per-event path,
    without sockets. The workers are not running, so nothing is posted."""
    async with aiohttp.ClientSession() as session:
        p = Pipeline(nowhere(), session, relay)
        # The reader loop itself (private, but it is the real per-chunk code path).
        await p.source._read(chunks_of(data), Connection())
        return int(sum(count(p.metrics, t) for t in ("message_update", "status_change")))


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0, time.process_time() - cpu0


async def timed_async(fn: Callable[[], Awaitable[int]]) -> tuple[int, float, float]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    n = await fn()
    return n, time.perf_counter() - t0, time.process_time() - cpu0


# --- 2. replay in a fresh process ---------------------------------------------------------


async def replay(messages: int, size: int) -> dict[str, Any]:
    spec: _fakes_proc.Spec = {"kind": "replay", "messages": messages, "size": size}
    async with _fakes_proc.Fakes(spec) as fakes:
        info = fakes.info
        cmd = [sys.executable, str(_common.BENCH / "_replay_child.py"), json.dumps(info)]
        proc = _common.track(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
        loop = asyncio.get_running_loop()
        try:
            out, err = await loop.run_in_executor(None, lambda: proc.communicate(timeout=300))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise TimeoutError("the replay child did not finish within 300 s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"replay child failed ({proc.returncode}):\n{err[-2000:]}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        result["bytes"] = info["bytes"]
        result["server"] = await fakes.stats()
    return result


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS of a live process, in MB, from /proc/<pid>/status."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024
    return out


def log_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


async def replay_daemon(messages: int, size: int) -> dict[str, Any]:
    """The real `coder-task-sidecar run` process reading the replay: its peak RSS from
    /proc (VmHWM) and connect → first snapshot posted from its own log timestamps."""
    spec: _fakes_proc.Spec = {"kind": "replay", "messages": messages, "size": size}
    async with _fakes_proc.Fakes(spec) as fakes:
        info = fakes.info
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            env = base_env(
                Path(tmp),
                CODER_AGENT_URL=info["coder"],
                CODER_AGENT_TOKEN=info["token"],
                CODER_TASK_ID=info["task"],
                CODER_MCP_AI_AGENTAPI_URL=info["sse"],
                CODER_MCP_APP_STATUS_SLUG="claude-code",
                SIDECAR_STATE_DIR=str(Path(tmp) / "state"),
                SIDECAR_HTTP_ADDR="127.0.0.1:0",
            )
            proc = SidecarProcess(env)
            await proc.start()
            assert proc.proc is not None
            _common.track(proc.proc)
            try:
                connected = await proc.wait_log("agentapi.connected", 60)
                if messages:
                    posted = await proc.wait_log("snapshot.posted", 120)
                    seconds = log_time(posted) - log_time(connected)
                else:
                    await proc.wait_log("relay.patched", 60)
                    seconds = float("nan")
                await asyncio.sleep(0.2)
                mem = proc_status_mb(proc.proc.pid)
                proc.signal(signal.SIGTERM)
                code = await proc.wait(30)
            finally:
                await proc.kill()
    return {"seconds": seconds, "exit": code, "bytes": info["bytes"], **mem}


# --- report -------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    events = args.events or (10_000 if args.quick else 100_000)
    r_messages = args.replay_messages or (2_000 if args.quick else 20_000)
    repeat = args.repeat or (1 if args.quick else 3)
    _common.quiet_logs()
    _common.note(_common.machine_line())

    # 1. live stream through the real pipeline, then the sidecar-only stages
    runs: dict[str, list[tuple[int, float, float]]] = {}
    async with _fakes_proc.Fakes({"kind": "live", "events": events}) as fakes:
        for _ in range(repeat):
            for label, relay in zip(PIPELINE_ROWS, (False, True), strict=True):
                r = await live_pipeline(fakes, relay)
                runs.setdefault(label, []).append((r["events"], r["wall"], r["cpu"]))
                last = r
    payload, _n = _fakes_proc.live_payload(events)
    frames = payload.count(b"\n\n")
    chunks = chunk_list(payload)
    for _ in range(repeat):
        for label, result in (
            ("SSEParser.feed only", timed(lambda: stage_parser(chunks))),
            ("+ parse_sse_event (JSON + validation)", timed(lambda: stage_validate(chunks))),
            ("+ Mirror.apply", timed(lambda: stage_mirror(chunks))),
            (
                "reader → Hub → Mirror → Uploader.notify",
                await timed_async(lambda: stage_reader(payload, relay=False)),
            ),
            ("  … + Relay.observe", await timed_async(lambda: stage_reader(payload, relay=True))),
        ):
            runs.setdefault(label, []).append(result)
    rows = []
    for label, results in runs.items():
        rates = [n / wall for n, wall, _cpu in results]
        cpus = [cpu / n * 1e6 for n, _wall, cpu in results]
        eps = _common.median(rates)
        pipeline = label in PIPELINE_ROWS
        rows.append(
            [
                label,
                f"{results[0][0]:,}" + ("" if pipeline else " frames"),
                _common.fmt(_common.median([wall for _n, wall, _cpu in results]), 3),
                f"{eps:,.0f}",
                f"{min(rates):,.0f}–{max(rates):,.0f}",
                _common.fmt(_common.median(cpus), 2),
                _common.fmt(len(payload) / MB * eps / results[0][0]),
                _common.ratio(eps, AIM_EVENTS_S),
                _common.verdict(eps >= AIM_EVENTS_S) if pipeline else "",
            ]
        )
    _common.table(
        f"Live ingest: {events:,} message_update events ({frames - events:,} status_change "
        f"besides), {len(payload) / MB:.1f} MB, mean frame {len(payload) / frames:,.0f} B; "
        f"median of {repeat}",
        [
            "path",
            "events",
            "wall s",
            "events/s",
            "min–max",
            "CPU µs/event",
            "MB/s",
            "vs aim 50k/s",
            "aim",
        ],
        rows,
    )
    full = last
    _common.note(
        f"pipeline: snapshot posts accepted during ingest {full['posts_during']} "
        f"(+ final flush {'delivered' if full['final_delivered'] else 'NOT delivered'}); "
        f"the server saw {full['server']['snapshot_posts']} snapshot POSTs (all runs), "
        f"{full['server']['app_statuses']} app-status PATCHes (all runs). "
        f"CPU µs/event for the pipeline is this process only (the SSE server and the "
        f"FakeCoder run in another process); the stage rows count every frame."
    )

    # 2. replay on connect: a fresh child with the real classes, and the real daemon
    r = await replay(r_messages, 4096)
    d = await replay_daemon(r_messages, 4096)
    idle = await replay_daemon(0, 4096)
    size_mb = r["bytes"] / MB
    mb_s = size_mb / r["seconds"]
    d_mb_s = size_mb / d["seconds"]
    _common.table(
        f"Replay on connect: {r_messages:,} messages × 4 KiB ({size_mb:.1f} MB of SSE), "
        "then status_change",
        ["figure", "child: real classes", "real daemon", "idle daemon", "aim", "verdict"],
        [
            [
                "connect → replay applied s",
                _common.fmt(r["seconds"], 3),
                "",
                "",
                "",
                "",
            ],
            [
                "connect → first snapshot posted s",
                _common.fmt(r["to_posted"], 3),
                _common.fmt(d["seconds"], 3),
                "",
                "",
                "",
            ],
            [
                "replay MB/s",
                f"{mb_s:,.1f} ({_common.ratio(mb_s, AIM_REPLAY_MB_S)})",
                f"{d_mb_s:,.1f} ({_common.ratio(d_mb_s, AIM_REPLAY_MB_S)})",
                "",
                f"≥ {AIM_REPLAY_MB_S:.0f}",
                _common.verdict(min(mb_s, d_mb_s) >= AIM_REPLAY_MB_S),
            ],
            [
                "replay messages/s",
                f"{r['replayed'] / r['seconds']:,.0f}",
                f"{r_messages / d['seconds']:,.0f}",
                "",
                "",
                "",
            ],
            ["CPU s", _common.fmt(r["cpu"], 3), "", "", "", ""],
            ["messages held by the mirror", r["held"], "", "", "10", ""],
            ["RSS after imports MB", _common.fmt(r["rss_before"]), "", "", "", ""],
            [
                "peak RSS MB (VmHWM)",
                _common.fmt(r["rss_peak"]),
                _common.fmt(d["VmHWM"]),
                _common.fmt(idle["VmHWM"]),
                f"≤ {AIM_RSS_MB:.0f}",
                _common.verdict(max(r["rss_peak"], d["VmHWM"]) <= AIM_RSS_MB),
            ],
            [
                "peak RSS vs aim",
                _common.ratio(r["rss_peak"], AIM_RSS_MB),
                _common.ratio(d["VmHWM"], AIM_RSS_MB),
                _common.ratio(idle["VmHWM"], AIM_RSS_MB),
                "",
                "",
            ],
            [
                "peak RSS growth by the replay MB",
                _common.fmt(r["rss_peak"] - r["rss_before"]),
                _common.fmt(d["VmHWM"] - idle["VmHWM"]),
                "",
                "",
                "",
            ],
            [
                "RSS at the end MB (VmRSS)",
                "",
                _common.fmt(d["VmRSS"]),
                _common.fmt(idle["VmRSS"]),
                "",
                "",
            ],
            ["daemon exit code after SIGTERM", "", d["exit"], idle["exit"], "0", ""],
        ],
    )
    return 0


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=0, help="live message_update events")
    p.add_argument("--replay-messages", type=int, default=0, help="messages in the replay")
    p.add_argument("--repeat", type=int, default=0, help="runs per live figure (median)")
    args = p.parse_args()
    _common.run(lambda: main_async(args), timeout=900)


if __name__ == "__main__":
    main()

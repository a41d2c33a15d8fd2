"""Profile the hot paths: ingest per event, snapshot building, process start-up.

    python bench/profile_hot_path.py [--quick] [--events N] [--top N] [--cprofile-only]

1. Ingest: pre-built SSE bytes (bench/_fakes_proc.live_payload) through AgentapiSource's
   reader → Hub → Mirror → Uploader.notify → Relay.observe (no sockets), under cProfile
   (exact call counts; inflates tiny functions) and pyinstrument (sampling; if installed:
   `pip install pyinstrument`).
2. Snapshot building: sidecar.snapshot.build on the shutdown benchmark's conversations
   plus a typical one and an escape-heavy one; µs per build, then a cProfile of the
   costliest.
3. Start-up: `coder-task-sidecar --version` wall time and the imports that cost most
   (python -X importtime), since the one-shot `snapshot` command pays them on every run.

Prints the top functions; the figures go into bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import time
import timeit
import uuid
from collections.abc import AsyncIterator

import _common  # first: puts the repo root on sys.path
import _fakes_proc
import aiohttp
from _pipeline import Pipeline

from sidecar import snapshot
from sidecar.models import SNAPSHOT_MAX_BYTES, Message

CHUNK = 64 * 1024


# --- 1. ingest ---------------------------------------------------------------------------


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


async def ingest(payload: bytes) -> None:
    info = {"coder": "http://127.0.0.1:9", "token": str(uuid.uuid4()), "task": str(uuid.uuid4())}
    info["sse"] = info["coder"]
    async with aiohttp.ClientSession() as session:
        p = Pipeline(info, session, relay=True)
        await p.source._read(_chunks(payload))  # the real reader coroutine (private)


def top_functions(prof: cProfile.Profile, top: int, total_s: float) -> list[list[str]]:
    stats = pstats.Stats(prof)
    rows = []
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    for (path, line, name), (_cc, ncalls, tottime, cumtime, _callers) in entries[:top]:
        where = path.replace(str(_common.REPO) + "/", "")
        where = re.sub(r".*/site-packages/", "", where)
        where = re.sub(r".*/lib/python3\.\d+/", "stdlib/", where)
        rows.append(
            [
                f"{where}:{line}({name})",
                f"{ncalls:,}",
                f"{tottime:.3f}",
                f"{tottime / total_s * 100:.1f}",
                f"{cumtime:.3f}",
            ]
        )
    return rows


def profile_ingest(events: int, top: int, use_pyinstrument: bool) -> None:
    payload, _n = _fakes_proc.live_payload(events)
    frames = payload.count(b"\n\n")
    # unprofiled reference
    t0 = time.perf_counter()
    asyncio.run(ingest(payload))
    plain = time.perf_counter() - t0
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(asyncio.run, ingest(payload))
    profiled = time.perf_counter() - t0
    total = pstats.Stats(prof).total_tt  # type: ignore[attr-defined]
    _common.note(
        f"\ningest: {frames:,} frames, {len(payload) / 1e6:.1f} MB; unprofiled "
        f"{plain:.3f} s = {plain / frames * 1e6:.2f} µs/frame; under cProfile {profiled:.3f} s"
    )
    _common.table(
        f"Ingest, cProfile: top {top} functions by own time",
        ["function", "calls", "own s", "own %", "cumulative s"],
        top_functions(prof, top, total),
    )
    if use_pyinstrument:
        try:
            from pyinstrument import Profiler
        except ImportError:
            _common.note("pyinstrument is not installed (pip install pyinstrument): skipped")
            return
        profiler = Profiler(interval=0.0005)
        profiler.start()
        asyncio.run(ingest(payload))
        profiler.stop()
        text = profiler.output_text(unicode=True, color=False, show_all=False)
        lines = [line for line in text.splitlines() if line.strip()]
        _common.note("\n### Ingest, pyinstrument (sampling) call tree\n\n```")
        _common.note("\n".join(lines[:45]))
        _common.note("```")


# --- 2. snapshot building ------------------------------------------------------------------


def conversations() -> dict[str, list[Message]]:
    from shutdown import ascii_text  # the same texts as bench/shutdown.py

    stamp = "2025-01-01T00:00:00.123456789Z"

    def msgs(contents: list[str]) -> list[Message]:
        return [
            Message(i, "user" if i % 2 == 0 else "agent", c, stamp) for i, c in enumerate(contents)
        ]

    ctrl = "".join(chr(c) for c in range(1, 32) if c not in (9, 10, 13)) + "\x1b[31mred\x1b[0m"
    return {
        "typical: 10 × 2 KiB": msgs([ascii_text(2048, i) for i in range(10)]),
        "10 × 30 KiB ASCII (drop oldest)": msgs([ascii_text(30 * 1024, i) for i in range(10)]),
        "1 × 70,000 chars (cut)": msgs([ascii_text(70_000, 42)]),
        "1 × 40,000 '€' (cut)": msgs(["€" * 40_000]),
        "1 × 1 MB control chars (cut, ×6 escapes)": msgs([(ctrl * 40_000)[:1_000_000]]),
        "100 × 4 KiB, max_messages 10": msgs([ascii_text(4096, i) for i in range(100)]),
    }


def fit_newest_interpolated(message: Message, max_bytes: int) -> bytes:
    """WHAT-IF prototype, not sidecar code: sidecar.snapshot._fit_newest with the binary
    search replaced by interpolation (the body size grows almost linearly with the kept
    characters) that falls back to bisection when a guess does not halve the interval.
    Same bounds, same monotonic size function, so the same longest fitting tail."""
    import dataclasses

    enc = snapshot._encode_one
    prefix, suffix = snapshot._PREFIX, snapshot._SUFFIX
    content = message.content
    total = len(content)

    def body(keep: int) -> bytes:
        tail = content[total - keep :] if keep else ""
        cut = dataclasses.replace(message, content=snapshot.marker(total - keep) + tail)
        return prefix + enc(cut) + suffix

    best = body(0)
    room = max_bytes - len(best)
    lo = min(total, room // 6)
    hi = min(total, room + len(str(total)))
    if lo:
        best = body(lo)
    size_lo, size_hi = len(best), None
    while lo < hi:
        if size_hi is None:
            mid = hi  # the optimistic end first: pure ASCII text fits right there
        else:
            mid = lo + (max_bytes - size_lo) * (hi - lo) // max(1, size_hi - size_lo)
            mid = min(max(mid, lo + 1), hi)
            if mid - lo > (hi - lo) // 2 and hi - mid > (hi - lo) // 2:
                mid = (lo + hi + 1) // 2
        candidate = body(mid)
        if len(candidate) <= max_bytes:
            lo, best, size_lo = mid, candidate, len(candidate)
            if mid == hi:
                break
        else:
            hi, size_hi = mid - 1, len(candidate)
    return best


def check_prototype(cases: int) -> tuple[int, int]:
    """The what-if prototype against sidecar.snapshot.build on random content (escapes,
    multi-byte, astral, lone surrogates) and limits: (cases, mismatches)."""
    import random

    rng = random.Random(0)
    alphabet = ["a", "\n", '"', "\\", "\x01", "€", "😀", "é", "\ud800", " "]
    mismatches = 0
    for _ in range(cases):
        chars = rng.sample(alphabet, rng.randint(1, len(alphabet)))
        weights = [rng.random() for _ in chars]
        size = rng.choice([2_000, 30_000, 70_000, 200_000])
        content = "".join(rng.choices(chars, weights, k=size))
        msg = Message(rng.randint(0, 10**12), "agent", content, "2025-01-01T00:00:00Z")
        for limit in (1024, 4096, SNAPSHOT_MAX_BYTES):
            body = snapshot.build([msg], max_messages=10, max_bytes=limit)
            if body is not None and len(snapshot.encode([msg])) > limit:
                mismatches += body != fit_newest_interpolated(msg, limit)
    return cases * 3, mismatches


def profile_snapshot(top: int, quick: bool) -> None:
    rows = []
    worst: tuple[float, str, list[Message]] = (0.0, "", [])
    for name, messages in conversations().items():
        body = snapshot.build(messages, max_messages=10)
        if body is None or len(body) > SNAPSHOT_MAX_BYTES:
            raise RuntimeError(f"{name}: snapshot.build gave no body or an oversized one")
        number = 3 if quick else 20
        best = min(
            timeit.repeat(
                lambda m=messages: snapshot.build(m, max_messages=10), number=number, repeat=3
            )
        )
        per = best / number
        kept = body.count(b'"id":')
        what_if = "—"
        newest = max(messages, key=lambda m: m.id)
        if kept == 1 and len(messages) == 1:
            proto = fit_newest_interpolated(newest, SNAPSHOT_MAX_BYTES)
            same = "same bytes" if proto == body else "DIFFERENT BYTES"
            t = min(
                timeit.repeat(
                    lambda m=newest: fit_newest_interpolated(m, SNAPSHOT_MAX_BYTES),
                    number=number,
                    repeat=3,
                )
            )
            what_if = f"{t / number * 1e6:,.0f} ({same})"
        rows.append([name, f"{per * 1e6:,.0f}", what_if, f"{len(body):,}", kept])
        if per > worst[0]:
            worst = (per, name, messages)
    _common.table(
        "Snapshot building: sidecar.snapshot.build, best of 3",
        [
            "conversation",
            "µs per build",
            "what-if: interpolated cut search µs",
            "body bytes",
            "messages kept",
        ],
        rows,
    )
    checked, mismatches = check_prototype(30 if quick else 400)
    _common.note(
        f"what-if prototype vs snapshot.build on {checked:,} random (content, limit) cases: "
        f"{mismatches} mismatches"
    )
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(3 if quick else 20):
        snapshot.build(worst[2], max_messages=10)
    prof.disable()
    total = pstats.Stats(prof).total_tt  # type: ignore[attr-defined]
    _common.table(
        f"Snapshot building, cProfile of the costliest ({worst[1]})",
        ["function", "calls", "own s", "own %", "cumulative s"],
        top_functions(prof, min(top, 10), total),
    )


# --- 3. start-up ---------------------------------------------------------------------------


def profile_startup(top: int, quick: bool) -> None:
    exe = shutil.which("coder-task-sidecar")
    if exe is None:
        _common.note("coder-task-sidecar is not installed: start-up skipped")
        return
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    runs = []
    for _ in range(3 if quick else 7):
        t0 = time.perf_counter()
        subprocess.run([exe, "--version"], env=env, capture_output=True, check=True, timeout=30)
        runs.append(time.perf_counter() - t0)
    bare = []
    for _ in range(3 if quick else 7):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True, timeout=30)
        bare.append(time.perf_counter() - t0)
    teardown: dict[str, list[float]] = {}
    # (label, code before the timestamp is written, code after it)
    for label, before, after in (
        ("normal exit", "", ""),
        ("what-if: gc.freeze() before exit", "import gc\ngc.freeze()\n", ""),
        ("what-if: os._exit after flushing", "", "os._exit(0)\n"),
    ):
        teardown[label] = []
        code = (
            "import os, sys, time\n"
            "import sidecar.cli, sidecar.daemon, sidecar.oneshot\n"
            + before
            + "sys.stderr.write(repr(time.time()))\nsys.stderr.flush()\n"
            + after
        )
        for _ in range(3 if quick else 7):
            done = subprocess.run(
                [sys.executable, "-c", code],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            )
            teardown[label].append(time.time() - float(done.stderr))
    imports = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            "import sidecar.cli, sidecar.config, sidecar.log, sidecar.oneshot, sidecar.daemon",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stderr
    entries: list[tuple[int, int, str]] = []
    for line in imports.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            entries.append((int(m.group(1)), int(m.group(2)), m.group(4)))
    total = max(e[1] for e in entries if not e[2].startswith("encodings"))
    _common.table(
        "Start-up",
        ["figure", "ms"],
        [
            ["`coder-task-sidecar --version` (median)", f"{_common.median(runs) * 1000:.0f}"],
            ["`python -c pass` (median)", f"{_common.median(bare) * 1000:.0f}"],
            ["imports of the snapshot command (importtime, cumulative)", f"{total / 1000:.0f}"],
            *(
                [f"interpreter teardown after the work: {label} (median)", f"{ms:.0f}"]
                for label, ms in (
                    (label, _common.median(values) * 1000) for label, values in teardown.items()
                )
            ),
        ],
    )
    by_self = sorted(entries, reverse=True)[:top]
    _common.table(
        f"Start-up: top {top} imports by own time",
        ["module", "own ms", "cumulative ms"],
        [[name, f"{own / 1000:.1f}", f"{cum / 1000:.1f}"] for own, cum, name in by_self],
    )


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=0, help="message_update events to ingest")
    p.add_argument("--top", type=int, default=20, help="functions per table")
    p.add_argument("--cprofile-only", action="store_true", help="skip pyinstrument")
    args = p.parse_args()
    events = args.events or (10_000 if args.quick else 100_000)
    _common.watchdog(600)
    _common.quiet_logs()
    _common.note(_common.machine_line())
    profile_ingest(events, args.top, not args.cprofile_only)
    profile_snapshot(args.top, args.quick)
    profile_startup(min(args.top, 15), args.quick)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Profile the hot paths: ingest per event, snapshot building, process start-up.

    python bench/profile_hot_path.py [--quick] [--events N] [--top N] [--cprofile-only]

1. Ingest: pre-built SSE bytes (bench/_fakes_proc.live_payload) through AgentapiSource's
   reader → Hub → Mirror → Uploader.notify → Relay.observe (no sockets), under cProfile
   (exact call counts; inflates tiny functions) and pyinstrument (sampling; if installed:
   `pip install pyinstrument`).
2. Snapshot building: sidecar.snapshot.build on the shutdown benchmark's conversations
   plus a typical one and an escape-heavy one; µs and message encodes per build, a check
   on random cases that a cut keeps the longest tail that fits, then a cProfile of the
   costliest.
3. Start-up: `coder-task-sidecar --version` and the `snapshot` command's imports (wall
   time), the interpreter teardown after the work (with and without the gc.freeze() that
   sidecar.cli.main does), and the imports that cost most (python -X importtime), since
   the one-shot `snapshot` command pays them on every run.

Prints the top functions; the figures go into bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import json
import os
import pstats
import re
import subprocess
import sys
import time
import timeit
from collections.abc import AsyncIterator
from typing import TypeAlias

import _common  # first: puts the repo root on sys.path
import _fakes_proc
import aiohttp
from _pipeline import Pipeline, nowhere

from sidecar import snapshot
from sidecar.agentapi.stream import Connection
from sidecar.models import SNAPSHOT_MAX_BYTES, Message
from tests.tools import find_tool

CHUNK = 64 * 1024


# --- 1. ingest ---------------------------------------------------------------------------


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


async def ingest(payload: bytes) -> None:
    async with aiohttp.ClientSession() as session:
        p = Pipeline(nowhere(), session, relay=True)
        await p.source._read(_chunks(payload), Connection())  # the real reader coroutine (private)


# pstats' table: (file, line, function) → (primitive calls, calls, own s, cumulative s,
# callers).
_Function: TypeAlias = tuple[str, int, str]
_Entry: TypeAlias = tuple[int, int, float, float, dict[_Function, tuple[int, int, float, float]]]


def _stats_table(prof: cProfile.Profile) -> dict[_Function, _Entry]:
    # The table pstats prints from; typeshed does not declare the attribute (pstats only
    # documents printing it), and nothing public exposes it per file and line.
    table: dict[_Function, _Entry] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    return table


def top_functions(prof: cProfile.Profile, top: int, total_s: float) -> list[list[str]]:
    rows = []
    entries = sorted(_stats_table(prof).items(), key=lambda kv: kv[1][2], reverse=True)
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
    total = sum(entry[2] for entry in _stats_table(prof).values())  # pstats' total_tt
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


def _body_keeping(message: Message, keep: int) -> bytes:
    """The body holding only the last `keep` code points of `message` behind the marker,
    built from sidecar.snapshot's own pieces (a reference for the checks below)."""
    total = len(message.content)
    tail = message.content[total - keep :] if keep else ""
    cut = message._replace(content=snapshot.marker(total - keep) + tail)
    return snapshot._PREFIX + snapshot._encode_one(cut) + snapshot._SUFFIX


_CUT = re.compile(r"\[… (\d+) earlier characters cut by coder-task-sidecar …\]\n")


def check_cut_search(cases: int) -> tuple[int, int]:
    """snapshot.build's cut on random content (escapes, multi-byte, astral, lone
    surrogates) and limits: the body fits, is the body for the tail it reports, and one
    more code point would not fit (the size grows monotonically, so that is the longest
    tail). Returns (cases checked, failures)."""
    import random

    rng = random.Random(0)
    alphabet = ["a", "\n", '"', "\\", "\x01", "€", "😀", "é", "\ud800", " "]
    checked = failures = 0
    for _ in range(cases):
        chars = rng.sample(alphabet, rng.randint(1, len(alphabet)))
        weights = [rng.random() for _ in chars]
        size = rng.choice([2_000, 30_000, 70_000, 200_000])
        content = "".join(rng.choices(chars, weights, k=size))
        msg = Message(rng.randint(0, 10**12), "agent", content, "2025-01-01T00:00:00Z")
        for limit in (1024, 4096, SNAPSHOT_MAX_BYTES):
            body = snapshot.build([msg], max_messages=10, max_bytes=limit)
            if body is None or len(snapshot.encode([msg])) <= limit:
                continue
            checked += 1
            m = _CUT.match(json.loads(body)["messages"][0]["content"])
            keep = len(content) - int(m.group(1)) if m else -1
            ok = (
                keep >= 0
                and len(body) <= limit
                and body == _body_keeping(msg, keep)
                and (keep == len(content) or len(_body_keeping(msg, keep + 1)) > limit)
            )
            failures += not ok
    return checked, failures


def encodes_per_build(messages: list[Message]) -> int:
    """How many message encodings one snapshot.build makes (the cost driver of a cut)."""
    real = snapshot._encode_one
    calls = 0

    def counting(message: Message) -> bytes:
        nonlocal calls
        calls += 1
        return real(message)

    snapshot._encode_one = counting
    try:
        snapshot.build(messages, max_messages=10)
    finally:
        snapshot._encode_one = real
    return calls


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
                functools.partial(snapshot.build, messages, max_messages=10),
                number=number,
                repeat=3,
            )
        )
        per = best / number
        kept = body.count(b'"id":')
        rows.append(
            [name, f"{per * 1e6:,.0f}", encodes_per_build(messages), f"{len(body):,}", kept]
        )
        if per > worst[0]:
            worst = (per, name, messages)
    _common.table(
        "Snapshot building: sidecar.snapshot.build, best of 3",
        ["conversation", "µs per build", "message encodes", "body bytes", "messages kept"],
        rows,
    )
    checked, failures = check_cut_search(30 if quick else 400)
    _common.note(
        f"cut search on {checked:,} random (content, limit) cases: {failures} not the longest "
        "fitting tail (fits, matches its marker, one more code point would not fit)"
    )
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(3 if quick else 20):
        snapshot.build(worst[2], max_messages=10)
    prof.disable()
    total = sum(entry[2] for entry in _stats_table(prof).values())  # pstats' total_tt
    _common.table(
        f"Snapshot building, cProfile of the costliest ({worst[1]})",
        ["function", "calls", "own s", "own %", "cumulative s"],
        top_functions(prof, min(top, 10), total),
    )


# --- 3. start-up ---------------------------------------------------------------------------


def profile_startup(top: int, quick: bool) -> None:
    exe = find_tool("coder-task-sidecar")
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
    # --version stops in argparse after importing sidecar.cli only (since config.py no
    # longer imports aiohttp, that is not what the `snapshot` command imports); this is
    # the command's imports and its exit (gc.freeze() as in sidecar.cli.main) without
    # the work.
    snap_imports = []
    for _ in range(3 if quick else 7):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import gc, sidecar.cli, sidecar.oneshot\ngc.freeze()"],
            env=env,
            check=True,
            timeout=30,
        )
        snap_imports.append(time.perf_counter() - t0)
    teardown: dict[str, list[float]] = {}
    # (label, code before the timestamp is written, code after it)
    for label, before, after in (
        ("without gc.freeze()", "", ""),
        ("gc.freeze() before exit, as sidecar.cli.main does", "import gc\ngc.freeze()\n", ""),
        ("reference: os._exit after flushing", "", "os._exit(0)\n"),
    ):
        teardown[label] = []
        code = (
            "import os, sys, time\n"
            "import sidecar.cli, sidecar.runtime.daemon, sidecar.oneshot\n"
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
    # importtime is one sample per run and noisy: the run with the median total counts.
    samples: list[tuple[int, list[tuple[int, int, str]]]] = []
    for _ in range(1 if quick else 5):
        imports = subprocess.run(
            [
                sys.executable,
                "-X",
                "importtime",
                "-c",
                "import sidecar.cli, sidecar.oneshot",  # what the `snapshot` command imports
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stderr
        entries: list[tuple[int, int, str]] = []
        total = 0
        for line in imports.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
            if m:
                entries.append((int(m.group(1)), int(m.group(2)), m.group(4)))
                # Top-level entries of the command's own imports (everything else is
                # nested below them, or belongs to the interpreter's start-up).
                if len(m.group(3)) == 1 and m.group(4).startswith("sidecar"):
                    total += int(m.group(2))
        samples.append((total, entries))
    samples.sort(key=lambda sample: sample[0])
    total, entries = samples[len(samples) // 2]
    _common.table(
        "Start-up",
        ["figure", "ms"],
        [
            ["`coder-task-sidecar --version` (median)", f"{_common.median(runs) * 1000:.0f}"],
            ["`python -c pass` (median)", f"{_common.median(bare) * 1000:.0f}"],
            [
                "`snapshot` command's imports + exit with gc.freeze(), no work (median)",
                f"{_common.median(snap_imports) * 1000:.0f}",
            ],
            [
                f"imports of the snapshot command (importtime, median of {len(samples)})",
                f"{total / 1000:.0f}",
            ],
            *(
                [f"interpreter teardown after the work: {label} (median)", f"{ms:.0f}"]
                for label, ms in (
                    (label, _common.median(values) * 1000) for label, values in teardown.items()
                )
            ),
        ],
    )
    first: dict[str, int] = {}
    for _own, cum, name in entries:
        first.setdefault(name.strip(), cum)
    _common.table(
        "Start-up: cumulative import time of the large dependencies (ms)",
        ["module", "cumulative ms"],
        [
            [name, f"{first[name] / 1000:.1f}" if name in first else "not imported"]
            for name in (
                "aiohttp",
                "aiohttp.web",
                "pydantic",
                "pydantic_settings",
                "structlog",
                "prometheus_client",
                "sidecar.runtime.health",
            )
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

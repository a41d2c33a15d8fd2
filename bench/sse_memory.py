"""SSE memory: peak RSS of a process running the real AgentapiSource against an endless
`data:` line and against a 10 MB message line, before and after, side by side.

    python bench/sse_memory.py [--quick] [--baseline REV] [--seconds S] [--ceiling-mb N]

"before" is the `sidecar` package at git revision REV (default HEAD, exported with
`git archive` into a temporary directory; nothing in the checkout changes), "after" is
this checkout. Each run is a fresh child process (`python -P bench/sse_memory.py --child
…` with that tree first on sys.path) that runs AgentapiSource → Hub → Mirror against a
FakeAgentapi served by this process, so the fake's own buffers are not counted. The child
reports its peak RSS (VmHWM: ru_maxrss on Linux carries the parent's peak across exec);
this process also watches the child and kills it once its RSS passes --ceiling-mb.

1. Endless line: the replay, then `data: xxxx…` that never ends, written as fast as the
   child reads; the child runs for S seconds (default 6, quick 3).
2. 10 MB line: a replay whose newest agent message is 10,000,000 characters (a dumped
   file); the child runs until its mirror holds that message in full.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
BIG_CHARS = 10_000_000
MB = 1024 * 1024


# --- the child: runs the source from one tree ---------------------------------------------


def _status_kb(field: str, pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _peak_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


async def _child(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, spec["tree"])
    import aiohttp

    import sidecar
    from sidecar.agentapi.client import AgentapiClient
    from sidecar.agentapi.source import AgentapiSource
    from sidecar.hub import Hub
    from sidecar.mirror import Mirror
    from sidecar.runtime.metrics import Metrics

    rss_imports = (_status_kb("VmRSS") or 0.0) / 1024
    metrics = Metrics()
    hub = Hub(mirror=Mirror(10), uploader=None, relay=None)
    result: dict[str, Any] = {"sidecar": sidecar.__file__, "rss_imports": rss_imports}
    async with aiohttp.ClientSession() as session:
        source = AgentapiSource(
            client=AgentapiClient(session=session, base_url=spec["url"]),
            listener=hub,
            metrics=metrics,
        )
        task = asyncio.create_task(source.run())
        started = time.perf_counter()
        if spec["mode"] == "big":
            want = spec["chars"]
            arrived = False
            while time.perf_counter() - started < spec["seconds"]:
                if any(len(m.content) == want for m in hub.mirror.messages()):
                    arrived = True
                    break
                await asyncio.sleep(0.01)
            result["arrived"] = arrived
            result["seconds"] = time.perf_counter() - started
        else:
            await asyncio.sleep(spec["seconds"])  # the measurement window
            result["seconds"] = spec["seconds"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # None before the cap existed.
    result["dropped"] = metrics.registry.get_sample_value(
        "sidecar_agentapi_frames_dropped_total", {"reason": "too_large"}
    )
    result["held"] = len(hub.mirror.messages())
    result["rss_peak"] = _peak_mb()
    return result


# --- the parent: fakes, children, tables --------------------------------------------------


def export_tree(rev: str, into: Path) -> Path:
    """The `sidecar` package at `rev`, written under `into` (git archive: read-only)."""
    blob = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "sidecar"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def big_text(chars: int) -> str:
    unit = "def handler(request):\n    return render(request, 'page.html', {'n': 42})\n"
    return (unit * (chars // len(unit) + 1))[:chars]


async def run_case(tree: Path, mode: str, seconds: float, ceiling_mb: float) -> dict[str, Any]:
    import _common

    from sidecar.standins.agentapi import FakeAgentapi
    from sidecar.standins.server import serve

    fake = FakeAgentapi()
    fake.add_message("agent", "Hello! Ready to help.")
    fake.add_message("user", "Show me the handler file")
    spec: dict[str, Any] = {"tree": str(tree), "mode": mode, "seconds": seconds}
    if mode == "big":
        fake.add_message("agent", big_text(BIG_CHARS))
        spec["chars"] = BIG_CHARS
        spec["seconds"] = 60.0  # a deadline here, not a window
    else:
        fake.events_mode = "endless_line"
    async with serve(fake.app) as server:
        spec["url"] = server.url
        proc = _common.track(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                str(HERE),
                "--child",
                json.dumps(spec),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
        out_task = asyncio.create_task(proc.communicate())
        watched = 0.0
        killed_at: float | None = None
        started = time.perf_counter()
        while not out_task.done():
            rss = (_status_kb("VmRSS", proc.pid) or 0.0) / 1024
            watched = max(watched, (_status_kb("VmHWM", proc.pid) or 0.0) / 1024)
            if rss > ceiling_mb and killed_at is None:
                killed_at = time.perf_counter() - started
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await asyncio.wait({out_task}, timeout=0.02)
        out, err = out_task.result()
    result: dict[str, Any]
    if killed_at is not None:
        result = {"killed_at": killed_at, "rss_peak": watched}
    elif proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    else:
        result = json.loads(out.decode().strip().splitlines()[-1])
        if not str(result["sidecar"]).startswith(str(tree)):
            raise RuntimeError(f"the child imported {result['sidecar']}, not from {tree}")
    result["events_requests"] = fake.requests["/events"]
    result["endless_mb"] = fake.endless_bytes / MB
    return result


def _cell(r: dict[str, Any], key: str, digits: int = 1) -> str:
    import _common

    value = r.get(key)
    return _common.fmt(value, digits) if isinstance(value, int | float) else "—"


async def main_async(args: argparse.Namespace) -> int:
    import _common

    seconds = args.seconds or (3.0 if args.quick else 6.0)
    print(_common.machine_line())
    with tempfile.TemporaryDirectory(prefix="sse-memory-") as tmp:
        before_tree = export_tree(args.baseline, Path(tmp))
        same = (before_tree / "sidecar/agentapi/sse.py").read_bytes() == (
            REPO / "sidecar/agentapi/sse.py"
        ).read_bytes()
        if same:
            _common.note(
                f"note: sidecar/agentapi/sse.py at {args.baseline} equals the checkout's; "
                "pass --baseline with a revision from before the change to compare."
            )
        trees = {"before": before_tree, "after": REPO}
        endless = {
            k: await run_case(t, "endless", seconds, args.ceiling_mb) for k, t in trees.items()
        }
        big = {k: await run_case(t, "big", seconds, args.ceiling_mb) for k, t in trees.items()}

    b, a = endless["before"], endless["after"]

    def killed(r: dict[str, Any]) -> str:
        at = r.get("killed_at")
        return "no" if at is None else f"yes, at {at:.1f} s (> {args.ceiling_mb:.0f} MB)"

    _common.table(
        f"Endless `data:` line for {seconds:g} s: peak RSS of the process running the source",
        ["figure", f"before ({args.baseline})", "after (checkout)", "after / before"],
        [
            ["RSS after imports MB", _cell(b, "rss_imports"), _cell(a, "rss_imports"), ""],
            [
                "peak RSS MB (VmHWM)",
                _cell(b, "rss_peak"),
                _cell(a, "rss_peak"),
                _common.ratio(a.get("rss_peak"), b.get("rss_peak")),
            ],
            ["killed at the ceiling", killed(b), killed(a), ""],
            ["endless line sent MB", _cell(b, "endless_mb"), _cell(a, "endless_mb"), ""],
            ["/events requests", b["events_requests"], a["events_requests"], ""],
            ["frames dropped (too_large)", _cell(b, "dropped", 0), _cell(a, "dropped", 0), ""],
            ["messages held by the mirror", b.get("held", "—"), a.get("held", "—"), ""],
        ],
    )
    b, a = big["before"], big["after"]
    _common.table(
        f"A {BIG_CHARS:,}-character message line in the replay",
        ["figure", f"before ({args.baseline})", "after (checkout)", "after / before"],
        [
            ["RSS after imports MB", _cell(b, "rss_imports"), _cell(a, "rss_imports"), ""],
            [
                "peak RSS MB (VmHWM)",
                _cell(b, "rss_peak"),
                _cell(a, "rss_peak"),
                _common.ratio(a.get("rss_peak"), b.get("rss_peak")),
            ],
            ["message arrived in full", b.get("arrived", "—"), a.get("arrived", "—"), ""],
            [
                "connect → message held s",
                _cell(b, "seconds", 3),
                _cell(a, "seconds", 3),
                _common.ratio(a.get("seconds"), b.get("seconds")),
            ],
            ["frames dropped (too_large)", _cell(b, "dropped", 0), _cell(a, "dropped", 0), ""],
        ],
    )
    ok = big["after"].get("arrived") is True and endless["after"].get("killed_at") is None
    return 0 if ok else 1


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(_child(json.loads(sys.argv[2])))), flush=True)
        return
    sys.path.insert(0, str(HERE.parent))
    import _common

    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--baseline", default="HEAD", help="git revision for 'before'")
    p.add_argument("--seconds", type=float, default=0.0, help="endless-line window")
    p.add_argument("--ceiling-mb", type=float, default=4096.0, help="kill a child above")
    args = p.parse_args()
    if os.environ.get("PYTHONPATH"):
        _common.note("note: PYTHONPATH is set; the children put their tree first anyway")
    _common.run(lambda: main_async(args), timeout=600)


if __name__ == "__main__":
    main()

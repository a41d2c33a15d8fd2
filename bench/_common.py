"""Shared helpers for the benchmarks: imports, tables, machine facts, child cleanup.

Not a benchmark itself. Every script in bench/ does `import _common` first, which puts the
repository root on sys.path so `sidecar` and `tests.fakes` import from this checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as _dt
import multiprocessing.process
import os
import platform
import signal
import statistics
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeAlias, TypeVar

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# --- command line -----------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fast smoke mode (small sizes)")
    return p


def run(main: Callable[[], Awaitable[int]], *, timeout: float) -> None:
    """asyncio.run(main()) under an overall deadline; exit 1 with one clear line on a
    timeout or an error, after the children were killed."""

    async def guarded() -> int:
        async with asyncio.timeout(timeout):
            return await main()

    try:
        code = asyncio.run(guarded())
    except TimeoutError:
        print(f"benchmark: gave up after {timeout:.0f} s (overall deadline)", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("benchmark: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        traceback.print_exc()
        print(f"benchmark: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        kill_children()
    sys.exit(code)


def watchdog(seconds: int) -> None:
    """For scripts without an event loop: kill the children and exit 1 after `seconds`."""

    def expired(_signum: int, _frame: object) -> None:
        print(f"benchmark: gave up after {seconds} s (overall deadline)", file=sys.stderr)
        kill_children()
        os._exit(1)

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)


# --- child processes --------------------------------------------------------------------

Child: TypeAlias = (
    subprocess.Popen[str]
    | subprocess.Popen[bytes]
    | asyncio.subprocess.Process
    | multiprocessing.process.BaseProcess
)
C = TypeVar("C", bound=Child)

_children: list[Child] = []


def track(child: C) -> C:
    """Remember a child (subprocess.Popen, asyncio Process or multiprocessing.Process) so
    it is killed when the benchmark exits, however it exits."""
    _children.append(child)
    return child


def kill_children() -> None:
    for child in reversed(_children):
        with contextlib.suppress(Exception):
            if isinstance(child, multiprocessing.process.BaseProcess):
                if child.is_alive():
                    child.kill()
                    child.join(2)
            elif isinstance(child, subprocess.Popen):
                if child.poll() is None:
                    child.kill()
                    child.wait(2)
            elif child.returncode is None:
                # An asyncio Process not reaped yet: its pid is still ours. Its loop may
                # be closed already, so signal the pid directly.
                os.kill(child.pid, signal.SIGKILL)
    _children.clear()


def _on_term(signum: int, _frame: object) -> None:
    kill_children()
    sys.exit(128 + signum)


atexit.register(kill_children)
with contextlib.suppress(ValueError):  # not the main thread
    signal.signal(signal.SIGTERM, _on_term)


# --- machine and statistics -------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_line() -> str:
    return (
        f"{_dt.date.today().isoformat()} · nproc {os.cpu_count()} · {cpu_model()} · "
        f"Python {platform.python_version()} · {platform.system()} {platform.release()}"
    )


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rss_mb() -> float:
    """Peak RSS of this process in MB (ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- output -----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or nan
        return "—"
    return f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0 or value != value or base != base:
        return "—"
    r = value / base
    return f"×{r:.2f}" if r >= 0.1 or r == 0 else f"×{r:.2g}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table (so it pastes into RESULTS.md as is), printed and returned."""
    body = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [f"\n### {title}\n", line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in body)
    text = "\n".join(out)
    print(text, flush=True)
    return text


def note(text: str) -> None:
    print(text, flush=True)


# --- small async helpers ----------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.005
) -> None:
    """Poll `predicate` until it holds; TimeoutError naming `what` otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(poll)


def prom_value(text: str, name: str, **labels: str) -> float:
    """One sample from a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def quiet_logs() -> None:
    """Benchmarks running sidecar classes in-process: only warnings and errors, to stderr."""
    from sidecar.log import configure

    configure("warning", "json", stream=sys.stderr)

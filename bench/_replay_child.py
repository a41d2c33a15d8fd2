"""The replay benchmark's child: a fresh process that imports only the sidecar's pieces,
reads one replay through them and prints JSON figures (time, CPU, RSS). Run by
bench/ingest.py; not a benchmark itself.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable

from _pipeline import Endpoints, Pipeline, count, posts, session_for


def rss_mb() -> float:
    """Peak RSS of this process in MB: VmHWM from /proc/self/status. Not ru_maxrss: Linux
    carries ru_maxrss across execve, so a child started by a big parent (vfork + exec)
    would report the parent's peak. ru_maxrss is the fallback off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def wait_until(predicate: Callable[[], bool], timeout: float, poll: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout} s")
        await asyncio.sleep(poll)


async def replay_child(info: Endpoints) -> dict[str, float]:
    rss_before = rss_mb()
    async with session_for(info) as session:
        p = Pipeline(info, session, relay=True)
        p.start_workers()
        await asyncio.sleep(0.1)
        cpu0, t0 = time.process_time(), time.perf_counter()
        p.start_source()
        await wait_until(lambda: count(p.metrics, "status_change") >= 1, 300, 0.002)
        t1, cpu1 = time.perf_counter(), time.process_time()
        replayed = count(p.metrics, "message_update")
        await wait_until(lambda: posts(p.metrics) >= 1, 30, 0.002)
        t2 = time.perf_counter()
        held = len(p.mirror.messages())
        await p.stop()
    return {
        "seconds": t1 - t0,
        "cpu": cpu1 - cpu0,
        "to_posted": t2 - t0,
        "replayed": replayed,
        "held": held,
        "rss_before": rss_before,
        "rss_peak": rss_mb(),
    }


def main() -> None:
    from sidecar.log import configure

    configure("warning", "json", stream=sys.stderr)
    info: Endpoints = json.loads(sys.argv[1])  # what bench/ingest.py passes
    print(json.dumps(asyncio.run(asyncio.wait_for(replay_child(info), 300))))


if __name__ == "__main__":
    main()

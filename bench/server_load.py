"""Server load: requests per minute to Coder, for one agent and for a fleet.

    python bench/server_load.py [--quick] [--workspaces N] [--fleet-seconds S]

1. One agent, the real `coder-task-sidecar run` process against the loopback fakes
   (FakeAgentapi + FakeCoder), relay on, 5 s snapshot interval:
   a. idle: after it settled, requests to Coder during an idle window (aim: 0/min);
   b. streaming: one turn with 50 message updates a second for 60 s, then `stable`
      (aim: about one snapshot per interval plus one per finished turn, ≤ 13/min).
2. Fleet: N workspaces (default 1,000) in this one process, each with the real Hub,
   Mirror, Uploader and Relay (5 s interval, 1 PATCH/s at most), against ONE FakeCoder
   in a separate process; agents do scripted turns (idle gap, user message, running,
   ~2 agent updates a second, stable). Reports requests/s at the server and the
   staleness of stored snapshots: the time from a change to the first stored snapshot
   containing it (or something newer), p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import random
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common  # first: puts the repo root on sys.path
import _fakes_proc
import aiohttp

from sidecar.coder.client import CoderClient
from sidecar.coder.token import TokenSource
from sidecar.hub import Hub
from sidecar.mirror import Mirror
from sidecar.models import AgentStatus, Message, MessageUpdate, ReplayStarted, StatusChange
from sidecar.relay.delivery import Relay
from sidecar.relay.policy import RelayPolicy
from sidecar.runtime.metrics import Metrics
from sidecar.uploader import Uploader
from tests.e2e.harness import SidecarProcess, base_env
from tests.fakes.agentapi import FakeAgentapi
from tests.fakes.coder import FakeCoder
from tests.fakes.server import serve

INTERVAL = 5.0
AIM_STREAM_PER_MIN = 13
STREAM_RATE = 50  # updates per second


# --- 1. one agent, the real daemon ------------------------------------------------------


def coder_counts(coder: FakeCoder, since: float, until: float) -> dict[str, int]:
    out = {"POST snapshot": 0, "PATCH app-status": 0, "other": 0}
    for r in coder.requests:
        if not since <= r.at < until:
            continue
        if r.method == "POST" and r.path.endswith("/log-snapshot"):
            out["POST snapshot"] += 1
        elif r.method == "PATCH":
            out["PATCH app-status"] += 1
        else:
            out["other"] += 1
    return out


async def one_agent(idle_s: float, stream_s: float) -> dict[str, Any]:
    agentapi, coder = FakeAgentapi(), FakeCoder()
    agentapi.add_message("user", "Summarize the repository")
    agentapi.add_message("agent", "It is a sidecar daemon.")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        async with serve(agentapi.app) as a_srv, serve(coder.app) as c_srv:
            env = base_env(
                Path(tmp),
                CODER_AGENT_URL=c_srv.url,
                CODER_AGENT_TOKEN=coder.token,
                CODER_TASK_ID=str(coder.task_id),
                CODER_MCP_AI_AGENTAPI_URL=a_srv.url,
                CODER_MCP_APP_STATUS_SLUG="claude-code",
                SIDECAR_STATE_DIR=str(Path(tmp) / "state"),
                SIDECAR_SNAPSHOT_INTERVAL=str(INTERVAL),
            )
            proc = SidecarProcess(env)
            await proc.start()
            assert proc.proc is not None
            _common.track(proc.proc)
            try:
                # settle: the first snapshot and the first status are delivered
                await coder.wait_for(
                    lambda: bool(coder.accepted_snapshot_posts()) and bool(coder.app_statuses),
                    timeout=20,
                )
                await asyncio.sleep(1.0)

                # a. idle
                agentapi_before = sum(agentapi.requests.values())
                t0 = time.monotonic()
                await asyncio.sleep(idle_s)
                t1 = time.monotonic()
                result["idle"] = coder_counts(coder, t0, t1)
                result["idle_s"] = t1 - t0
                result["idle_agentapi"] = sum(agentapi.requests.values()) - agentapi_before

                # b. streaming: one turn, 50 updates/s, then stable
                t_user = time.monotonic()
                agentapi.add_message("user", "Now fix the failing tests")
                agentapi.set_status("running")
                agentapi.add_message("agent", "Looking…")
                text = ""
                n = 0
                while True:
                    due = t_user + n / STREAM_RATE
                    now = time.monotonic()
                    if due - t_user >= stream_s:
                        break
                    if due > now:
                        await asyncio.sleep(due - now)
                    n += 1
                    text += f"line {n}: running step {n}\n"
                    agentapi.update_last(text[-4000:])
                t_stable = time.monotonic()
                agentapi.set_status("stable")
                await asyncio.sleep(3.0)
                t_end = time.monotonic()
                result["stream_updates"] = n
                result["stream_s"] = t_stable - t_user
                result["streaming"] = coder_counts(coder, t_user, t_stable)
                result["turn_end"] = coder_counts(coder, t_stable, t_end)
                stored = coder.stored_snapshot()
                result["newest_stored"] = bool(
                    stored and stored["messages"][-1]["content"] == text[-4000:]
                )
                proc.signal(signal.SIGTERM)
                result["exit"] = await proc.wait(20)
            finally:
                await proc.kill()
    return result


# --- 2. the fleet -----------------------------------------------------------------------


@dataclass
class Workspace:
    index: int
    hub: Hub
    rng: random.Random
    seq: int = 0
    next_id: int = 0
    agent_id: int = -1
    agent_text: str = ""
    turn_ends_at: float = 0.0
    changes: list[tuple[int, float]] = field(default_factory=list)  # (seq, monotonic)


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Fleet:
    """Drives N workspaces from one scheduler task (a heap of due actions), so the
    driver's own cost stays small next to the sidecar classes it drives."""

    def __init__(self, info: _fakes_proc.Info, session: aiohttp.ClientSession, n: int) -> None:
        self.metrics = Metrics()
        token = TokenSource(value=info["token"])
        client = CoderClient(session=session, base_url=info["coder"], token=token)
        self.workspaces: list[Workspace] = []
        self.uploaders: list[Uploader] = []
        self.relays: list[Relay] = []
        for i in range(n):
            mirror = Mirror(10)
            uploader = Uploader(
                client=client,
                task_id=uuid.UUID(info["tasks"][i]),
                mirror=mirror,
                metrics=self.metrics,
                interval=INTERVAL,
            )
            relay = Relay(
                client=client, slug="claude-code", policy=RelayPolicy(), metrics=self.metrics
            )
            hub = Hub(mirror=mirror, uploader=uploader, relay=relay)
            self.uploaders.append(uploader)
            self.relays.append(relay)
            self.workspaces.append(Workspace(i, hub, random.Random(i)))
        self.events = 0
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for ws in self.workspaces:
            # connected to an agentapi with an empty, stable conversation
            ws.hub.on_reachable(True)
            ws.hub.on_event(ReplayStarted())
            ws.hub.on_event(StatusChange(AgentStatus.STABLE))
        for uploader, relay in zip(self.uploaders, self.relays, strict=True):
            self.tasks.append(asyncio.create_task(uploader.run()))
            self.tasks.append(asyncio.create_task(relay.run()))

    def _message(self, ws: Workspace, msg: Message) -> None:
        ws.hub.on_event(MessageUpdate(msg))
        ws.changes.append((ws.seq, time.monotonic()))
        self.events += 1

    def step(self, ws: Workspace, action: str, now: float) -> tuple[float, str] | None:
        """Apply one scripted action; the next (due time, action) or None."""
        rng = ws.rng
        if action == "user":
            ws.seq += 1
            ws.agent_text = ""
            msg = Message(ws.next_id, "user", f"task {ws.seq}: fix it [seq={ws.seq}]", stamp())
            ws.next_id += 1
            self._message(ws, msg)
            ws.hub.on_event(StatusChange(AgentStatus.RUNNING))
            ws.turn_ends_at = now + rng.uniform(10, 40)
            ws.agent_id = ws.next_id
            ws.next_id += 1
            return now + rng.uniform(0.1, 0.5), "update"
        if action == "update":
            ws.seq += 1
            ws.agent_text = (ws.agent_text + f"step {ws.seq} done [seq={ws.seq}]\n")[-3000:]
            self._message(ws, Message(ws.agent_id, "agent", ws.agent_text, stamp()))
            due = now + rng.uniform(0.2, 0.8)
            return (due, "update") if due < ws.turn_ends_at else (ws.turn_ends_at, "stable")
        if action == "stable":
            ws.hub.on_event(StatusChange(AgentStatus.STABLE))
            self.events += 1
            return now + rng.uniform(5, 30), "user"
        raise ValueError(action)

    async def drive(self, seconds: float) -> None:
        start = time.monotonic()
        heap: list[tuple[float, int, str]] = []
        for ws in self.workspaces:
            # staggered first turns, like a fleet whose agents started at different times
            heapq.heappush(heap, (start + ws.rng.uniform(0, 10), ws.index, "user"))
        end = start + seconds
        while heap:
            due, index, action = heap[0]
            if due >= end:
                return
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                continue
            heapq.heappop(heap)
            nxt = self.step(self.workspaces[index], action, now)
            if nxt is not None:
                heapq.heappush(heap, (nxt[0], index, nxt[1]))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def staleness(
    fleet: Fleet, records: list[_fakes_proc.Record], tasks: list[str]
) -> tuple[list[float], int]:
    """Per change: first accepted POST for that task whose body holds that seq or a newer
    one, minus the change time. Returns (delays, changes never stored)."""
    by_task: dict[str, list[tuple[int, float]]] = {}
    for method, path, at, status, seq in records:
        if method == "POST" and status == 204 and seq is not None:
            task = path.split("/tasks/")[1].split("/")[0]
            by_task.setdefault(task, []).append((seq, at))
    delays: list[float] = []
    missing = 0
    for ws in fleet.workspaces:
        stored = sorted(by_task.get(tasks[ws.index], []), key=lambda x: x[1])
        # the highest seq stored so far, in arrival order
        best: list[tuple[float, int]] = []
        top = -1
        for seq, at in stored:
            if seq > top:
                top = seq
                best.append((at, seq))
        j = 0
        for seq, t in ws.changes:
            while j < len(best) and best[j][1] < seq:
                j += 1
            if j == len(best):
                missing += 1
                continue
            delays.append(max(0.0, best[j][0] - t))
    return delays, missing


async def fleet_run(n: int, seconds: float, drain: float) -> dict[str, Any]:
    spec: _fakes_proc.Spec = {"kind": "coder", "tasks": n}
    async with _fakes_proc.Fakes(spec) as fakes:
        info = fakes.info
        connector = aiohttp.TCPConnector(limit=0)  # one keep-alive connection per workspace
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            fleet = Fleet(info, session, n)
            fleet.start()
            await asyncio.sleep(2.0)  # the first (idle) status of every workspace is sent
            cpu0, t0 = time.process_time(), time.monotonic()
            await fleet.drive(seconds)
            t1, cpu1 = time.monotonic(), time.process_time()
            await asyncio.sleep(drain)  # let the last changes be delivered
            await fleet.stop()
        records = await fakes.records()
    window = [r for r in records if t0 <= r[2] < t1]
    posts = [r for r in window if r[0] == "POST"]
    patches = [r for r in window if r[0] == "PATCH"]
    delays, missing = staleness(fleet, records, info["tasks"])
    changes = sum(len(ws.changes) for ws in fleet.workspaces)
    return {
        "n": n,
        "seconds": t1 - t0,
        "requests": len(window),
        "posts": len(posts),
        "patches": len(patches),
        "failed": sum(1 for r in window if r[3] not in (200, 204)),
        "changes": changes,
        "events": fleet.events,
        "delays": delays,
        "missing": missing,
        "cpu_share": (cpu1 - cpu0) / (t1 - t0),
    }


# --- report -----------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    idle_s = 5.0 if args.quick else 15.0
    stream_s = 10.0 if args.quick else 60.0
    n = args.workspaces or (100 if args.quick else 1000)
    fleet_s = args.fleet_seconds or (10.0 if args.quick else 30.0)
    _common.quiet_logs()
    _common.note(_common.machine_line())

    one = await one_agent(idle_s, stream_s)
    idle, streaming, turn_end = one["idle"], one["streaming"], one["turn_end"]
    idle_total = sum(idle.values())
    per_min = 60.0 / one["stream_s"]
    stream_posts = streaming["POST snapshot"] + turn_end["POST snapshot"]
    stream_all = sum(streaming.values()) + sum(turn_end.values())
    # one post when the turn starts, then one per interval, then one when it ends
    expected_posts = math.ceil(stream_s / INTERVAL) + 1
    naive = one["stream_updates"] + 1
    rows = [
        [
            f"idle ({one['idle_s']:.0f} s window)",
            idle["POST snapshot"],
            idle["PATCH app-status"],
            idle["other"],
            _common.fmt(idle_total * 60.0 / one["idle_s"]),
            "0",
            "—",
            _common.verdict(idle_total == 0),
        ],
        [
            f"streaming {STREAM_RATE}/s for {one['stream_s']:.0f} s + turn end",
            f"{streaming['POST snapshot']} + {turn_end['POST snapshot']}",
            f"{streaming['PATCH app-status']} + {turn_end['PATCH app-status']}",
            streaming["other"] + turn_end["other"],
            f"{stream_posts * per_min:.1f} POST ({stream_all * per_min:.1f} all)",
            f"≤ {expected_posts} POST here (⌈{stream_s:.0f}/{INTERVAL:.0f}⌉ + 1); "
            f"≤ {AIM_STREAM_PER_MIN}/min for 60 s",
            _common.ratio(stream_posts, naive),
            _common.verdict(stream_posts <= min(expected_posts, AIM_STREAM_PER_MIN)),
        ],
    ]
    _common.table(
        f"One agent, real daemon, {INTERVAL:.0f} s interval: requests to Coder",
        [
            "phase",
            "POST snapshot",
            "PATCH status",
            "other",
            "per minute",
            "aim",
            "POSTs vs one per update",
            "verdict",
        ],
        rows,
    )
    _common.note(
        f"streaming: {one['stream_updates']:,} updates sent; newest content stored after the "
        f"turn: {one['newest_stored']}; daemon exit after SIGTERM: {one['exit']}; agentapi "
        f"requests while idle: {one['idle_agentapi']} (the /status liveness probe)."
    )

    f = await fleet_run(n, fleet_s, drain=INTERVAL + 2.0)
    d = f["delays"]
    rps = f["requests"] / f["seconds"]
    _common.table(
        f"Fleet: {n:,} workspaces in one process → one FakeCoder, {f['seconds']:.0f} s of "
        "scripted turns",
        ["figure", "value", "note"],
        [
            ["requests/s at the server", f"{rps:,.1f}", f"{f['requests']:,} in the window"],
            [
                "  snapshot POST/s",
                f"{f['posts'] / f['seconds']:,.1f}",
                f"{f['posts'] / f['seconds'] / n * 60:.2f}/min per workspace",
            ],
            [
                "  app-status PATCH/s",
                f"{f['patches'] / f['seconds']:,.1f}",
                f"{f['patches'] / f['seconds'] / n * 60:.2f}/min per workspace",
            ],
            ["  answered other than 200/204", f["failed"], ""],
            [
                "conversation changes/s (one POST each if naive)",
                f"{f['changes'] / f['seconds']:,.1f}",
                f"POSTs vs naive {_common.ratio(f['posts'], f['changes'])}",
            ],
            ["staleness p50 s", _common.fmt(_common.percentile(d, 50), 2), "change → stored"],
            [
                "staleness p99 s",
                _common.fmt(_common.percentile(d, 99), 2),
                f"interval {INTERVAL:.0f} s: {_common.ratio(_common.percentile(d, 99), INTERVAL)}",
            ],
            ["staleness max s", _common.fmt(max(d) if d else None, 2), ""],
            ["changes never stored", f["missing"], f"of {f['changes']:,}"],
            [
                "driver process CPU share",
                f"{f['cpu_share'] * 100:.0f} %",
                "of one core; near 100 % would mean the simulation itself saturates",
            ],
        ],
    )
    return 0


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--workspaces", type=int, default=0, help="fleet size")
    p.add_argument("--fleet-seconds", type=float, default=0, help="scripted fleet time")
    args = p.parse_args()
    _common.run(lambda: main_async(args), timeout=600)


if __name__ == "__main__":
    main()

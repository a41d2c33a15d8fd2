"""Server load: what the sidecar costs the Coder server, for one agent and for a fleet.

    python bench/server_load.py [--quick] [--workspaces N] [--fleet-seconds S] [--seeds K]
                                [--seed N] [--outage-seconds S] [--jobs J] [--skip-one-agent]

1. One agent, the real `coder-task-sidecar run` process against the loopback fakes
   (FakeAgentapi + FakeCoder), relay on, 30 s snapshot interval (the default). It
   starts while the agent finishes a turn, whose end posts the first snapshot promptly
   (the first post of a start alone would wait for a random point of the first two
   intervals).
   a. idle: after it settled, requests to Coder during an idle window (aim: 0/min);
   b. streaming: one turn with 50 message updates a second for 60 s, then `stable`
      (aim: at most one snapshot per interval plus one per finished turn: ≤ 3/min).
2. A fleet of N workspaces (default 1,000), each with the real Hub, Mirror, Uploader and
   Relay, on an event loop whose clock is virtual (tests/fakes/clock.py) against an
   in-process Coder that records every request with its time and body size (see
   bench/_fleet.py): exact timings, and minutes of a fleet in seconds of CPU. Agents
   stream about 30 % of the time (user message, `running`, a reply growing ~2 updates a
   second to a few KiB to tens of KiB, `stable`). Reported, for today's cadence (5 s
   interval, first post at once, the uploader and the relay retrying on Backoff(0.5, 30),
   the connect's first `stable` taken for a turn end) and the new one (the product's
   defaults: 30 s, the first post spread over the first two intervals, a turn ending on
   running → stable posted promptly,
   the relay retrying on `sidecar.relay.delivery.retry_policy()`) side by side:
   requests/s and snapshot bytes/s at the server, the
   staleness of finished turns (`stable` → stored) and of streaming turns (how far the
   stored snapshot is behind the newest text, sampled every second); then intervals of
   5, 15, 30 and 60 s; then "Coder restarts" (Coder refuses connections for 60 s, as a
   stopped or restarting coderd does: the busiest second after it is back) and "fleet
   starts together" (every sidecar starts at the same instant). Both peak figures are the
   worst over K seeds (default 3), as the share of the fleet posting snapshots in one
   second (the aim) and sending any request. At a common start one proposal the product
   does not have is measured as an extra column, emulated in the bench: the relay's first
   report held until the first post is due (see Cadence in bench/_fleet.py; sidecar/ is
   not changed). "today" emulates the old hub's rule the same way.

The in-process Coder answers like FakeCoder (204, 200; 400 for a body over 64 KiB or a
status message over 160 bytes) after 20 ms; down, it refuses connections (no status,
retried). No real-HTTP fleet is run: the HTTP path is exercised by part 1 and by the
other benchmarks, and in real time a 1,000-workspace fleet on 2 cores measures the
machine more than the cadence.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import math
import multiprocessing
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import _common  # first: puts the repo root on sys.path
import _fleet
from _fleet import FIRST_POST_SPREAD, Cadence, Outage, Restart, Start, Steady

from sidecar.relay.delivery import retry_policy as relay_retry_policy
from sidecar.settings import Settings
from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import serve
from tests.e2e.harness import SidecarProcess, base_env

# the default SIDECAR_SNAPSHOT_INTERVAL
INTERVAL: float = Settings.model_fields["sidecar_snapshot_interval"].default
AIM_STREAM_PER_MIN = math.ceil(60 / INTERVAL) + 1  # one per interval + the turn's end
STREAM_RATE = 50  # updates per second

# The fleet's aims, for 1,000 busy workspaces.
AIM_REQUESTS_PER_S = 50.0
AIM_BYTES_PER_S = 2e6  # MB = 10^6 bytes
AIM_FINISHED_S = 2.0
AIM_PEAK_SHARE = 0.05  # no second with more of the fleet posting snapshots

# Before this work: 5 s, first post at once, both on Backoff(base=0.5, cap=30), and the
# connect's first `stable` urgent (the old hub's rule, emulated).
TODAY_BACKOFF = (0.5, 30.0)
TODAY = Cadence(
    "today",
    interval=5.0,
    spread_first=False,
    upload_backoff=TODAY_BACKOFF,
    relay_backoff=TODAY_BACKOFF,
    legacy_connect_urgent=True,
)
# The product's defaults: among them the first post spread over the first two intervals.
NEW = Cadence("new", interval=INTERVAL)
FIRST_WINDOW = FIRST_POST_SPREAD * INTERVAL  # the default's: 60 s
INTERVALS = (5.0, 15.0, 30.0, 60.0)
# Proposed at a common start (not in the product): the relay's first report goes when the
# first post is due (the start's one random offset, over the first two intervals).
NEW_RELAY_FIRST = Cadence(
    "new + relay first", interval=INTERVAL, proposed_relay_with_first_post=True
)


def _relay_backoff() -> tuple[float, float]:
    """(base, cap) of the product's relay schedule, read off its ceilings."""
    transient = relay_retry_policy().transient
    return transient.ceiling(0), transient.ceiling(64)


RELAY_BACKOFF = _relay_backoff()

# Fleet timings (loop seconds): sidecars start over the first START_STAGGER s (a fleet
# that has run for a while, not one that started together), then a warm-up.
START_STAGGER = 60.0
WARM_UP = START_STAGGER + 60.0
OUTAGE_AT = WARM_UP + 60.0
AFTER_OUTAGE = 90.0
START_HORIZON = 90.0


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
    # The sidecar starts while the agent finishes a turn.
    agentapi, coder = FakeAgentapi(status="running"), FakeCoder()
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
            t_start = time.monotonic()
            await proc.start()
            assert proc.proc is not None
            _common.track(proc.proc)
            try:
                # settle: the first status ("working") is reported at once; the first
                # snapshot of a start waits for a random point of the first two
                # intervals, unless a turn ends first: end it (running → stable), so the
                # snapshot goes promptly and the relay reports "idle"
                await coder.wait_for(lambda: bool(coder.app_statuses), timeout=20)
                agentapi.set_status("stable")
                await coder.wait_for(
                    lambda: (
                        bool(coder.accepted_snapshot_posts())
                        and coder.app_statuses[-1].state == "idle"
                    ),
                    timeout=20,
                )
                result["settle_s"] = time.monotonic() - t_start
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


# --- 2. the fleet, on a virtual clock ----------------------------------------------------

R = TypeVar("R")


class Runner:
    """Simulation jobs in worker processes (spawned: fresh interpreters, no inherited
    event loop), at most `jobs` at a time; the workers are killed with the benchmark."""

    def __init__(self, jobs: int) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn")
        )
        self._tracked: set[int] = set()

    def submit(self, fn: Callable[..., R], **kwargs: Any) -> asyncio.Future[R]:
        future = asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, **kwargs)
        )
        for pid, proc in list(self.pool._processes.items()):
            if pid not in self._tracked:
                self._tracked.add(pid)
                _common.track(proc)
        return future

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Plan:
    n: int
    window: tuple[float, float]
    seeds: tuple[int, ...]
    outage: Outage


def aim_scale(n: int) -> float:
    """The rate aims are for 1,000 workspaces; a smaller fleet gets its share."""
    return n / 1000


def f1(x: float) -> str:
    return _common.fmt(x, 1)


def f2(x: float) -> str:
    return _common.fmt(x, 2)


def mb(x: float) -> str:
    return _common.fmt(x / 1e6, 2)


def share(ws: int, n: int) -> str:
    return f"{ws / n * 100:.1f} %"


def fleet_table(plan: Plan, today: Steady, new: Steady) -> None:
    n, (t0, t1) = plan.n, plan.window
    k = aim_scale(n)
    v = _common.verdict
    aim_req, aim_bytes = AIM_REQUESTS_PER_S * k, AIM_BYTES_PER_S * k

    def row(
        label: str, a: float, b: float, show: Callable[[float], str], aim: float | None = None
    ) -> list[str]:
        return [
            label,
            show(a),
            show(b),
            _common.ratio(b, a),
            "" if aim is None else f"≤ {show(aim)}",
            "" if aim is None else v(a <= aim),
            "" if aim is None else v(b <= aim),
        ]

    _common.table(
        f"Fleet: {n:,} busy workspaces, {t1 - t0:.0f} s (virtual clock): today's cadence "
        f"(5 s, first post at once) vs the new one ({INTERVAL:.0f} s, first post spread "
        f"over {FIRST_WINDOW:.0f} s, finished turns promptly)",
        ["figure", "today", "new", "new vs today", "aim", "today", "new"],
        [
            row("requests/s at the server", today.requests_per_s, new.requests_per_s, f1, aim_req),
            row("  snapshot POST/s", today.posts_per_s, new.posts_per_s, f1),
            row("  app-status PATCH/s", today.patches_per_s, new.patches_per_s, f1),
            row("snapshot bodies MB/s", today.bytes_per_s, new.bytes_per_s, mb, aim_bytes),
            row("  mean body KiB", today.mean_body / 1024, new.mean_body / 1024, f1),
            row("finished turn stable → stored p50 s", today.finished.p50, new.finished.p50, f2),
            row("  p99 s", today.finished.p99, new.finished.p99, f2),
            row("  max s", today.finished.max, new.finished.max, f2, AIM_FINISHED_S),
            [
                "  finished turns (never stored)",
                f"{today.finished.count:,} ({today.finished_missing})",
                f"{new.finished.count:,} ({new.finished_missing})",
                "",
                "",
                "",
                "",
            ],
            row(
                "streaming: stored behind newest p50 s", today.streaming.p50, new.streaming.p50, f1
            ),
            row("  p99 s", today.streaming.p99, new.streaming.p99, f1),
            row("  max s", today.streaming.max, new.streaming.max, f1),
            [
                "busiest second: requests / workspaces",
                f"{today.peak_requests} / {today.peak_workspaces}",
                f"{new.peak_requests} / {new.peak_workspaces}",
                "",
                "",
                "",
                "",
            ],
            row(
                "conversation changes/s (one POST each if naive)",
                today.changes_per_s,
                new.changes_per_s,
                f1,
            ),
            row("measured duty cycle %", today.duty * 100, new.duty * 100, f1),
        ],
    )
    _common.note(
        f"Staleness of streaming turns: sampled every second for every workspace inside a "
        f"turn ({new.streaming.count:,} samples): the age of the oldest streamed text the "
        "stored snapshot lacks (0 when it holds the newest), i.e. what a workspace dying "
        "at that moment would lose. Rejected requests (400): "
        f"{today.rejected} / {new.rejected}. Simulation CPU: {today.cpu_s:.0f} s / "
        f"{new.cpu_s:.0f} s for {today.simulated_s:.0f} s of fleet time."
    )


def intervals_table(plan: Plan, runs: Sequence[tuple[float, Steady]]) -> None:
    k = aim_scale(plan.n)
    v = _common.verdict
    rows = []
    for interval, s in runs:
        rows.append(
            [
                f"{interval:.0f} s" + (" (default)" if interval == INTERVAL else ""),
                f1(s.posts_per_s),
                f1(s.requests_per_s),
                mb(s.bytes_per_s),
                f1(s.streaming.p50),
                f1(s.streaming.p99),
                f1(s.streaming.max),
                f2(s.finished.max),
                "/".join(
                    v(ok)
                    for ok in (
                        s.requests_per_s <= AIM_REQUESTS_PER_S * k,
                        s.bytes_per_s <= AIM_BYTES_PER_S * k,
                        s.finished.max <= AIM_FINISHED_S,
                    )
                ),
            ]
        )
    _common.table(
        f"Snapshot interval: {plan.n:,} busy workspaces, new code (first post spread over "
        f"two intervals), {plan.window[1] - plan.window[0]:.0f} s",
        [
            "interval",
            "POST/s",
            "requests/s",
            "snapshot MB/s",
            "streaming behind p50 s",
            "p99 s",
            "max s",
            "finished max s",
            "aims: req/s, MB/s, finished ≤ 2 s",
        ],
        rows,
    )
    late = [f"{i:.0f} s from {steady_window(plan, i)[0]:.0f} s" for i, _s in runs]
    _common.note(
        "The streaming figure is what a workspace that dies mid-turn loses: up to about one "
        "interval of the turn in progress (after a start, up to two: the first periodic "
        "post waits for a random point of the first two intervals). A finished turn is "
        "stored promptly at every interval (an urgent post waits at most min(1 s, "
        "interval) after the previous one, and not for the first post's offset). Each row "
        "is measured once every sidecar's first post is due (sidecars start over the "
        f"first {START_STAGGER:.0f} s; the window opens at the later of {WARM_UP:.0f} s "
        f"and {START_STAGGER:.0f} s + two intervals): {', '.join(late)}."
    )


def steady_window(plan: Plan, interval: float) -> tuple[float, float]:
    """The measured window of a steady run at `interval`: plan.window, moved later if the
    last sidecar's first post could still be pending when it opens."""
    t0, t1 = plan.window
    start = max(t0, START_STAGGER + FIRST_POST_SPREAD * interval)
    return start, start + (t1 - t0)


def worst(values: Sequence[float]) -> float:
    return max(values)


def peaks(cols: Sequence[tuple[str, Sequence[R]]], get: Callable[[R], int]) -> list[str]:
    """Per column: the worst over the seeds, with their range in brackets."""
    out = []
    for _name, runs in cols:
        vals = [get(r) for r in runs]
        spread = f" ({min(vals)}–{max(vals)})" if len(vals) > 1 else ""
        out.append(f"{max(vals)}{spread}")
    return out


def share_rows(
    n: int,
    cols: Sequence[tuple[str, Sequence[R]]],
    when: str,
    posting: Callable[[R], int],
    anything: Callable[[R], int],
) -> list[list[str]]:
    """The aim's rows: (a) workspaces posting snapshots in the busiest second, with the
    verdict; (b) workspaces sending any request (POST or PATCH), shown beside it."""
    aim = AIM_PEAK_SHARE * n
    busiest = f"busiest second {when}" if when else "busiest second"
    post_ws = [max(posting(r) for r in runs) for _name, runs in cols]
    any_ws = [max(anything(r) for r in runs) for _name, runs in cols]
    return [
        [
            f"(a) {busiest}: workspaces posting (snapshot POSTs)",
            *peaks(cols, posting),
            f"≤ {aim:.0f}",
        ],
        [
            "  share of the fleet",
            *[share(w, n) for w in post_ws],
            f"≤ {AIM_PEAK_SHARE * 100:.0f} %",
        ],
        ["  verdict (the aim)", *[_common.verdict(w <= aim) for w in post_ws], ""],
        [
            f"(b) {busiest}: workspaces sending any request",
            *peaks(cols, anything),
            "(shown, not the aim)",
        ],
        ["  share of the fleet", *[share(w, n) for w in any_ws], ""],
    ]


def restart_table(plan: Plan, cols: Sequence[tuple[str, Sequence[Restart]]]) -> None:
    n = plan.n
    o = plan.outage

    def cells(get: Callable[[Restart], float], show: Callable[[float], str]) -> list[str]:
        return [show(worst([get(r) for r in runs])) for _name, runs in cols]

    def d(x: float) -> str:
        return str(round(x))

    _common.table(
        f"Coder restarts: {n:,} busy workspaces, Coder refuses connections for "
        f"{o.seconds:.0f} s, then is back (worst of {len(plan.seeds)} seed(s); ranges in "
        "brackets)",
        ["figure", *[name for name, _runs in cols], "aim"],
        [
            [
                "failed attempts/s during the outage (503s would hit the server)",
                *cells(lambda r: r.refused_per_s, f1),
                "",
            ],
            ["workspaces refused at least once", *cells(lambda r: r.refused_workspaces, d), ""],
            ["busiest second before: requests", *peaks(cols, lambda r: r.before_requests), ""],
            [
                "busiest second before: workspaces posting / any request",
                *[
                    f"{p} / {a}"
                    for p, a in zip(
                        peaks(cols, lambda r: r.before_post_workspaces),
                        peaks(cols, lambda r: r.before_workspaces),
                        strict=True,
                    )
                ],
                "",
            ],
            ["busiest second after: requests", *peaks(cols, lambda r: r.peak_requests), ""],
            ["  of which snapshot POSTs (own peak)", *peaks(cols, lambda r: r.peak_posts), ""],
            ["  of which status PATCHes (own peak)", *peaks(cols, lambda r: r.peak_patches), ""],
            *share_rows(
                n,
                cols,
                "after",
                lambda r: r.peak_post_workspaces,
                lambda r: r.peak_workspaces,
            ),
            [
                "back → first snapshot through p50 s",
                *cells(lambda r: r.recovered_posts.p50, f1),
                "",
            ],
            ["  p99 s", *cells(lambda r: r.recovered_posts.p99, f1), ""],
            [
                "back → first status through p50 s",
                *cells(lambda r: r.recovered_patches.p50, f1),
                "",
            ],
            ["  p99 s", *cells(lambda r: r.recovered_patches.p99, f1), ""],
            ["  max s", *cells(lambda r: r.recovered_patches.max, f1), ""],
        ],
    )


def start_table(plan: Plan, cols: Sequence[tuple[str, Sequence[Start]]]) -> None:
    n = plan.n

    def cells(get: Callable[[Start], float]) -> list[str]:
        return [f1(worst([get(r) for r in runs])) for _name, runs in cols]

    _common.table(
        f"Fleet starts together: {n:,} sidecars start at the same instant, each agent "
        f"holding a conversation (about 30 % mid-turn) (worst of {len(plan.seeds)} "
        "seed(s); ranges in brackets)",
        ["figure", *[name for name, _runs in cols], "aim"],
        [
            ["busiest second: requests", *peaks(cols, lambda r: r.peak_requests), ""],
            ["  of which snapshot POSTs (own peak)", *peaks(cols, lambda r: r.peak_posts), ""],
            ["  of which status PATCHes (own peak)", *peaks(cols, lambda r: r.peak_patches), ""],
            *share_rows(n, cols, "", lambda r: r.peak_post_workspaces, lambda r: r.peak_workspaces),
            ["last workspace's first snapshot stored at s", *cells(lambda r: r.first_post_max), ""],
            [
                "last workspace's first status accepted at s",
                *cells(lambda r: r.first_patch_max),
                "",
            ],
        ],
    )


def aims_table(
    plan: Plan,
    restarts: Sequence[tuple[str, Sequence[Restart]]],
    starts: Sequence[tuple[str, Sequence[Start]]],
) -> None:
    """The peak-share aim in one place: both counts, the verdict on (a)."""
    n = plan.n
    aim = AIM_PEAK_SHARE * n
    rows: list[list[str]] = []

    def add(when: str, name: str, posting: int, anything: int) -> None:
        rows.append(
            [
                when,
                name,
                f"{share(posting, n)} ({posting})",
                _common.verdict(posting <= aim),
                f"{share(anything, n)} ({anything})",
            ]
        )

    for name, rs in restarts:
        add(
            f"after a {plan.outage.seconds:.0f} s outage",
            name,
            max(r.peak_post_workspaces for r in rs),
            max(r.peak_workspaces for r in rs),
        )
    for name, ss in starts:
        add(
            "at a common start",
            name,
            max(s.peak_post_workspaces for s in ss),
            max(s.peak_workspaces for s in ss),
        )
    _common.table(
        f"Aim: no second with more than {AIM_PEAK_SHARE * 100:.0f} % of the fleet posting "
        f"(≤ {aim:.0f} of {n:,} workspaces; worst of {len(plan.seeds)} seed(s))",
        [
            "when",
            "cadence",
            "(a) peak share posting (snapshot POSTs)",
            "verdict on (a)",
            "(b) peak share sending any request",
        ],
        rows,
    )


# --- report -----------------------------------------------------------------------------


def one_agent_report(one: dict[str, Any], idle_s: float, stream_s: float) -> None:
    idle, streaming, turn_end = one["idle"], one["streaming"], one["turn_end"]
    idle_total = sum(idle.values())
    per_min = 60.0 / one["stream_s"]
    stream_posts = streaming["POST snapshot"] + turn_end["POST snapshot"]
    stream_all = sum(streaming.values()) + sum(turn_end.values())
    # at most one post per interval while it streams, then one when the turn ends
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
        f"requests while idle: {one['idle_agentapi']} (the /status liveness probe); "
        f"settled (first snapshot and status delivered) {one['settle_s']:.1f} s after the "
        "start."
    )


async def main_async(args: argparse.Namespace) -> int:
    idle_s = 5.0 if args.quick else 15.0
    stream_s = 10.0 if args.quick else 60.0
    n = args.workspaces or (200 if args.quick else 1000)
    span = args.fleet_seconds or (120.0 if args.quick else 300.0)
    seeds = tuple(range(args.seed, args.seed + (args.seeds or (1 if args.quick else 3))))
    plan = Plan(
        n=n,
        window=(WARM_UP, WARM_UP + span),
        seeds=seeds,
        outage=Outage(OUTAGE_AT, args.outage_seconds),
    )
    _common.quiet_logs()
    _common.note(_common.machine_line())

    runner = Runner(args.jobs)
    try:
        wall = time.perf_counter()
        # Every simulation is queued at once; the real-time run below overlaps them.
        steady = {
            name: runner.submit(
                _fleet.steady_job,
                n=n,
                cadence=cadence,
                seed=seeds[0],
                start_spread=START_STAGGER,
                window=steady_window(plan, cadence.interval),
            )
            for name, cadence in [
                ("today", TODAY),
                *[(f"new {i:.0f}", Cadence("new", interval=i)) for i in INTERVALS],
            ]
        }
        restart_cols = [TODAY, NEW]
        restarts = [
            [
                runner.submit(
                    _fleet.outage_job,
                    n=n,
                    cadence=c,
                    seed=seed,
                    start_spread=START_STAGGER,
                    warm_up=WARM_UP,
                    outage=plan.outage,
                    after=AFTER_OUTAGE,
                )
                for seed in seeds
            ]
            for c in restart_cols
        ]
        start_cols = [TODAY, NEW, NEW_RELAY_FIRST]
        starts = [
            [
                runner.submit(_fleet.start_job, n=n, cadence=c, seed=seed, horizon=START_HORIZON)
                for seed in seeds
            ]
            for c in start_cols
        ]

        if not args.skip_one_agent:
            one = await one_agent(idle_s, stream_s)
            one_agent_report(one, idle_s, stream_s)

        today = await steady["today"]
        by_interval = [(i, await steady[f"new {i:.0f}"]) for i in INTERVALS]
        new = dict(by_interval)[INTERVAL]
        fleet_table(plan, today, new)
        intervals_table(plan, by_interval)
        restart_runs = [[await f for f in runs] for runs in restarts]
        restart_named = [
            ("today (5 s)", restart_runs[0]),
            (f"new ({INTERVAL:.0f} s)", restart_runs[1]),
        ]
        restart_table(plan, restart_named)
        restart_notes(plan, new, restart_runs[0], restart_runs[1])
        start_runs = [[await f for f in runs] for runs in starts]
        start_named = [
            ("today (5 s)", start_runs[0]),
            (f"new ({INTERVAL:.0f} s)", start_runs[1]),
            ("new + relay's first report with the first post (emulated)", start_runs[2]),
        ]
        start_table(plan, start_named)
        start_notes(plan, start_runs[0], start_runs[1], start_runs[2])
        aims_table(plan, restart_named, start_named)
        if n < 1000:
            _common.note(
                f"(A fleet of {n:,}: the rate aims are scaled to it, but the share aims are "
                "for 1,000 workspaces; a small fleet's busiest second is a larger share of it "
                "even in steady state — see 'busiest second before'.)"
            )
        _common.note(
            f"Fleet simulations: {time.perf_counter() - wall:.0f} s wall, {args.jobs} worker(s)."
        )
    finally:
        runner.close()
    return 0


def _ceilings(base: float, cap: float) -> str:
    """Full jitter's ceilings until the cap: '5, 10, 20, 40, 60'."""
    out: list[str] = []
    c = base
    while c < cap:
        out.append(f"{c:g}")
        c *= 2
    out.append(f"{cap:g}")
    return ", ".join(out)


def restart_notes(
    plan: Plan, steady: Steady, today: Sequence[Restart], new: Sequence[Restart]
) -> None:
    wt = max(today, key=lambda r: r.peak_post_workspaces)
    wn = max(new, key=lambda r: r.peak_post_workspaces)
    pt = max(r.peak_patches for r in today)
    pn = max(r.peak_patches for r in new)
    base, cap = RELAY_BACKOFF
    tb, tc = TODAY_BACKOFF
    _common.note(
        "Causes. Snapshot POSTs: a failed post is retried once its back-off is over and a "
        "full interval has passed since the last attempt (Uploader.run waits for "
        "Delivery.ready_at(interval); only a turn that ends asks for less, min(1 s, "
        "interval)), so the workspaces left with an undelivered snapshot come back spread "
        f"over about one interval: {wt.peak_post_workspaces} workspaces posting in the "
        f"busiest second after the comeback with today's 5 s, {wn.peak_post_workspaces} "
        f"({share(wn.peak_post_workspaces, plan.n)}) with {INTERVAL:.0f} s. The uploader "
        f"keeps RetryPolicy()'s Backoff(base={tb:g}, cap={tc:g}) in both: its stop flush "
        "retries within the shutdown budget. Status PATCHes: the relay waits for its "
        "back-off alone (full jitter; at most one PATCH a second). Today it retried on the "
        f"uploader's Backoff(base={tb:g}, cap={tc:g}) (ceilings {_ceilings(tb, tc)} s); "
        "the product gives it sidecar.relay.delivery.retry_policy(), "
        f"Backoff(base={base:g}, cap={cap:g}) (ceilings {_ceilings(base, cap)} s), so "
        "after a minute's outage the relays with a status to deliver come back spread over "
        f"up to {cap:g} s: busiest second of PATCHes {pt} → {pn}; refused attempts during "
        f"the outage {max(r.refused_per_s for r in today):.0f}/s → "
        f"{max(r.refused_per_s for r in new):.0f}/s (the new cadence in steady state: "
        f"{steady.requests_per_s:.0f} requests/s). Cost: a failed PATCH waits up to "
        f"{base:g} s for its first retry (was {tb:g} s), also the one reported on stop "
        "(SIDECAR_RELAY_ON_STOP, within the shutdown budget); after this outage every "
        "refused workspace's status was through within "
        f"{max(r.recovered_patches.max for r in new):.0f} s of the comeback (today "
        f"{max(r.recovered_patches.max for r in today):.0f} s)."
    )


def start_notes(
    plan: Plan, today: Sequence[Start], new: Sequence[Start], fix: Sequence[Start]
) -> None:
    n = plan.n
    aim = AIM_PEAK_SHARE * n
    tp = max(r.peak_post_workspaces for r in today)
    np_ = max(r.peak_post_workspaces for r in new)
    na = max(r.peak_workspaces for r in new)
    fp, fa = max(r.peak_post_workspaces for r in fix), max(r.peak_workspaces for r in fix)
    verdict = "within" if np_ <= aim else "over"
    _common.note(
        "Causes. Today every sidecar posts and reports at once (the first post is due at "
        "once, and the connect's first `stable` was a turn end as well): "
        f"{tp} workspaces posting in the busiest second. New: the uploader spreads its "
        f"first periodic post over the first two intervals ({FIRST_WINDOW:.0f} s at the "
        f"default {INTERVAL:.0f} s), and only running → stable is a turn end, so a start "
        f"posts at once only where a turn ends: {np_} workspaces posting in the busiest "
        f"second ({share(np_, n)}, {verdict} the aim of ≤ {aim:.0f}; about "
        f"{n / FIRST_WINDOW:.0f} a second on average, plus turns that end); the last "
        "workspace's first snapshot was stored "
        f"{max(r.first_post_max for r in new):.1f} s after the start (today "
        f"{max(r.first_post_max for r in today):.1f} s). The relay still reports its first "
        'state at once: the product keeps that so that a fresh task\'s status ("working" '
        "as the agent takes the prompt) reaches Coder at once rather than up to "
        f"{FIRST_WINDOW:.0f} s later. At a common start that costs a burst of PATCHes: "
        f"{max(r.peak_patches for r in new)} in the busiest second, so (b) {na} workspaces "
        f"({share(na, n)}) sending something in one second, every first status accepted "
        f"within {max(r.first_patch_max for r in new):.1f} s. Emulated, not in the "
        "product: the relay's first report waits until the first post is due (the "
        f"uploader's one draw per start, over {FIRST_WINDOW:.0f} s): {fa} workspaces "
        f"({share(fa, n)}) sending something in the busiest second, posting {fp} (the "
        "relay's timing does not move POSTs). Cost: a start's first status reaches Coder "
        f"up to {FIRST_WINDOW:.0f} s later (the last at "
        f"{max(r.first_patch_max for r in fix):.1f} s); Coder shows the previous one "
        "meanwhile."
    )


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--workspaces", type=int, default=0, help="fleet size")
    p.add_argument("--fleet-seconds", type=float, default=0, help="measured fleet time")
    p.add_argument("--seeds", type=int, default=0, help="seeds for the peak figures")
    p.add_argument("--seed", type=int, default=1, help="first seed")
    p.add_argument("--outage-seconds", type=float, default=60.0, help="Coder down this long")
    p.add_argument("--jobs", type=int, default=2, help="simulation worker processes")
    p.add_argument("--skip-one-agent", action="store_true", help="only the fleet")
    args = p.parse_args()
    _common.run(lambda: main_async(args), timeout=1800)


if __name__ == "__main__":
    main()

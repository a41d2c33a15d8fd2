"""Relay session: PATCHes sent vs distinct state changes, and the largest delay.

    python bench/relay_session.py [--quick] [--compress K] [--seed N]

A scripted 10-minute agent session (20 user turns, 200 running/stable flips, agent text
streaming while running, the last words of a turn arriving just after `stable`) drives
the real Hub → RelayPolicy → Relay, twice:

  virtual   on an event loop whose clock is virtual (it jumps to the next timer when
            nothing is ready), with an in-memory client that answers like FakeCoder
            (20 ms latency; 400 for a bad state or a message over 160 bytes): exact
            timings, runs in about a second;
  real      in real time compressed K× (default 20: 10 min in 30 s) with the real
            CoderClient against the loopback FakeCoder; the relay's 1 s rate limit,
            idle settle time and grace are scaled by 1/K, delays are scaled back by K
            (so the loopback latency counts K× too).

Both with Coder's default mapping and with SIDECAR_RELAY_SCREEN_ACTIVITY=true.
"distinct changes" are the changes of the report the policy wants; "state changes" are
counted by an independent reference model of Coder's reporter (user message → working,
stable → idle, `running` without a user message ignored unless screen activity is on).
The relay holds an `idle` report for a short settle time (Relay's `idle_settle`) so the
last words of a turn, arriving just after `stable`, make one idle PATCH instead of two.
Aim: PATCHes == distinct changes less the idle reports revised within that settle time
(none lost, none duplicated) and a small largest delay.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import _common  # first: puts the repo root on sys.path
import aiohttp

from sidecar.coder.client import CoderClient, Result
from sidecar.coder.outcomes import Outcome
from sidecar.coder.token import TokenSource
from sidecar.hub import Hub
from sidecar.mirror import Mirror
from sidecar.models import (
    AgentStatus,
    AppState,
    Event,
    Message,
    MessageUpdate,
    ReplayStarted,
    StatusChange,
)
from sidecar.relay.delivery import Relay
from sidecar.relay.policy import RelayPolicy, StatusReport
from sidecar.runtime.metrics import Metrics
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import serve
from tests.fakes.clock import run_on_virtual_clock

SESSION_S = 600.0
TURNS = 20
FLIPS = 200
LATENCY_S = 0.02
_T0 = datetime(2025, 1, 1, tzinfo=UTC)
_STATES = ("working", "idle", "complete", "failure")
# The relay's default settle time for idle reports (session seconds).
IDLE_SETTLE_S: float = inspect.signature(Relay).parameters["idle_settle"].default


# --- the script -------------------------------------------------------------------------


def script(seed: int) -> list[tuple[float, Event]]:
    """(session seconds, event) in order: TURNS turns of FLIPS / TURNS flips each."""
    rng = random.Random(seed)
    events: list[tuple[float, Event]] = []
    flips_per_turn = FLIPS // TURNS
    turn_len = SESSION_S / TURNS
    next_id = 0
    for turn in range(TURNS):
        t = turn * turn_len + 1.0
        stamp = (_T0 + timedelta(seconds=t)).isoformat().replace("+00:00", "Z")
        events.append(
            (t, MessageUpdate(Message(next_id, "user", f"Turn {turn}: fix bug #{turn}", stamp)))
        )
        agent_id = next_id + 1
        next_id += 2
        text = ""
        t += 0.05
        running = False
        for flip in range(flips_per_turn):
            running = not running
            events.append((t, StatusChange(AgentStatus.RUNNING if running else AgentStatus.STABLE)))
            gap = rng.uniform(1.2, 3.6) if flip < flips_per_turn - 1 else 0.0
            if running:
                # agent text streams in while it runs, five updates a second
                k = 1
                while k * 0.2 < gap:
                    text += f"turn {turn} flip {flip} step {k}: {'ok' if k % 3 else 'retry'}\n"
                    events.append(
                        (t + k * 0.2, MessageUpdate(Message(agent_id, "agent", text, stamp)))
                    )
                    k += 1
            else:
                # the last words of a stretch arrive just after `stable`
                text += f"turn {turn}: paused after flip {flip} ✓\n"
                events.append((t + 0.1, MessageUpdate(Message(agent_id, "agent", text, stamp))))
            t += gap
    events.sort(key=lambda e: e[0])
    return events


def reference_states(events: list[tuple[float, Event]], screen_activity: bool) -> int:
    """State changes by an independent model of Coder's reporter (state only)."""
    state: str | None = "idle"  # the replay on connect ends `stable`: the first report
    changes = 1
    user_id = -1
    status = AgentStatus.STABLE
    for _t, event in events:
        new = state
        if isinstance(event, MessageUpdate) and event.message.role == "user":
            if event.message.id > user_id:
                user_id = event.message.id
                new = "working"
        elif isinstance(event, StatusChange):
            if event.status is AgentStatus.STABLE:
                new = "idle"
            elif screen_activity and status is not AgentStatus.RUNNING:
                new = "working"
            status = event.status
        if new != state:
            changes += 1
            state = new
    return changes


class RecordingClient:
    """In-memory StatusClient with FakeCoder's app-status rules and a fixed latency."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.patches: list[tuple[float, StatusReport, int]] = []  # (sent at, report, status)

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str, timeout: float | None = None
    ) -> Result:
        sent = self.clock()
        await asyncio.sleep(LATENCY_S)
        ok = len(message.encode()) <= 160 and str(state) in (
            "working",
            "idle",
            "complete",
            "failure",
        )
        status = 200 if ok else 400
        self.patches.append((sent, StatusReport(state, message, uri), status))
        outcome = Outcome.OK if ok else Outcome.REJECTED
        return Result(outcome, status, "" if ok else "invalid", None, LATENCY_S * 1000)

    async def reload_token(self) -> bool:
        return False


# --- one run ----------------------------------------------------------------------------


@dataclass
class Outcome_:
    changes: list[tuple[float, StatusReport]] = field(default_factory=list)
    patches: list[tuple[float, StatusReport, int]] = field(default_factory=list)
    wall: float = 0.0


async def drive(
    events: list[tuple[float, Event]],
    relay: Relay,
    policy: RelayPolicy,
    clock: Callable[[], float],
    scale: float,
) -> list[tuple[float, StatusReport]]:
    """Feed the script through the Hub at its times (session seconds × scale); returns
    the wanted-report changes as (session seconds, report)."""
    hub = Hub(mirror=Mirror(10), uploader=None, relay=relay)
    start = clock()
    changes: list[tuple[float, StatusReport]] = []
    last = None

    def apply(event: Event) -> None:
        nonlocal last
        hub.on_event(event)
        wanted = policy.wanted
        if wanted is not None and wanted != last:
            changes.append(((clock() - start) / scale, wanted))
            last = wanted

    hub.on_reachable(True)
    apply(ReplayStarted())
    apply(StatusChange(AgentStatus.STABLE))
    for t, event in events:
        delay = start + t * scale - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        apply(event)
    await asyncio.sleep(3.0 * scale)  # the last change is delivered
    return changes


async def run_virtual(events: list[tuple[float, Event]], screen_activity: bool) -> Outcome_:
    loop = asyncio.get_running_loop()
    client = RecordingClient(loop.time)
    policy = RelayPolicy(screen_activity=screen_activity)
    relay = Relay(
        client=client, slug="claude-code", policy=policy, metrics=Metrics(), clock=loop.time
    )
    task = asyncio.create_task(relay.run())
    t0 = loop.time()
    wall = time.perf_counter()
    changes = await drive(events, relay, policy, loop.time, 1.0)
    await relay.stop(None, 2.0)
    await asyncio.gather(task, return_exceptions=True)
    out = Outcome_(changes=changes, wall=time.perf_counter() - wall)
    out.patches = [(sent - t0, report, status) for sent, report, status in client.patches]
    return out


def on_virtual_clock(events: list[tuple[float, Event]], screen_activity: bool) -> Outcome_:
    """run_virtual on a loop of its own (run in a thread: the caller's loop keeps real
    time)."""
    return run_on_virtual_clock(run_virtual(events, screen_activity))


async def run_real(
    events: list[tuple[float, Event]], screen_activity: bool, compress: float
) -> Outcome_:
    scale = 1.0 / compress
    coder = FakeCoder()
    async with serve(coder.app) as srv, aiohttp.ClientSession() as session:
        client = CoderClient(
            session=session, base_url=srv.url, token=TokenSource(value=coder.token)
        )
        policy = RelayPolicy(screen_activity=screen_activity)
        relay = Relay(
            client=client,
            slug="claude-code",
            policy=policy,
            metrics=Metrics(),
            min_interval=1.0 * scale,
            idle_settle=IDLE_SETTLE_S * scale,
            grace=30.0 * scale,
        )
        task = asyncio.create_task(relay.run())
        t0 = time.monotonic()
        changes = await drive(events, relay, policy, time.monotonic, scale)
        await relay.stop(None, 2.0)
        await asyncio.gather(task, return_exceptions=True)
        out = Outcome_(changes=changes, wall=time.monotonic() - t0)
        for r in coder.requests:
            if r.method == "PATCH" and r.status is not None:
                body = r.json()
                report = StatusReport(AppState(body["state"]), body["message"], body["uri"])
                out.patches.append(((r.at - t0) / scale, report, r.status))
    return out


# --- analysis ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    changes: int
    patches: int
    rejected: int
    dupes: int
    extras: int
    superseded: int
    undelivered: int
    revised: int
    state_patches: int
    p50: float
    max: float | None
    max_stale: float | None
    wall: float


def analyse(out: Outcome_) -> Analysis:
    """Match PATCHes to changes in order (by report, not by time, so loopback latency
    cannot reorder them): a PATCH carries the first later change with its report; the
    changes it skipped were superseded before the rate limit let them out."""
    patches = sorted(out.patches, key=lambda p: p[0])
    ok = [p for p in patches if p[2] == 200]
    changes = out.changes
    delays: list[float] = []  # change → its own PATCH
    stale: list[float] = []  # change → the first PATCH carrying it or anything newer
    superseded = extras = 0
    j = 0
    for sent, report, _status in ok:
        k = next((i for i in range(j, len(changes)) if changes[i][1] == report), None)
        if k is None:
            extras += 1  # a PATCH no change asked for: a duplicate or out of order
            continue
        superseded += k - j
        delays.append(sent - changes[k][0])
        stale.extend(sent - changes[i][0] for i in range(j, k + 1))
        j = k + 1
    undelivered = len(changes) - j
    # idle → idle with a revised summary within the settle time: the final words of a
    # stretch arriving just after `stable`, merged into one idle PATCH by design
    revised = sum(
        1
        for (t1, r1), (t2, r2) in itertools.pairwise(changes)
        if r1.state is AppState.IDLE and r2.state is AppState.IDLE and t2 - t1 < IDLE_SETTLE_S
    )
    dupes = sum(1 for a, b in itertools.pairwise(ok) if a[1] == b[1])
    state_patches = sum(
        1 for a, b in zip([None, *ok], ok, strict=False) if a is None or a[1].state != b[1].state
    )
    return Analysis(
        changes=len(changes),
        patches=len(patches),
        rejected=len(patches) - len(ok),
        dupes=dupes,
        extras=extras,
        superseded=superseded,
        undelivered=undelivered,
        revised=revised,
        state_patches=state_patches,
        p50=_common.percentile(delays, 50),
        max=max(delays) if delays else None,
        max_stale=max(stale) if stale else None,
        wall=out.wall,
    )


async def main_async(args: argparse.Namespace) -> int:
    compress = args.compress or (60.0 if args.quick else 20.0)
    events = script(args.seed)
    flips = sum(1 for _t, e in events if isinstance(e, StatusChange))
    turns = sum(1 for _t, e in events if isinstance(e, MessageUpdate) and e.message.role == "user")
    updates = len(events) - flips - turns
    _common.quiet_logs()
    _common.note(_common.machine_line())
    _common.note(
        f"script: {SESSION_S / 60:.0f} min, {turns} user turns, {flips} status flips, "
        f"{updates} agent message updates (seed {args.seed})"
    )
    rows: list[list[object]] = []
    for screen in (False, True):
        reference = reference_states(events, screen)
        virtual_loop_result = await asyncio.to_thread(on_virtual_clock, events, screen)
        real = await run_real(events, screen, compress)
        for label, out in (("virtual clock", virtual_loop_result), (f"real ÷{compress:g}", real)):
            a = analyse(out)
            clean = not (a.dupes or a.extras or a.rejected or a.undelivered)
            rows.append(
                [
                    "screen activity" if screen else "default",
                    label,
                    a.changes,
                    a.patches,
                    _common.ratio(a.patches, a.changes),
                    a.superseded,
                    a.dupes + a.extras,
                    a.rejected,
                    a.undelivered,
                    f"{a.state_patches} / {reference}",
                    _common.fmt(a.p50, 3),
                    _common.fmt(a.max, 3),
                    _common.fmt(a.max_stale, 3),
                    _common.fmt(a.wall, 1),
                    a.revised,
                    "yes" if a.patches == a.changes - a.revised else "no",
                    _common.verdict(clean and a.state_patches == reference),
                ]
            )
    _common.table(
        "Relay over a scripted 10-minute session: PATCHes vs distinct changes; delays in "
        "session seconds",
        [
            "mapping",
            "run",
            "distinct changes",
            "PATCHes",
            "PATCH/changes",
            "superseded",
            "duplicate / unasked",
            "rejected",
            "never sent",
            "state PATCHes / reference",
            "p50 delay s",
            "max delay s",
            "max stale s",
            "wall s",
            f"idle revised < {IDLE_SETTLE_S:g} s",
            "PATCHes = changes − revised",
            "none lost or doubled",
        ],
        rows,
    )
    _common.note(
        "superseded: a change replaced by a newer one before the 1 s rate limit or the "
        f"{IDLE_SETTLE_S:g} s idle settle time let it out (latest wins, by design; not a "
        "loss). max delay: change → its own PATCH (virtual: sent; real: arrival at "
        "FakeCoder); max stale: change → the first PATCH carrying it or anything newer. "
        "state PATCHes: PATCHes whose state differs from the previous one. idle revised: an "
        "idle report replaced by another idle report (new summary) within the settle time, "
        "which the relay merges into one PATCH."
    )
    return 0


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--compress", type=float, default=0, help="real-time compression factor")
    p.add_argument("--seed", type=int, default=1, help="script seed")
    args = p.parse_args()
    _common.run(lambda: main_async(args), timeout=600)


if __name__ == "__main__":
    main()

"""A fleet of workspaces on one event loop: the real Hub, Mirror, Uploader and Relay each,
driven by scripted agents, against an in-process Coder that records every request.

Not a benchmark itself; bench/server_load.py runs it. Made for a virtual clock
(tests.fakes.clock): `simulate` runs a fleet on a VirtualClockLoop, so ten minutes of
1,000 workspaces take seconds of CPU and every time is exact. Nothing here reads a clock
of its own: the driver, the sidecar classes (given `clock=loop.time`) and the recording
client all use the running loop's time, so the same code also runs on a real loop.

The agents (`Workload`): each alternates idle gaps and turns so that about `duty` of the
time it streams. A turn is agentapi's sequence: a user message, `running`, the agent's
reply growing about two updates a second to its final size (log-uniform over a few KiB
to tens of KiB of terminal-ish text: newlines, quotes, backslashes, multi-byte
characters, so bodies cost what real ones cost), then `stable` once the screen has not
changed for agentapi's 2 s stability window. Every message content ends with a
`[seq=N]` marker (N counts the workspace's conversation changes), which the recording
client reads from each stored body: that is how staleness is measured.

A sidecar starts by connecting to agentapi, which replays the conversation it holds and
then its status; before that the agent's script runs without it. Every random choice is
drawn from a `random.Random` seeded from (seed, workspace, purpose).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, TypeAlias
from uuid import UUID

import _common  # first: puts the repo root on sys.path

from sidecar.backoff import Backoff
from sidecar.coder.client import Result
from sidecar.coder.outcomes import Outcome
from sidecar.coder.retry import RetryPolicy
from sidecar.hub import Hub
from sidecar.models import (
    AgentStatus,
    AppState,
    Message,
    MessageUpdate,
    ReplayStarted,
    StatusChange,
)
from sidecar.pipeline import Clients, Clocks, Options, Tuning, build_pipeline
from sidecar.relay.delivery import Relay
from sidecar.relay.delivery import retry_policy as relay_retry_policy
from sidecar.runtime.metrics import Metrics
from sidecar.uploader import (
    FIRST_POST_SPREAD,  # the twin's formula
)
from tests.fakes.clock import run_on_virtual_clock

__all__ = [
    "FIRST_POST_SPREAD",
    "Cadence",
    "FleetResult",
    "Outage",
    "Pcts",
    "Restart",
    "Start",
    "Steady",
    "Workload",
    "outage_job",
    "peak_per_second",
    "simulate",
    "start_job",
    "steady_job",
]

LATENCY_S: Final = 0.02  # a request answered by the server
REFUSED_S: Final = 0.001  # a refused connection
MAX_BODY: Final = 65_536
MAX_STATUS_MESSAGE: Final = 160
_MAX_ATTEMPT: Final = 64  # a retry late enough for every back-off to be at its cap
_T0: Final = datetime(2026, 1, 1, tzinfo=UTC)
_SEQ: Final = b"[seq="

# What the server saw: (arrival, workspace, is a snapshot POST, body bytes, the [seq=N]
# a POST stored (-1 for a PATCH), answered at)
Request: TypeAlias = tuple[float, int, bool, int, int, float]


# --- what is compared ---------------------------------------------------------------------


class _Immediate(random.Random):
    """A random source whose uniform(a, b) is a: the uploader draws its first periodic
    post's offset from the start as uniform(0, FIRST_POST_SPREAD × interval), so the
    offset is 0 and the first post is due at once (today's cadence, before the spread)."""

    def uniform(self, a: float, b: float) -> float:
        return a


@dataclass(frozen=True)
class Cadence:
    """The sidecar's settings under test; the defaults are the product's.

    `spread_first` False is the start before the spread (the first post due at once);
    True is the product's: the first periodic post is due at a random point of the first
    FIRST_POST_SPREAD (two) intervals after the start (a finished turn does not wait for
    it), drawn from a random source seeded here.
    `upload_backoff` and `relay_backoff` are (base, cap) of the transient back-off,
    given to the Uploader and the Relay as RetryPolicy(transient=Backoff(...)); None is
    the product's default: RetryPolicy()'s transient schedule for the uploader, and
    `sidecar.relay.delivery.retry_policy()` for the relay (each seeded here).

    Switches that emulate code the product does not have (sidecar/ is not changed):

    * `legacy_connect_urgent`: the hub before the running → stable rule took the
      connect's first `stable` (status None → stable) for a turn end; after the connect's
      replay the bench calls uploader.notify(urgent=True) as that hub did. For "today"
      only. (With the first post due at once, as today, it changes no timing: the post
      is due either way.)
    * `proposed_relay_with_first_post`: each Relay.run() starts when the uploader's first
      periodic post is due, uniform(0, FIRST_POST_SPREAD × interval) after the start (a
      twin of its random source gives the same offset) — what a relay whose first report
      waited for the start's one random offset would do (the product reports the first
      state at once)."""

    name: str
    interval: float = 30.0
    spread_first: bool = True
    upload_backoff: tuple[float, float] | None = None  # None: the product's RetryPolicy()
    relay_backoff: tuple[float, float] | None = None  # None: the product's retry_policy()
    legacy_connect_urgent: bool = False
    proposed_relay_with_first_post: bool = False


@dataclass(frozen=True)
class Workload:
    duty: float = 0.3  # share of the time an agent streams
    turn_s: tuple[float, float] = (15.0, 240.0)  # turn length, log-uniform
    reply_bytes: tuple[int, int] = (2 * 1024, 48 * 1024)  # final reply size, log-uniform
    update_gap_s: tuple[float, float] = (0.3, 0.7)  # ~2 updates a second
    first_update_s: tuple[float, float] = (0.5, 1.5)  # user message → first agent words
    stability_s: float = 2.0  # agentapi: stable once the screen is unchanged this long
    history_turns: tuple[int, int] = (1, 4)  # finished turns held when the fleet starts

    @property
    def mean_turn_s(self) -> float:
        lo, hi = self.turn_s
        return (hi - lo) / math.log(hi / lo)

    @property
    def mean_gap_s(self) -> float:
        return self.mean_turn_s * (1.0 - self.duty) / self.duty


@dataclass(frozen=True)
class Outage:
    """Coder refuses connections from `start` for `seconds` (loop time)."""

    start: float
    seconds: float

    @property
    def end(self) -> float:
        return self.start + self.seconds


# --- the agents' text -----------------------------------------------------------------------

_LINES: Final = (
    "● Read(sidecar/snapshot.py) — {n} lines\n",
    "  ⎿  Running `pytest -q tests/unit` … {n} failed, {m} passed\n",
    '  File "sidecar/uploader.py", line {n}, in _post_once\n',
    '    raise ValueError(f"message {{m.id}} does not fit")\n',
    "\tC:\\path\\on\\windows\\build ✓ done — {n}% (ünïcödé)\n",
    '+        return {{"status": "ok", "count": {n}}}\n',
    "-        return None  # {m} callers\n",
    "I'll update the retry schedule next, then re-run the {n} tests.\n",
    "$ git diff --stat | tail -1\n {n} files changed, {m} insertions(+)\n",
)


def corpus(chars: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < chars:
        line = rng.choice(_LINES).format(n=rng.randrange(1, 400), m=rng.randrange(1, 90))
        out.append(line)
        size += len(line)
    return "".join(out)[:chars]


def _stamp(seconds: float) -> str:
    return (_T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the server ---------------------------------------------------------------------------


@dataclass(repr=False)  # a repr of every request would be huge
class Recorder:
    """What reached the server, and what was refused while it was down."""

    down: bool = False
    # (arrival, workspace, is_post, body bytes, seq stored (POST) or -1, answered at)
    requests: list[Request] = field(default_factory=list)
    refused: list[tuple[float, int, bool]] = field(default_factory=list)
    rejected: int = 0


class WorkspaceClient:
    """One workspace's view of Coder (SnapshotClient and StatusClient): 204/200 after
    LATENCY_S, 400 for a body over 64 KiB or a status message over 160 bytes, and while
    the recorder is down a refused connection (RETRY, no status) after REFUSED_S."""

    __slots__ = ("_loop", "_rec", "_ws")

    def __init__(self, rec: Recorder, ws: int, loop: asyncio.AbstractEventLoop) -> None:
        self._rec = rec
        self._ws = ws
        self._loop = loop

    async def _refused(self, is_post: bool) -> Result:
        self._rec.refused.append((self._loop.time(), self._ws, is_post))
        await asyncio.sleep(REFUSED_S)
        return Result(Outcome.RETRY, None, "connection refused", None, REFUSED_S * 1000)

    async def post_log_snapshot(
        self, task_id: UUID, body: bytes, *, timeout: float | None = None
    ) -> Result:
        if self._rec.down:
            return await self._refused(True)
        sent = self._loop.time()
        await asyncio.sleep(LATENCY_S)
        if len(body) > MAX_BODY:
            self._rec.rejected += 1
            return Result(Outcome.REJECTED, 400, "too large", None, LATENCY_S * 1000)
        at = body.rfind(_SEQ, max(0, len(body) - 400))
        seq = int(body[at + len(_SEQ) : body.index(b"]", at)]) if at >= 0 else -1
        self._rec.requests.append((sent, self._ws, True, len(body), seq, self._loop.time()))
        return Result(Outcome.OK, 204, "", None, LATENCY_S * 1000)

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str, timeout: float | None = None
    ) -> Result:
        if self._rec.down:
            return await self._refused(False)
        sent = self._loop.time()
        await asyncio.sleep(LATENCY_S)
        if len(message.encode()) > MAX_STATUS_MESSAGE:
            self._rec.rejected += 1
            return Result(Outcome.REJECTED, 400, "Message is too long.", None, LATENCY_S * 1000)
        self._rec.requests.append((sent, self._ws, False, 0, -1, self._loop.time()))
        return Result(Outcome.OK, 200, "", None, LATENCY_S * 1000)

    async def reload_token(self) -> bool:
        return False

    async def server_version(self) -> str | None:
        return "v2.35.0"


# --- one workspace ----------------------------------------------------------------------


@dataclass
class Turn:
    user_at: float
    stable_at: float | None = None
    final_seq: int = -1


@dataclass(repr=False)
class Workspace:
    index: int
    rng: random.Random
    seq: int = 0
    next_id: int = 0
    messages: dict[int, Message] = field(default_factory=dict)
    status: AgentStatus = AgentStatus.STABLE
    hub: Hub | None = None  # set when its sidecar has connected
    # the turn in progress
    agent_id: int = -1
    agent_stamp: str = ""
    reply: str = ""
    final_at: float = 0.0  # when the reply reaches its final size
    turns: list[Turn] = field(default_factory=list)
    # every conversation change: when, and its seq (ascending)
    change_at: list[float] = field(default_factory=list)
    change_seq: list[int] = field(default_factory=list)


class Fleet:
    """Drives every workspace's agent from one scheduler task (a heap of due actions) and
    starts each sidecar at its time."""

    def __init__(
        self,
        *,
        n: int,
        cadence: Cadence,
        workload: Workload,
        seed: int,
        rec: Recorder,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.n = n
        self.cadence = cadence
        self.workload = workload
        self.seed = seed
        self.rec = rec
        self.loop = loop
        self.metrics = Metrics()
        self.text = corpus(workload.reply_bytes[1] * 2)
        self.workspaces = [Workspace(i, self._rng(i, "agent")) for i in range(n)]
        self.tasks: list[asyncio.Task[None]] = []
        self.heap: list[tuple[float, int, int, str]] = []
        self._tie = 0
        self.updates = 0

    def _rng(self, ws: int, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}:{ws}:{purpose}")

    # --- the agent ------------------------------------------------------------------------

    def _emit(self, ws: Workspace, event: MessageUpdate | StatusChange) -> None:
        if isinstance(event, MessageUpdate):
            msg = event.message
            ws.messages[msg.id] = msg
            if len(ws.messages) > 12:
                del ws.messages[min(ws.messages)]
            ws.change_at.append(self.loop.time())
            ws.change_seq.append(ws.seq)
        else:
            ws.status = event.status
        if ws.hub is not None:
            ws.hub.on_event(event)

    def _user(self, ws: Workspace, now: float, *, replay: bool = False) -> None:
        ws.seq += 1
        msg = Message(
            ws.next_id, "user", f"turn {len(ws.turns)}: fix the tests [seq={ws.seq}]", _stamp(now)
        )
        ws.next_id += 1
        ws.agent_id = ws.next_id
        ws.next_id += 1
        w = self.workload
        lo, hi = w.reply_bytes
        size = int(math.exp(ws.rng.uniform(math.log(lo), math.log(hi))))
        start = ws.rng.randrange(0, len(self.text) - size)
        ws.reply = self.text[start : start + size]
        ws.agent_stamp = _stamp(now)
        ws.turns.append(Turn(now))
        if not replay:
            self._emit(ws, MessageUpdate(msg))
            self._emit(ws, StatusChange(AgentStatus.RUNNING))
        else:
            ws.messages[msg.id] = msg
            ws.status = AgentStatus.RUNNING

    def _agent_text(self, ws: Workspace, now: float) -> Message:
        ws.seq += 1
        streamed = ws.final_at - ws.turns[-1].user_at
        progress = 1.0 if streamed <= 0 else min(1.0, (now - ws.turns[-1].user_at) / streamed)
        length = max(16, int(len(ws.reply) * progress))
        content = f"{ws.reply[:length]}\n[seq={ws.seq}]"
        return Message(ws.agent_id, "agent", content, ws.agent_stamp)

    def _schedule(self, due: float, ws: Workspace, action: str) -> None:
        self._tie += 1
        heapq.heappush(self.heap, (due, self._tie, ws.index, action))

    def _turn_length(self, ws: Workspace) -> float:
        lo, hi = self.workload.turn_s
        return math.exp(ws.rng.uniform(math.log(lo), math.log(hi)))

    def _gap(self, ws: Workspace) -> float:
        return max(1.0, ws.rng.expovariate(1.0 / self.workload.mean_gap_s))

    def step(self, ws: Workspace, action: str, now: float) -> None:
        w = self.workload
        if action == "user":
            self._user(ws, now)
            ws.final_at = now + max(w.stability_s + 1.0, self._turn_length(ws)) - w.stability_s
            self._schedule(now + ws.rng.uniform(*w.first_update_s), ws, "update")
        elif action == "update":
            self.updates += 1
            self._emit(ws, MessageUpdate(self._agent_text(ws, now)))
            if now >= ws.final_at:
                self._schedule(now + w.stability_s, ws, "stable")
            else:
                self._schedule(
                    min(ws.final_at, now + ws.rng.uniform(*w.update_gap_s)), ws, "update"
                )
        elif action == "stable":
            self._emit(ws, StatusChange(AgentStatus.STABLE))
            turn = ws.turns[-1]
            turn.stable_at = now
            turn.final_seq = ws.seq
            self._schedule(now + self._gap(ws), ws, "user")
        else:
            raise ValueError(action)

    def initial_state(self, ws: Workspace) -> None:
        """The state at loop time 0 of an agent that has run for a long time: finished
        turns held, then (with probability `duty`) a turn in progress at a uniform point
        of a length-biased turn (a log-uniform length, length-biased, is uniform), else an
        idle gap (exponential, so the rest of it is exponential too)."""
        w = self.workload
        rng = ws.rng
        now = self.loop.time()
        for _ in range(rng.randint(*w.history_turns)):
            self._user(ws, now - 600.0, replay=True)
            ws.final_at = ws.turns[-1].user_at
            ws.messages[ws.agent_id] = self._agent_text(ws, now)
            ws.turns[-1].stable_at = now - 600.0
            ws.turns[-1].final_seq = ws.seq
        ws.status = AgentStatus.STABLE
        if rng.random() < w.duty:
            length = max(w.stability_s + 1.0, rng.uniform(*w.turn_s))
            elapsed = rng.uniform(0.0, length)
            self._user(ws, now - elapsed, replay=True)
            ws.final_at = now - elapsed + length - w.stability_s
            if elapsed > w.first_update_s[1]:
                ws.messages[ws.agent_id] = self._agent_text(ws, now)
            if now >= ws.final_at:
                self._schedule(ws.final_at + w.stability_s, ws, "stable")
            else:
                self._schedule(now + rng.uniform(*w.update_gap_s), ws, "update")
        else:
            self._schedule(now + self._gap(ws), ws, "user")
        ws.change_at.append(now)
        ws.change_seq.append(ws.seq)

    # --- the sidecar ----------------------------------------------------------------------

    def connect(self, ws: Workspace) -> None:
        """Start this workspace's sidecar: the real classes, connected to agentapi, which
        replays what it holds and then its status."""
        c = self.cadence
        clock = self.loop.time
        client = WorkspaceClient(self.rec, ws.index, self.loop)

        def transient(purpose: str, backoff: tuple[float, float]) -> RetryPolicy:
            base, cap = backoff
            return RetryPolicy(
                transient=Backoff(base=base, cap=cap, rng=self._rng(ws.index, purpose))
            )

        if c.upload_backoff is None:
            # RetryPolicy()'s own schedule (the uploader's default), read off its
            # ceilings, with a seeded random source
            default = RetryPolicy().transient
            upload_retry = transient(
                "upload-retry", (default.ceiling(0), default.ceiling(_MAX_ATTEMPT))
            )
        else:
            upload_retry = transient("upload-retry", c.upload_backoff)
        if c.relay_backoff is None:
            relay_retry = relay_retry_policy(rng=self._rng(ws.index, "relay-retry"))
        else:
            relay_retry = transient("relay-retry", c.relay_backoff)

        pipeline = build_pipeline(
            Clients(coder=client, agentapi=None),
            Clocks(monotonic=clock),
            Options(task_id=UUID(int=ws.index + 1), slug="claude-code", interval=c.interval),
            metrics=self.metrics,
            tuning=Tuning(
                upload_retry=upload_retry,
                relay_retry=relay_retry,
                first_post_rng=self._first_post_rng(ws.index),
            ),
        )
        uploader, relay, hub = pipeline.uploader, pipeline.relay, pipeline.hub
        assert uploader is not None
        assert relay is not None
        hub.on_reachable(True)
        hub.on_event(ReplayStarted())
        for msg_id in sorted(ws.messages):
            hub.on_event(MessageUpdate(ws.messages[msg_id]))
        hub.on_event(StatusChange(ws.status))
        if c.legacy_connect_urgent and ws.status is AgentStatus.STABLE:
            # the old hub: the first status after a start, if `stable`, was a turn end
            uploader.notify(urgent=True)
        ws.hub = hub
        self.tasks.append(asyncio.create_task(uploader.run()))
        if c.proposed_relay_with_first_post:
            # the uploader's own draw (a twin of its random source, the same formula): its
            # first periodic post is due `drawn` s from now
            drawn = self._first_post_rng(ws.index).uniform(0.0, FIRST_POST_SPREAD * c.interval)
            self.tasks.append(asyncio.create_task(self._later(drawn, relay)))
        else:
            self.tasks.append(asyncio.create_task(relay.run()))

    def _first_post_rng(self, ws: int) -> random.Random:
        c = self.cadence
        if not c.spread_first:
            return _Immediate()
        return random.Random(f"{self.seed}:{ws}:first-post")

    @staticmethod
    async def _later(delay: float, relay: Relay) -> None:
        await asyncio.sleep(delay)
        await relay.run()

    # --- the run --------------------------------------------------------------------------

    async def run(self, *, start_spread: float, until: float, outage: Outage | None) -> None:
        for ws in self.workspaces:
            self.initial_state(ws)
            start = self._rng(ws.index, "sidecar-start").uniform(0.0, start_spread)
            self._schedule(start, ws, "connect")
        if outage is not None:
            self._tie += 1
            heapq.heappush(self.heap, (outage.start, self._tie, -1, "down"))
            self._tie += 1
            heapq.heappush(self.heap, (outage.end, self._tie, -1, "up"))
        loop = self.loop
        heap = self.heap
        while heap:
            due = heap[0][0]
            if due >= until:
                break
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
                continue
            _due, _tie, index, action = heapq.heappop(heap)
            if action == "down":
                self.rec.down = True
            elif action == "up":
                self.rec.down = False
            elif action == "connect":
                self.connect(self.workspaces[index])
            else:
                self.step(self.workspaces[index], action, now)
        now = loop.time()
        if until > now:
            await asyncio.sleep(until - now)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# --- results ------------------------------------------------------------------------------


@dataclass(repr=False)  # asyncio.Runner may repr the task result when it ends
class FleetResult:
    n: int
    cadence: Cadence
    window: tuple[float, float]
    requests: list[Request]
    refused: list[tuple[float, int, bool]]
    rejected: int
    workspaces: list[Workspace]
    updates: int
    cpu_s: float
    simulated_s: float

    def in_window(self, t0: float | None = None, t1: float | None = None) -> list[Request]:
        lo = self.window[0] if t0 is None else t0
        hi = self.window[1] if t1 is None else t1
        return [r for r in self.requests if lo <= r[0] < hi]

    def rates(self) -> dict[str, float]:
        """Per second over the window: requests, POSTs, PATCHes, snapshot body bytes."""
        rs = self.in_window()
        span = self.window[1] - self.window[0]
        posts = [r for r in rs if r[2]]
        return {
            "requests": len(rs) / span,
            "posts": len(posts) / span,
            "patches": (len(rs) - len(posts)) / span,
            "bytes": sum(r[3] for r in posts) / span,
            "mean_body": sum(r[3] for r in posts) / len(posts) if posts else float("nan"),
        }

    def duty(self) -> float:
        """Measured share of workspace-time inside a turn (user message → stable)."""
        t0, t1 = self.window
        busy = 0.0
        for ws in self.workspaces:
            for turn in ws.turns:
                end = t1 if turn.stable_at is None else turn.stable_at
                busy += max(0.0, min(end, t1) - max(turn.user_at, t0))
        return busy / (self.n * (t1 - t0))

    def _stored(self) -> list[tuple[list[float], list[int]]]:
        """Per workspace: answer times of accepted POSTs and the seq each stored."""
        out: list[tuple[list[float], list[int]]] = [([], []) for _ in range(self.n)]
        for _sent, ws, is_post, _size, seq, answered in sorted(self.requests, key=lambda r: r[5]):
            if is_post:
                times, seqs = out[ws]
                times.append(answered)
                seqs.append(max(seq, seqs[-1]) if seqs else seq)
        return out

    def finished_staleness(self) -> tuple[list[float], int]:
        """Per turn that ended (`stable`) in the window: the time from `stable` to the first
        stored snapshot holding its final text (0 when it was stored before). Returns
        (delays, turns never stored)."""
        t0, t1 = self.window
        stored = self._stored()
        delays: list[float] = []
        missing = 0
        for ws in self.workspaces:
            times, seqs = stored[ws.index]
            for turn in ws.turns:
                if turn.stable_at is None or not t0 <= turn.stable_at < t1:
                    continue
                j = bisect.bisect_left(seqs, turn.final_seq)
                if j == len(seqs):
                    missing += 1
                else:
                    delays.append(max(0.0, times[j] - turn.stable_at))
        return delays, missing

    def streaming_staleness(self, every: float = 1.0) -> list[float]:
        """Sampled every `every` s in the window, for each workspace with a turn in
        progress: how far behind the newest streamed text the stored snapshot is — the
        age of the oldest change it lacks (0 when it holds the newest). What a workspace
        that died at that moment would have lost, in seconds of its turn."""
        t0, t1 = self.window
        stored = self._stored()
        lags: list[float] = []
        for ws in self.workspaces:
            times, seqs = stored[ws.index]
            for turn in ws.turns:
                end = t1 if turn.stable_at is None else min(t1, turn.stable_at)
                k = math.ceil(max(t0, turn.user_at) / every)
                while k * every < end:
                    t = k * every
                    k += 1
                    i = bisect.bisect_right(times, t) - 1
                    have = seqs[i] if i >= 0 else -1
                    # the first change newer than what is stored, if it happened by t
                    j = bisect.bisect_right(ws.change_seq, have)
                    if j < len(ws.change_seq) and ws.change_at[j] <= t:
                        lags.append(t - ws.change_at[j])
                    else:
                        lags.append(0.0)
        return lags


def peak_per_second(
    requests: Sequence[tuple[float, int]], t0: float, t1: float
) -> tuple[int, int, float]:
    """Over (arrival time, workspace) pairs with t0 ≤ time < t1: the most requests in any
    1-second window, the most distinct workspaces in any 1-second window, and where (the
    window's start) the distinct peak was."""
    rs = sorted(r for r in requests if t0 <= r[0] < t1)
    best_n = best_ws = 0
    best_at = float("nan")
    counts: Counter[int] = Counter()
    lo = 0
    for hi, (t, ws) in enumerate(rs):
        counts[ws] += 1
        while rs[lo][0] <= t - 1.0:
            w = rs[lo][1]
            counts[w] -= 1
            if counts[w] == 0:
                del counts[w]
            lo += 1
        best_n = max(best_n, hi - lo + 1)
        if len(counts) > best_ws:
            best_ws, best_at = len(counts), rs[lo][0]
    return best_n, best_ws, best_at


async def run_fleet(
    *,
    n: int,
    cadence: Cadence,
    workload: Workload,
    seed: int,
    start_spread: float,
    window: tuple[float, float],
    drain: float,
    outage: Outage | None = None,
) -> FleetResult:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    fleet = Fleet(n=n, cadence=cadence, workload=workload, seed=seed, rec=rec, loop=loop)
    cpu0 = time.process_time()
    await fleet.run(start_spread=start_spread, until=window[1] + drain, outage=outage)
    await fleet.stop()
    return FleetResult(
        n=n,
        cadence=cadence,
        window=window,
        requests=rec.requests,
        refused=rec.refused,
        rejected=rec.rejected,
        workspaces=fleet.workspaces,
        updates=fleet.updates,
        cpu_s=time.process_time() - cpu0,
        simulated_s=loop.time(),
    )


def simulate(
    *,
    n: int,
    cadence: Cadence,
    workload: Workload,
    seed: int,
    start_spread: float,
    window: tuple[float, float],
    drain: float,
    outage: Outage | None = None,
) -> FleetResult:
    """run_fleet on a fresh virtual-clock loop (blocking; run it in a thread from a
    coroutine)."""
    return run_on_virtual_clock(
        run_fleet(
            n=n,
            cadence=cadence,
            workload=workload,
            seed=seed,
            start_spread=start_spread,
            window=window,
            drain=drain,
            outage=outage,
        )
    )


# --- jobs: one simulation and its summary (small, so a worker process can return it) ----


def _quiet() -> None:
    # Every refused attempt is a warning; thousands of them would bury the tables.
    from sidecar.log import configure

    configure("error", "json")


@dataclass(frozen=True)
class Pcts:
    p50: float
    p99: float
    max: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Pcts:
        return cls(
            _common.percentile(values, 50),
            _common.percentile(values, 99),
            max(values) if values else float("nan"),
            len(values),
        )


def _pairs(requests: Sequence[Request], *, posts: bool | None = None) -> list[tuple[float, int]]:
    return [(r[0], r[1]) for r in requests if posts is None or r[2] is posts]


@dataclass(frozen=True)
class Steady:
    requests_per_s: float
    posts_per_s: float
    patches_per_s: float
    bytes_per_s: float
    mean_body: float
    finished: Pcts  # stable → stored, per finished turn
    finished_missing: int
    streaming: Pcts  # stored snapshot behind the newest text, sampled
    peak_requests: int
    peak_workspaces: int
    duty: float
    changes_per_s: float
    rejected: int
    cpu_s: float
    simulated_s: float


def steady_job(
    *, n: int, cadence: Cadence, seed: int, start_spread: float, window: tuple[float, float]
) -> Steady:
    """A busy fleet in steady state: rates, staleness, the busiest second."""
    _quiet()
    r = simulate(
        n=n,
        cadence=cadence,
        workload=Workload(),
        seed=seed,
        start_spread=start_spread,
        window=window,
        drain=cadence.interval + 5.0,
    )
    finished, missing = r.finished_staleness()
    peak_n, peak_ws, _at = peak_per_second(_pairs(r.in_window()), *window)
    rates = r.rates()
    span = window[1] - window[0]
    return Steady(
        requests_per_s=rates["requests"],
        posts_per_s=rates["posts"],
        patches_per_s=rates["patches"],
        bytes_per_s=rates["bytes"],
        mean_body=rates["mean_body"],
        finished=Pcts.of(finished),
        finished_missing=missing,
        streaming=Pcts.of(r.streaming_staleness()),
        peak_requests=peak_n,
        peak_workspaces=peak_ws,
        duty=r.duty(),
        changes_per_s=sum(
            1 for ws in r.workspaces for t in ws.change_at if window[0] <= t < window[1]
        )
        / span,
        rejected=r.rejected,
        cpu_s=r.cpu_s,
        simulated_s=r.simulated_s,
    )


@dataclass(frozen=True)
class Restart:
    refused_per_s: float  # attempts while Coder was down (a 503-answering proxy sees them)
    refused_workspaces: int
    before_requests: int  # the busiest second before the outage
    before_workspaces: int
    before_post_workspaces: int  # the most workspaces posting in one second before
    peak_requests: int  # the busiest second after the comeback
    peak_workspaces: int  # the most workspaces sending anything in one second after
    peak_at: float  # s after the comeback
    peak_post_workspaces: int  # the most workspaces posting (snapshot POSTs) in one second
    peak_posts: int
    peak_patches: int
    recovered_posts: Pcts  # comeback → first POST through, per workspace refused one
    recovered_patches: Pcts  # comeback → first PATCH through, per workspace refused one
    cpu_s: float


def outage_job(
    *,
    n: int,
    cadence: Cadence,
    seed: int,
    start_spread: float,
    warm_up: float,
    outage: Outage,
    after: float,
) -> Restart:
    """A busy fleet (sidecars started over `start_spread` s, steady from `warm_up`); Coder
    refuses connections for `outage.seconds`; then `after` s."""
    _quiet()
    up = outage.end
    r = simulate(
        n=n,
        cadence=cadence,
        workload=Workload(),
        seed=seed,
        start_spread=start_spread,
        window=(warm_up, up + after),
        drain=0.0,
        outage=outage,
    )
    before = [q for q in r.requests if warm_up <= q[0] < outage.start]
    after_rs = [q for q in r.requests if up <= q[0] < up + after]
    peak_n, peak_ws, at = peak_per_second(_pairs(after_rs), up, up + after)
    before_n, before_ws, _ = peak_per_second(_pairs(before), warm_up, outage.start)
    posts_n, posts_ws, _ = peak_per_second(_pairs(after_rs, posts=True), up, up + after)
    _, before_posts_ws, _ = peak_per_second(_pairs(before, posts=True), warm_up, outage.start)
    recovered: dict[bool, Pcts] = {}
    for is_post in (True, False):
        hit = {ws for _t, ws, p in r.refused if p is is_post}
        first: dict[int, float] = {}
        for q in after_rs:
            if q[2] is is_post and q[1] in hit and q[1] not in first:
                first[q[1]] = q[0] - up
        recovered[is_post] = Pcts.of(sorted(first.values()))
    return Restart(
        refused_per_s=len(r.refused) / outage.seconds,
        refused_workspaces=len({ws for _t, ws, _p in r.refused}),
        before_requests=before_n,
        before_workspaces=before_ws,
        before_post_workspaces=before_posts_ws,
        peak_requests=peak_n,
        peak_workspaces=peak_ws,
        peak_at=at - up,
        peak_post_workspaces=posts_ws,
        peak_posts=posts_n,
        peak_patches=peak_per_second(_pairs(after_rs, posts=False), up, up + after)[0],
        recovered_posts=recovered[True],
        recovered_patches=recovered[False],
        cpu_s=r.cpu_s,
    )


@dataclass(frozen=True)
class Start:
    peak_requests: int
    peak_workspaces: int  # the most workspaces sending anything in one second
    peak_at: float
    peak_post_workspaces: int  # the most workspaces posting (snapshot POSTs) in one second
    peak_posts: int
    peak_patches: int
    first_post_max: float  # when the last workspace's first snapshot was stored
    first_patch_max: float  # when the last workspace's first status was accepted
    cpu_s: float


def start_job(*, n: int, cadence: Cadence, seed: int, horizon: float) -> Start:
    """Every sidecar starts at loop time 0, each agent holding a conversation."""
    _quiet()
    r = simulate(
        n=n,
        cadence=cadence,
        workload=Workload(),
        seed=seed,
        start_spread=0.0,
        window=(0.0, horizon),
        drain=0.0,
    )
    peak_n, peak_ws, at = peak_per_second(_pairs(r.requests), 0.0, horizon)
    posts_n, posts_ws, _ = peak_per_second(_pairs(r.requests, posts=True), 0.0, horizon)
    first_post: dict[int, float] = {}
    first_patch: dict[int, float] = {}
    for q in sorted(r.requests):
        (first_post if q[2] else first_patch).setdefault(q[1], q[5])
    nan = float("nan")
    return Start(
        peak_requests=peak_n,
        peak_workspaces=peak_ws,
        peak_at=at,
        peak_post_workspaces=posts_ws,
        peak_posts=posts_n,
        peak_patches=peak_per_second(_pairs(r.requests, posts=False), 0.0, horizon)[0],
        first_post_max=max(first_post.values()) if len(first_post) == n else nan,
        first_patch_max=max(first_patch.values()) if len(first_patch) == n else nan,
        cpu_s=r.cpu_s,
    )

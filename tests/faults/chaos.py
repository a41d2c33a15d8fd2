"""The chaos run: a seeded, randomized interleaving of the fault table's faults.

One run is a sequence of steps drawn from `STEPS` by a `random.Random(seed)`: the agent
works (turns, a huge message now and then, an invalid message), while Coder goes down,
answers 503 with or without Retry-After, hangs or drops requests, rotates the agent token;
agentapi is killed, restarted with a shorter history, saves its state file, drops its
stream every K events, sends malformed frames; the sidecar is SIGKILLed or stopped and
restarted (sometimes while Coder or agentapi is gone). Faults overlap freely: a step does
not heal what an earlier one broke. At the end everything heals, and the run has ended
well when Coder stores the ground truth (tests/faults/rig.py) within a deadline.

Every wait is on a condition with a deadline; a dwell step waits for the sidecar's next
request to Coder (or gives up after a random deadline), so faults meet real traffic.
"""

from __future__ import annotations

import contextlib
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import pytest

from tests.faults.rig import Rig, ground_truth_problem, poisoned_posts, read_back
from tests.tracebacks import traceback_in

__all__ = ["REPORT_KEY", "ChaosReport", "RunResult", "run_chaos"]

HEAL_DEADLINE_S: Final = 20.0


@dataclass
class RunResult:
    seed: int
    truth_stored: bool
    crashes: int
    poisoned: int
    steps: list[str]
    seconds: float
    problem: str | None = None


@dataclass
class ChaosReport:
    runs: list[RunResult] = field(default_factory=list)

    def lines(self) -> list[str]:
        ok = sum(r.truth_stored for r in self.runs)
        crashes = sum(r.crashes for r in self.runs)
        poisoned = sum(r.poisoned for r in self.runs)
        seconds = sum(r.seconds for r in self.runs)
        out = [
            f"chaos: {len(self.runs)} runs, ground truth stored in {ok}, "
            f"crashes {crashes}, poisoned snapshots {poisoned}, {seconds:.0f} s in runs"
        ]
        for r in self.runs:
            verdict = "ok  " if r.truth_stored and not r.crashes and not r.poisoned else "FAIL"
            out.append(
                f"  seed {r.seed:>6} {verdict} {r.seconds:5.1f}s crashes={r.crashes} "
                f"poisoned={r.poisoned} steps={' '.join(r.steps)}"
            )
            if r.problem:
                out.append(f"         {r.problem[:400]}")
        return out


REPORT_KEY = pytest.StashKey[ChaosReport]()


# --- the world's state, as the run has left it ---------------------------------------------


@dataclass
class World:
    rig: Rig
    rng: random.Random
    steps: list[str] = field(default_factory=list)
    stale_token: str | None = None  # Coder rotated the token; the file still has the old one
    sidecar_running: bool = False
    expected_exits: set[int] = field(default_factory=set)  # sidecar indexes we stopped
    crashes: list[str] = field(default_factory=list)

    @property
    def agentapi_up(self) -> bool:
        return self.rig.agentapi.server.running

    @property
    def coder_up(self) -> bool:
        return self.rig.coder.server.running


Step = Callable[[World], Awaitable[str | None]]


async def turn(w: World) -> str | None:
    if not w.agentapi_up:
        return None
    roll = w.rng.random()
    size = 90_000 if roll < 0.1 else w.rng.randint(50, 3000)
    await w.rig.agent.turn(size=size, chunks=w.rng.randint(2, 20))
    return f"turn({size})"


async def invalid_message(w: World) -> str | None:
    if not w.agentapi_up:
        return None
    w.rig.agentapi.fake.add_message(w.rng.choice(["system", "tool", ""]), "not for Coder")
    return "invalid_message"


async def dwell(w: World) -> str | None:
    """Let the sidecar act: wait for its next request to Coder, or a random deadline."""
    coder = w.rig.coder.fake
    seen = len(coder.requests)
    limit = round(w.rng.uniform(0.2, 1.5), 1)
    with contextlib.suppress(TimeoutError):
        await coder.wait_for(lambda: len(coder.requests) > seen, timeout=limit)
    return f"dwell({limit})"


async def coder_down(w: World) -> str | None:
    if not w.coder_up:
        return None
    await w.rig.coder.server.stop()
    return "coder_down"


async def coder_up(w: World) -> str | None:
    if w.coder_up:
        return None
    await w.rig.coder.server.start()
    return "coder_up"


async def coder_503(w: World) -> str | None:
    times = w.rng.randint(1, 4)
    retry_after = w.rng.choice([None, None, 1])
    w.rig.coder.fake.fail_next(503, times=times, retry_after=retry_after)
    return f"coder_503(x{times},ra={retry_after})"


async def coder_hang(w: World) -> str | None:
    w.rig.coder.fake.hang_next(1)
    return "coder_hang"


async def coder_close(w: World) -> str | None:
    times = w.rng.randint(1, 3)
    w.rig.coder.fake.close_next(times)
    return f"coder_close(x{times})"


async def token_rotated(w: World) -> str | None:
    if w.stale_token is not None:
        return None
    w.stale_token = w.rig.coder.fake.rotate_token()
    return "token_rotated"


async def token_file_updated(w: World) -> str | None:
    if w.stale_token is None:
        return None
    w.rig.write_token(w.stale_token)
    w.stale_token = None
    return "token_file_updated"


async def agentapi_kill(w: World) -> str | None:
    if not w.agentapi_up:
        return None
    await w.rig.agentapi.server.stop()
    return "agentapi_kill"


async def agentapi_start(w: World) -> str | None:
    if w.agentapi_up:
        return None
    await w.rig.agentapi.server.start()
    return "agentapi_start"


async def agentapi_restart_shorter(w: World) -> str | None:
    fake = w.rig.agentapi.fake
    if w.agentapi_up:
        await w.rig.agentapi.server.stop()
    keep = w.rng.randint(1, 3)
    history = [(m.role, m.content) for m in fake.messages if m.role in ("user", "agent")]
    history = history[-keep:] or [("user", "start over")]
    fake.restart(history)
    await w.rig.agentapi.server.start()
    return f"agentapi_restart_shorter({len(history)})"


async def agentapi_save_state(w: World) -> str | None:
    if not w.agentapi_up:
        return None
    w.rig.agentapi.fake.write_state_file(w.rig.state_file)
    return "agentapi_save_state"


async def sse_drop_every_k(w: World) -> str | None:
    k = w.rng.choice([None, 3, 5, 8])
    w.rig.agentapi.fake.drop_every_k = k
    return f"sse_drop_every_k({k})"


_MALFORMED: Final = (
    b"event: message_update\ndata: {not json\n\n",
    b'event: message_update\ndata: {"id":99999,"role":"system","message":"x",'
    b'"time":"2025-01-01T00:00:00Z"}\n\n',
    b'event: message_update\ndata: {"id":99998,"role":"agent","message":"x","time":"x"}\n\n',
    b'event: status_change\ndata: {"status":"exploded"}\n\n',
    b"event: message_update\ndata: \xff\xfe\n\n",
    b": comment\n\ndata: orphan\n\n",
    b"event: message_update\ndata: " + b"y" * 300_000 + b"\n\n",
)


async def malformed_frames(w: World) -> str | None:
    if not w.agentapi_up:
        return None
    frames = w.rng.sample(_MALFORMED, w.rng.randint(1, len(_MALFORMED)))
    for frame in frames:
        w.rig.agentapi.fake.inject_raw(frame)
    return f"malformed({len(frames)})"


async def sidecar_sigkill(w: World) -> str | None:
    if not w.sidecar_running:
        return None
    w.expected_exits.add(len(w.rig.sidecars) - 1)
    await w.rig.sigkill()
    w.sidecar_running = False
    return "sidecar_sigkill"


async def sidecar_sigterm(w: World) -> str | None:
    if not w.sidecar_running:
        return None
    w.expected_exits.add(len(w.rig.sidecars) - 1)
    code = await w.rig.sigterm(timeout=15)
    w.sidecar_running = False
    if code != 0:
        w.crashes.append(f"sidecar #{len(w.rig.sidecars) - 1} exited {code} after SIGTERM")
    return "sidecar_sigterm"


async def sidecar_start(w: World) -> str | None:
    if w.sidecar_running:
        return None
    await w.rig.start_sidecar()
    w.sidecar_running = True
    return "sidecar_start"


STEPS: Final[tuple[tuple[Step, int], ...]] = (
    (turn, 10),
    (dwell, 8),
    (invalid_message, 1),
    (coder_down, 3),
    (coder_up, 4),
    (coder_503, 3),
    (coder_hang, 2),
    (coder_close, 2),
    (token_rotated, 1),
    (token_file_updated, 2),
    (agentapi_kill, 2),
    (agentapi_start, 3),
    (agentapi_restart_shorter, 1),
    (agentapi_save_state, 2),
    (sse_drop_every_k, 2),
    (malformed_frames, 2),
    (sidecar_sigkill, 1),
    (sidecar_sigterm, 1),
    (sidecar_start, 3),
)


async def heal(w: World) -> None:
    rig = w.rig
    rig.coder.fake.clear_faults()
    if not w.coder_up:
        await rig.coder.server.start()
    if w.stale_token is not None:
        await token_file_updated(w)
    if not w.agentapi_up:
        await rig.agentapi.server.start()
    if not w.sidecar_running:
        await sidecar_start(w)


def _crashes(w: World) -> list[str]:
    found = list(w.crashes)
    for index, sidecar in enumerate(w.rig.sidecars):
        proc = sidecar.proc
        code = proc.proc.returncode if proc.proc is not None else None
        if code is not None and index not in w.expected_exits:
            found.append(f"sidecar #{index} exited {code} on its own")
        if proc.events("task.crashed"):
            found.append(f"sidecar #{index} logged task.crashed")
        printed = traceback_in(proc.output())
        if printed is not None:
            found.append(f"sidecar #{index} printed a traceback:\n{printed}")
    return found


async def _poisoned(rig: Rig) -> int:
    """Accepted posts a read-back would fail on, plus a failing read-back at the end."""
    count = len(poisoned_posts(rig.coder.fake))
    if rig.coder.server.running and rig.coder.fake.stored_snapshot() is not None:
        status, _ = await read_back(rig.coder.fake, rig.coder.url)
        count += status != 200
    return count


async def run_chaos(rig: Rig, seed: int, steps: int | None = None) -> RunResult:
    """One seeded run; never raises for what the sidecar does (the result says)."""
    rng = random.Random(seed)
    rig.use_state_file()
    rig.extra_env.update(
        {
            "SIDECAR_HTTP_TIMEOUT": "1",
            "SIDECAR_SHUTDOWN_TIMEOUT": "2",
            "CODER_MCP_APP_STATUS_SLUG": "claude-code",
        }
    )
    w = World(rig, rng)
    started = time.monotonic()
    problem: str | None = None
    try:
        rig.agentapi.fake.add_message("agent", "Hello! Ready to help.")
        await sidecar_start(w)
        count = steps if steps is not None else rng.randint(10, 16)
        weights = [weight for _, weight in STEPS]
        while len(w.steps) < count:
            ((step, _),) = rng.choices(STEPS, weights)
            name = await step(w)
            if name is not None:
                w.steps.append(name)
        await heal(w)
        await turn(w)  # the agent has the last word, after the faults
        try:
            await rig.wait_truth(timeout=HEAL_DEADLINE_S)
        except AssertionError as exc:
            problem = str(exc)
        else:
            # a clean stop must neither fail nor undo it
            await sidecar_sigterm(w)
            after = ground_truth_problem(rig.agentapi.fake, rig.coder.fake)
            if after is not None:
                problem = f"after SIGTERM: {after}"
    except Exception as exc:  # the rig or the sidecar broke the run: report, never hide
        problem = f"run aborted: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
    crashes = _crashes(w)
    return RunResult(
        seed=seed,
        truth_stored=problem is None,
        crashes=len(crashes),
        poisoned=await _poisoned(rig),
        steps=w.steps,
        seconds=time.monotonic() - started,
        problem="; ".join([*crashes, *([problem] if problem else [])]) or None,
    )

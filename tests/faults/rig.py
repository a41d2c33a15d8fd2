"""The fault rig: real `coder-task-sidecar` processes against the loopback fakes, a
simulated agent driving the agentapi fake, and the ground truth the Coder fake must hold.

The ground truth is computed from the agentapi fake alone, independently of the sidecar's
own snapshot code: the newest `MAX_MESSAGES` messages by id whose role is user or agent,
content exactly as agentapi has it, unless the 65,536-byte rule forced the sidecar to
drop older messages or cut the newest one (then the stored content must be the original's
tail behind the marker, and the cut must have been necessary). After agentapi started
again with a new conversation, the stored snapshot carries what was said before, then the
sidecar's restart marker, then agentapi's conversation: the part after the newest marker
(its ids less the marker's id + 1 are agentapi's) must be the newest of agentapi's
conversation, the part before it is what was held.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import struct
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from sidecar.history import MARKER as RESTART_MARKER
from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder, RecordedRequest
from tests.e2e.harness import SidecarProcess, metric
from tests.e2e.workspace import Workspace
from tests.tracebacks import assert_no_traceback

__all__ = [
    "MAX_BYTES",
    "MAX_MESSAGES",
    "Agent",
    "FileReads",
    "Rig",
    "assert_ground_truth",
    "expected_messages",
    "ground_truth_problem",
    "poisoned_posts",
    "snapshot_problem",
    "wait_ground_truth",
    "wait_log",
]

MAX_MESSAGES: Final = 10
MAX_BYTES: Final = 65_536
ROLES: Final = frozenset(("user", "agent"))
# The visible notice in front of a cut message (SPEC §3 "Snapshot building").
_MARKER: Final = re.compile(r"\A\[… (\d+) earlier characters cut by coder-task-sidecar …\]\n")
# A cut keeps the longest tail that fits: one more code point (≤ 6 bytes escaped) plus a
# changing digit count in the marker must not have fit.
_CUT_SLACK: Final = 16
_FIELDS: Final = ("id", "content", "role", "time")


# --- the ground truth ---------------------------------------------------------------------


def expected_messages(
    agentapi: FakeAgentapi, max_messages: int = MAX_MESSAGES
) -> list[dict[str, Any]]:
    """What a snapshot of agentapi's conversation must carry before the size rules."""
    valid = sorted((m for m in agentapi.messages if m.role in ROLES), key=lambda m: m.id)
    return [
        {"id": m.id, "content": m.content, "role": m.role, "time": m.time}
        for m in valid[-max_messages:]
    ]


def _encoded_size(messages: Sequence[dict[str, Any]]) -> int:
    body = json.dumps({"messages": list(messages)}, ensure_ascii=False, separators=(",", ":"))
    return len(body.encode("utf-8"))


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:30] + "…" + text[-40:])


def snapshot_problem(
    expected: Sequence[dict[str, Any]], body: bytes, max_bytes: int = MAX_BYTES
) -> str | None:
    """Why `body` is not the snapshot of `expected` under the window and size rules, or
    None when it is."""
    if not expected:
        return "agentapi holds no valid message: there is no ground truth to store"
    if len(body) > max_bytes:
        return f"body is {len(body)} bytes, over {max_bytes}"
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return f"body is not JSON: {exc}"
    stored = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(stored, list) or not stored:
        return "body has no messages"
    markers = [i for i, m in enumerate(stored) if m.get("content") == RESTART_MARKER]
    if markers:
        return _restarted_problem(expected, stored, markers[-1])
    if len(stored) > len(expected):
        return f"{len(stored)} messages stored, only {len(expected)} expected"
    want = list(expected[-len(stored) :])
    got_ids = [m.get("id") for m in stored]
    want_ids = [m["id"] for m in want]
    if got_ids != want_ids:
        return f"stored ids {got_ids} != newest ids {want_ids}"
    for got, exp in zip(stored, want, strict=True):
        if sorted(got) != sorted(_FIELDS):
            return f"message {got.get('id')} has fields {sorted(got)}"
        for name in ("role", "time"):
            if got[name] != exp[name]:
                return f"message {exp['id']}: {name} {got[name]!r} != {exp[name]!r}"
    for got, exp in zip(stored[:-1], want[:-1], strict=True):
        if got["content"] != exp["content"]:
            return (
                f"message {exp['id']}: content {_short(got['content'])} != {_short(exp['content'])}"
            )
    if len(stored) < len(expected) and _encoded_size(expected[-len(stored) - 1 :]) <= max_bytes:
        return f"dropped to {len(stored)} messages although {len(stored) + 1} fit"
    last_got, last_exp = stored[-1]["content"], want[-1]["content"]
    if last_got == last_exp:
        return None
    # Only a newest message too large on its own may be cut, behind the marker.
    match = _MARKER.match(last_got)
    if match is None:
        return f"newest message {want[-1]['id']}: content {_short(last_got)} != {_short(last_exp)}"
    if len(stored) != 1 or _encoded_size(want[-1:]) <= max_bytes:
        return f"newest message {want[-1]['id']} was cut although it fits"
    tail = last_got[match.end() :]
    cut = int(match.group(1))
    if not last_exp.endswith(tail) or cut != len(last_exp) - len(tail):
        return (
            f"newest message {want[-1]['id']}: the cut content is not the newest content's "
            f"tail (cut={cut}, tail={_short(tail)}, newest={_short(last_exp)})"
        )
    if len(body) < max_bytes - _CUT_SLACK:
        return f"cut body is {len(body)} bytes: a longer tail would have fit"
    return None


def _restarted_problem(
    expected: Sequence[dict[str, Any]], stored: list[dict[str, Any]], marker: int
) -> str | None:
    """`stored` holds a restart marker at index `marker`: ids ascending, the window kept,
    and after the marker the newest of agentapi's conversation, word for word."""
    ids = [m.get("id") for m in stored]
    numbers = [i for i in ids if isinstance(i, int)]
    if numbers != ids or numbers != sorted(set(numbers)):
        return f"stored ids {ids} are not strictly ascending"
    if len(stored) > MAX_MESSAGES:
        return f"{len(stored)} messages stored, over the window of {MAX_MESSAGES}"
    offset = stored[marker]["id"] + 1
    after = [{**m, "id": m["id"] - offset} for m in stored[marker + 1 :]]
    if not after:
        return "nothing of agentapi's conversation after the restart marker"
    want = list(expected[-len(after) :])
    if [m["id"] for m in after] != [m["id"] for m in want]:
        return (
            f"after the marker: ids {[m['id'] for m in after]} != newest {[m['id'] for m in want]}"
        )
    for got, exp in zip(after, want, strict=True):
        if (got["role"], got["content"]) != (exp["role"], exp["content"]):
            return f"after the marker: message {exp['id']} differs ({_short(got['content'])})"
    return None


def ground_truth_problem(agentapi: FakeAgentapi, coder: FakeCoder) -> str | None:
    """None when the Coder fake stores exactly the newest conversation of agentapi."""
    stored = coder.snapshots.get(coder.task_id)
    if stored is None:
        return "Coder stores no snapshot"
    return snapshot_problem(expected_messages(agentapi), stored.body)


def poisoned_posts(coder: FakeCoder) -> list[RecordedRequest]:
    """Accepted snapshots that would make the logs read-back fail (a role other than
    user/agent): one such post poisons the task's logs until the next one."""
    bad = []
    for request in coder.accepted_snapshot_posts():
        messages = request.json().get("messages") or []
        if any(not isinstance(m, dict) or m.get("role") not in ROLES for m in messages):
            bad.append(request)
    return bad


async def read_back(coder: FakeCoder, coder_url: str) -> tuple[int, Any]:
    url = f"{coder_url}/api/v2/tasks/me/{coder.task_id}/logs"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Coder-Session-Token": coder.token}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def assert_ground_truth(agentapi: FakeAgentapi, coder: FakeCoder, coder_url: str) -> None:
    """The Coder fake stores the newest conversation agentapi produced, and
    GET /api/v2/tasks/{user}/{task}/logs accepts it."""
    problem = ground_truth_problem(agentapi, coder)
    assert problem is None, f"ground truth not stored: {problem}"
    status, body = await read_back(coder, coder_url)
    assert status == 200, f"logs read-back answered {status}: {body}"
    stored = coder.stored_snapshot()
    assert stored is not None
    types = {"user": "input", "agent": "output"}
    want = [(m["id"], m["content"], types[m["role"]]) for m in stored["messages"]]
    got = [(e["id"], e["content"], e["type"]) for e in body["logs"]]
    assert got == want, "logs read-back differs from the stored snapshot"
    assert body["snapshot"] is True


async def wait_ground_truth(
    agentapi: FakeAgentapi, coder: FakeCoder, coder_url: str, timeout: float = 10.0
) -> float:
    """Wait (re-checked on every Coder request) until the ground truth is stored; then
    assert it fully. Returns the seconds waited."""
    started = time.monotonic()
    try:
        await coder.wait_for(lambda: ground_truth_problem(agentapi, coder) is None, timeout)
    except TimeoutError as exc:
        raise AssertionError(
            f"ground truth not stored within {timeout} s: "
            f"{ground_truth_problem(agentapi, coder)} ({exc})"
        ) from None
    await assert_ground_truth(agentapi, coder, coder_url)
    return time.monotonic() - started


# --- a simulated agent --------------------------------------------------------------------


# Some multi-byte text and an escape sequence, as terminal output carries them.
_FLAVOUR: Final = "Ünïcödé ✓ €5 🙂 \x1b[0m\t"


class Agent:
    """Drives the agentapi fake as a coding agent does: a user message and `running`, an
    agent message updated in place while it streams, then `stable`.

    `pace` is the agent's typing cadence between two in-place updates; it is the producer
    running at a realistic rate, never a wait for the sidecar.
    """

    def __init__(self, fake: FakeAgentapi, *, pace: float = 0.002) -> None:
        self.fake = fake
        self.pace = pace
        self.turns = 0

    def reply_text(self, size: int = 600) -> str:
        unit = f"[turn {self.turns}] {_FLAVOUR}working on it; "
        return (unit * (size // len(unit) + 1))[:size]

    async def turn(self, *, size: int = 600, chunks: int = 8, prompt: str | None = None) -> None:
        self.turns += 1
        self.fake.add_message("user", prompt or f"Step {self.turns}: keep going")
        self.fake.set_status("running")
        await self.stream(self.reply_text(size), chunks=chunks)
        self.fake.set_status("stable")

    async def stream(self, reply: str, *, chunks: int = 8) -> None:
        """A new agent message whose content grows in `chunks` in-place updates."""
        step = max(1, len(reply) // chunks)
        self.fake.add_message("agent", reply[:step])
        for end in range(2 * step, len(reply) + step, step):
            await asyncio.sleep(self.pace)
            self.fake.update_last(reply[: min(end, len(reply))])

    def say(self, text: str) -> None:
        """One more in-place update of the newest message (it must exist)."""
        self.fake.update_last(text)


# --- processes ----------------------------------------------------------------------------


@dataclass
class Sidecar:
    proc: SidecarProcess
    metrics_url: str


# What the fault cases add to the workspace's settings: a short request deadline, the
# health listener for /metrics, and debug logs to tell what the sidecar did.
_RIG_SETTINGS: Final = {
    "SIDECAR_HTTP_TIMEOUT": "2",
    "SIDECAR_HTTP_ADDR": "127.0.0.1:0",
    "SIDECAR_LOG_LEVEL": "debug",
}


@dataclass
class Rig(Workspace):
    """A workspace and the sidecar processes run in it (the newest is `sidecar`), which
    read the token from the token file."""

    extra_env: dict[str, str] = field(default_factory=dict)
    sidecars: list[Sidecar] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.agent = Agent(self.agentapi.fake)

    def use_state_file(self, *, create_dir: bool = True) -> None:
        """Run the sidecars with AGENTAPI_STATE_FILE, as the README's template does.
        Without `create_dir`, agentapi's first save creates the directory."""
        if create_dir:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.extra_env["AGENTAPI_STATE_FILE"] = str(self.state_file)

    @property
    def sidecar(self) -> Sidecar:
        return self.sidecars[-1]

    @property
    def proc(self) -> SidecarProcess:
        return self.sidecars[-1].proc

    def count(self, event: str) -> int:
        """How many `event` lines the newest sidecar logged so far: take it *before* the
        action that causes the next one, then `wait_log(..., count=n + 1)`."""
        return len(self.proc.events(event))

    def env(self, **extra: str) -> dict[str, str]:
        return self.token_file_env(**{**_RIG_SETTINGS, **self.extra_env, **extra})

    async def start_sidecar(self, **extra: str) -> Sidecar:
        proc = SidecarProcess(self.env(**extra))
        await proc.start()
        sidecar = Sidecar(proc, "")
        self.sidecars.append(sidecar)
        listening = await wait_log(proc, "health.listening", timeout=10)
        sidecar.metrics_url = f"http://127.0.0.1:{listening['port']}"
        return sidecar

    async def sigterm(self, timeout: float = 15.0) -> int:
        """Stop the newest sidecar as systemd would; its exit code."""
        return await self.proc.stop(timeout)

    async def sigkill(self) -> int:
        self.proc.signal(signal.SIGKILL)
        return await self.proc.wait(10)

    async def close(self) -> None:
        for sidecar in self.sidecars:
            await sidecar.proc.kill()

    async def metric(self, name: str, **labels: str) -> float:
        return await metric(self.sidecar.metrics_url, name, **labels)

    @contextlib.asynccontextmanager
    async def seen(self, updates: int = 1, timeout: float = 10.0) -> AsyncIterator[None]:
        """A barrier: the `message_update` events produced inside the block have been
        read by the sidecar when it exits (its /metrics counter moved by `updates`)."""
        name = "sidecar_agentapi_events_total"
        before = await self.metric(name, type="message_update")
        yield
        async with asyncio.timeout(timeout):
            while await self.metric(name, type="message_update") < before + updates:
                await asyncio.sleep(0.02)  # polling /metrics, bounded by the timeout

    async def wait_truth(self, timeout: float = 10.0) -> float:
        try:
            return await wait_ground_truth(
                self.agentapi.fake, self.coder.fake, self.coder.url, timeout
            )
        except AssertionError as exc:
            events = [e.get("event", "?") for e in self.proc.logs[-25:]] if self.sidecars else []
            raise AssertionError(f"{exc}\nnewest sidecar's last events: {events}") from None

    async def assert_truth(self) -> None:
        await assert_ground_truth(self.agentapi.fake, self.coder.fake, self.coder.url)

    def truth_problem(self, body: bytes) -> str | None:
        return snapshot_problem(expected_messages(self.agentapi.fake), body)

    async def stop_cleanly(self) -> None:
        """No accepted post poisoned the read-back, and a SIGTERM now exits 0 without
        undoing the stored truth; no sidecar of the run crashed or printed a traceback."""
        assert not poisoned_posts(self.coder.fake)
        assert await self.sigterm() == 0
        assert self.proc.events("shutdown.complete")[-1]["snapshot_delivered"] is True
        await self.assert_truth()
        for sidecar in self.sidecars:
            assert not sidecar.proc.events("task.crashed"), sidecar.proc.output()[-3000:]
            assert_no_traceback(sidecar.proc.output())


async def wait_log(
    proc: SidecarProcess, name: str, *, count: int = 1, timeout: float = 10.0
) -> dict[str, Any]:
    """The `count`-th `name` event, waited for with a deadline."""
    try:
        return await proc.wait_log(name, timeout=timeout, count=count)
    except TimeoutError:
        tail = "\n".join(json.dumps(e, ensure_ascii=False)[:300] for e in proc.logs[-15:])
        raise AssertionError(
            f"no {count}. {name!r} within {timeout} s; last log lines:\n{tail}"
        ) from None


# --- observing another process read a file ------------------------------------------------

_IN_CLOSE_NOWRITE: Final = 0x10
_EVENT_HEADER: Final = struct.Struct("iIII")


class FileReads:
    """Counts completed reads of one file by any process (inotify `IN_CLOSE_NOWRITE` on its
    directory), so a test can act right *after* the sidecar re-read it, without sleeping.
    The test itself must not read the file while this counts."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(path.parent), _IN_CLOSE_NOWRITE) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, "inotify_add_watch failed")
        self._fd = fd
        self._name = os.fsencode(path.name)
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._on_readable)
        self.count = 0

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT_HEADER.size <= len(data):
            _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            start = offset + _EVENT_HEADER.size
            name = data[start : start + length].rstrip(b"\0")
            offset = start + length
            if name == self._name and mask & _IN_CLOSE_NOWRITE:
                self.count += 1
                self._changed.set()

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)

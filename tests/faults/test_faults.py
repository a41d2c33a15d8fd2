"""Fault injection: the newest conversation reaches Coder whatever fails around it.

Each case runs the real `coder-task-sidecar` process against the loopback fakes: a
baseline conversation is stored first (the pipeline works), then the fault is injected
while the agent keeps working, then everything heals. The invariant checked in every
case: the snapshot the Coder fake stores equals the newest conversation the agentapi fake
produced (within the window and size rules), the logs read-back accepts it, no accepted
post ever poisoned the read-back, and a SIGTERM afterwards exits 0 without undoing it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from sidecar.standins.coder import FakeCoder
from tests.faults.rig import (
    MAX_BYTES,
    FileReads,
    Rig,
    snapshot_problem,
    wait_log,
)

# --- the faults ---------------------------------------------------------------------------


async def coder_refusing_connections(rig: Rig) -> None:
    retries = rig.count("snapshot.retry")
    await rig.coder.server.stop()
    await rig.agent.turn()
    await wait_log(rig.proc, "snapshot.retry", count=retries + 2)
    await rig.agent.turn()  # more arrives while Coder is still down: the newest must win
    await rig.coder.server.start()


async def check_refused(rig: Rig) -> None:
    retries = rig.proc.events("snapshot.retry")
    assert len(retries) >= 2
    assert all(e["status"] is None for e in retries), "a refused connection has no status"


async def coder_503_with_retry_after(rig: Rig) -> None:
    rig.coder.fake.fail_next(503, times=2, retry_after=1)
    await rig.agent.turn()
    await rig.agent.turn()


def _next_posts_after(coder: FakeCoder, status: int) -> list[float]:
    """Seconds between each post answered `status` and the post that followed it."""
    posts = coder.snapshot_posts()
    return [b.at - a.at for a, b in itertools.pairwise(posts) if a.status == status]


async def check_retry_after_honoured(rig: Rig) -> None:
    gaps = _next_posts_after(rig.coder.fake, 503)
    assert len(gaps) == 2, gaps
    assert min(gaps) >= 0.95, f"Retry-After: 1 not honoured, next posts came after {gaps}"
    assert [e["retry_in_s"] for e in rig.proc.events("snapshot.retry")] == [1.0, 1.0]


async def coder_503_without_retry_after(rig: Rig) -> None:
    rig.coder.fake.fail_next(503, times=3)
    await rig.agent.turn()
    # The newest message outgrows the 64 KiB body on its own: the cut rule applies.
    await rig.agent.turn(size=90_000, chunks=10)


async def check_backoff(rig: Rig) -> None:
    retries = rig.proc.events("snapshot.retry")
    assert [e["status"] for e in retries] == [503, 503, 503]
    assert all(0 <= e["retry_in_s"] <= 6.0 for e in retries), retries
    stored = rig.coder.fake.stored_snapshot()
    assert stored is not None
    assert len(stored["messages"]) == 1, "the oversized newest message is sent alone"


async def coder_request_hangs_until_timeout(rig: Rig) -> None:
    coder = rig.coder.fake
    coder.hang_next(1)
    await rig.agent.turn()
    await coder.wait_for(lambda: any(r.fault == "hang" for r in coder.requests))
    await rig.agent.turn()  # the conversation moves on while the request hangs


async def check_timed_out(rig: Rig) -> None:
    retries = rig.proc.events("snapshot.retry")
    assert any(e["detail"] == "timed out" for e in retries), retries


async def coder_closes_connection_mid_request(rig: Rig) -> None:
    rig.coder.fake.close_next(2)
    await rig.agent.turn()
    await rig.agent.turn()


async def check_closed(rig: Rig) -> None:
    assert sum(r.fault == "close" for r in rig.coder.fake.requests) == 2
    assert len(rig.proc.events("snapshot.retry")) >= 2


async def coder_401_until_token_file_rotated(rig: Rig) -> None:
    refused = rig.count("snapshot.unauthorized")
    new_token = rig.coder.fake.rotate_token()  # a new build: the old token stops working
    await rig.agent.turn()
    await wait_log(rig.proc, "snapshot.unauthorized", count=refused + 1)
    rig.write_token(new_token)


async def check_token_reloaded(rig: Rig) -> None:
    assert rig.proc.events("token.reloaded")
    accepted = rig.coder.fake.accepted_snapshot_posts()[-1]
    assert accepted.headers["Coder-Session-Token"] == rig.coder.fake.token


async def coder_401_token_file_rotated_during_backoff(rig: Rig) -> None:
    reads = FileReads(rig.token_file)
    try:
        seen = reads.count
        new_token = rig.coder.fake.rotate_token()
        await rig.agent.turn()
        # The 401 made the sidecar re-read the (not yet rotated) file; it now backs off.
        await reads.wait(seen + 1)
        rig.write_token(new_token)
        rig.notes["rotated_at"] = time.monotonic()
    finally:
        reads.close()


async def check_rotation_used_at_once(rig: Rig) -> None:
    await check_token_reloaded(rig)
    rotated_at = rig.notes["rotated_at"]
    token = rig.coder.fake.token
    stale = [
        r
        for r in rig.coder.fake.snapshot_posts()
        if r.at > rotated_at and r.headers.get("Coder-Session-Token") != token
    ]
    refused = rig.proc.events("snapshot.unauthorized")
    assert not stale, (
        f"{len(stale)} snapshot post(s) sent {[round(r.at - rotated_at, 2) for r in stale]} s "
        "after CODER_AGENT_TOKEN_FILE was rotated still carried the replaced token: the "
        "file is not re-read when it changes, only after the next 401 once the back-off "
        f"(retry_in_s={[e['retry_in_s'] for e in refused]}) has run out"
    )


async def agentapi_killed_mid_stream(rig: Rig) -> None:
    fake, proc = rig.agentapi.fake, rig.proc
    unreachable = rig.count("agentapi.unreachable")
    reply = rig.agent.reply_text(4000)
    fake.add_message("user", "Refactor the parser")
    fake.set_status("running")
    fake.add_message("agent", reply[:100])
    for end in range(200, 2001, 100):
        await asyncio.sleep(rig.agent.pace)  # the agent's typing cadence
        fake.update_last(reply[:end])
    await rig.agentapi.server.stop()  # killed mid-stream: the connection just drops
    await wait_log(proc, "agentapi.unreachable", count=unreachable + 1)
    # It comes back with the conversation it had (restored from its state file) and the
    # agent goes on streaming the same message.
    await rig.agentapi.server.start()
    for end in range(2100, 4001, 100):
        await asyncio.sleep(rig.agent.pace)
        fake.update_last(reply[:end])
    fake.set_status("stable")


async def agentapi_restarted_then_short_turn(rig: Rig) -> None:
    """agentapi restarts (refused for a moment), comes back healthy with /events, and the
    agent answers a question in less time than the sidecar's /status poll interval."""
    fake, proc = rig.agentapi.fake, rig.proc
    refused = rig.count("agentapi.connect_failed")
    connected = rig.count("agentapi.connected")
    await rig.agentapi.server.stop()
    # Refused often enough that counting refusals as a failing stream would switch the
    # sidecar to polling.
    await wait_log(proc, "agentapi.connect_failed", count=refused + 4)
    await rig.agentapi.server.start()
    await wait_log(proc, "agentapi.connected", count=connected + 1)
    fake.add_message("user", "Quick one: which file holds the parser?")
    fake.set_status("running")
    fake.add_message("agent", "sidecar/agentapi/sse.py")
    fake.set_status("stable")


async def agentapi_restarted_shorter_history(rig: Rig) -> None:
    for _ in range(5):  # 13 messages: more than a snapshot's window of 10
        await rig.agent.turn()
    await rig.wait_truth()
    await rig.agentapi.server.stop()
    rig.agentapi.fake.restart(
        [("user", "Continue from the plan"), ("agent", "Resuming: the parser is next.")]
    )
    await rig.agentapi.server.start()
    # A new conversation: the old one's newest words, the marker, then the new one.
    await rig.wait_truth()
    await rig.agent.turn()


async def agentapi_stopped_last_update_in_state_file(rig: Rig) -> None:
    """agentapi shuts down: its server goes first, the agent's last output only reaches
    the state file it saves on exit."""
    fake = rig.agentapi.fake
    unreachable = rig.count("agentapi.unreachable")
    await rig.agent.turn()
    fake.set_status("running")
    await rig.agentapi.server.stop()
    rig.agent.say(fake.messages[-1].content + " Final words, after the server stopped.")
    fake.set_status("stable")
    fake.write_state_file(rig.state_file)
    await wait_log(rig.proc, "agentapi.unreachable", count=unreachable + 1)


async def agentapi_killed_soon_after_state_save(rig: Rig) -> None:
    """agentapi saved its state (SIGUSR1) mid-turn, streamed on, then was killed."""
    fake = rig.agentapi.fake
    reads = rig.count("statefile.read")
    fake.add_message("user", "Why does the parser fail?")
    fake.set_status("running")
    fake.add_message("agent", "Reading parser.py")
    fake.write_state_file(rig.state_file)
    await wait_log(rig.proc, "statefile.read", count=reads + 1)
    async with rig.seen(updates=1):  # the sidecar read the newer content live
        rig.agent.say("Reading parser.py: the tokenizer drops the last line.")
    unreachable = rig.count("agentapi.unreachable")
    await rig.agentapi.server.stop()  # killed: no save on exit
    await wait_log(rig.proc, "agentapi.unreachable", count=unreachable + 1)


async def sse_dropped_every_k_events(rig: Rig) -> None:
    fake = rig.agentapi.fake
    fake.drop_every_k = 5
    failing = rig.count("agentapi.stream_failing")
    for _ in range(3):
        # Each turn streams on a fresh connection and loses it after 5 events; the third
        # short-lived stream may already have switched the sidecar to polling.
        await fake.wait_for(
            lambda: fake.subscriber_count >= 1 or rig.count("agentapi.stream_failing") > failing
        )
        await rig.agent.turn(size=1200, chunks=12)
    await wait_log(rig.proc, "agentapi.stream_failing", count=failing + 1)
    await rig.agent.turn(size=1200, chunks=12)  # picked up by the polling fallback


async def check_dropped(rig: Rig) -> None:
    # Three short-lived streams in a row make the sidecar fall back to polling.
    assert rig.agentapi.fake.stream_connects == 3, rig.agentapi.fake.stream_connects


_TIME = '"time":"2025-01-01T00:00:00Z"'
MALFORMED: tuple[bytes, ...] = (
    b"event: message_update\ndata: {not json\n\n",
    b"event: message_update\ndata: [1,2,3]\n\n",
    b"event: message_update\ndata: null\n\n",
    b'event: message_update\ndata: {"id":99,"role":"system","message":"x",'
    + _TIME.encode()
    + b"}\n\n",
    b'event: message_update\ndata: {"id":98,"role":"agent","message":"x","time":"yesterday"}\n\n',
    b'event: message_update\ndata: {"id":97,"role":"agent",' + _TIME.encode() + b"}\n\n",
    b'event: message_update\ndata: {"id":"96","role":"agent","message":"x",'
    + _TIME.encode()
    + b"}\n\n",
    b'event: message_update\ndata: {"id":-1,"role":"user","message":"x",'
    + _TIME.encode()
    + b"}\n\n",
    b'event: message_update\ndata: {"id":true,"role":"user","message":"x",'
    + _TIME.encode()
    + b"}\n\n",
    b'event: message_update\ndata: {"id":1180591620717411303424,"role":"user","message":"x",'
    + _TIME.encode()
    + b"}\n\n",
    b"event: message_update\ndata: {\xff\xfe broken utf-8\n\n",
    b'event: status_change\ndata: {"status":"exploded","agent_type":"claude"}\n\n',
    b'event: agent_error\ndata: {"message":"x","level":"panic",' + _TIME.encode() + b"}\n\n",
    b'event: screen_update\ndata: {"screen":"whatever"}\n\n',
    b": a comment line\n\n",
    b"data: data without an event type\n\n",
    b"event: message_update\n\n",
    b"retry: 10\nid: 7\n\n",
    b"event: message_update\ndata: " + b"x" * 2_000_000 + b"\n\n",
)


async def malformed_frames(rig: Rig) -> None:
    fake = rig.agentapi.fake
    invalid = rig.count("agentapi.invalid_input")
    fake.add_message("user", "Parse this log")
    fake.set_status("running")
    for frame in MALFORMED:
        fake.inject_raw(frame)
    fake.add_message("agent", "Reading the log now.")
    # agentapi's own history holds a message with a role Coder cannot read back
    fake.add_message("system", "a role that would poison the read-back")
    for frame in reversed(MALFORMED):
        fake.inject_raw(frame)
    await rig.agent.turn()
    await wait_log(rig.proc, "agentapi.invalid_input", count=invalid + 1)


async def check_malformed(rig: Rig) -> None:
    reasons = {e["reason"] for e in rig.proc.events("agentapi.invalid_input")}
    assert {"json", "role", "time", "id", "content", "status", "level", "shape"} <= reasons
    assert rig.agentapi.fake.stream_connects == 1, "malformed frames must not cost the stream"


async def sidecar_sigkill_and_restart(rig: Rig) -> None:
    coder = rig.coder.fake
    coder.fail_next(503, times=1_000_000)
    spooled = rig.count("spool.written")
    await rig.agent.turn()
    await wait_log(rig.proc, "spool.written", count=spooled + 1)
    assert await rig.sigkill() == -signal.SIGKILL
    await rig.agent.turn()  # the agent goes on while no sidecar runs
    coder.clear_faults()
    await rig.start_sidecar()
    await wait_log(rig.proc, "spool.recovered")


async def _spool_holds_truth(rig: Rig, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            written = rig.count("spool.written")
            if rig.spool_path.exists() and rig.truth_problem(rig.spool_path.read_bytes()) is None:
                return
            await wait_log(rig.proc, "spool.written", count=written + 1, timeout=timeout)


async def sidecar_sigkill_restart_agentapi_gone(rig: Rig) -> None:
    coder = rig.coder.fake
    coder.fail_next(503, times=1_000_000)
    await rig.agent.turn()
    await _spool_holds_truth(rig)
    assert await rig.sigkill() == -signal.SIGKILL
    await rig.agentapi.server.stop()
    coder.clear_faults()
    await rig.start_sidecar()


async def check_spool_cleared(rig: Rig) -> None:
    assert rig.proc.events("spool.recovered")
    await wait_log(rig.proc, "spool.cleared")
    assert not rig.spool_path.exists(), "a delivered spool must be deleted"


async def _shutdown_coder_down_then_start_agentapi_gone(
    rig: Rig, *, save_state: str | None = None
) -> None:
    """`save_state`: when agentapi saved its state file — "before" the last turn (then it
    was killed), "at_exit" (one more update the sidecar never saw), or never."""
    fake = rig.agentapi.fake
    if save_state == "before":
        reads = rig.count("statefile.read")
        fake.write_state_file(rig.state_file)
        await wait_log(rig.proc, "statefile.read", count=reads + 1)
    await rig.coder.server.stop()
    await rig.agent.turn()
    async with rig.seen(updates=1):  # the sidecar read it but never got it out
        fake.set_status("running")
        rig.agent.say(fake.messages[-1].content + " Done: all tests pass.")
        fake.set_status("stable")
    assert await rig.sigterm() == 0
    done = rig.proc.events("shutdown.complete")[-1]
    assert done["snapshot_delivered"] is False
    assert done["spooled"] is True
    assert rig.truth_problem(rig.spool_path.read_bytes()) is None, "spool lacks the newest"
    if save_state == "at_exit":
        rig.agent.say(fake.messages[-1].content + " (one more line after the sidecar stopped)")
        fake.write_state_file(rig.state_file)
    await rig.agentapi.server.stop()
    await rig.coder.server.start()
    await rig.start_sidecar()


async def shutdown_coder_down_then_start_agentapi_gone(rig: Rig) -> None:
    await _shutdown_coder_down_then_start_agentapi_gone(rig)


async def shutdown_coder_down_then_start_agentapi_gone_state_saved_at_exit(rig: Rig) -> None:
    await _shutdown_coder_down_then_start_agentapi_gone(rig, save_state="at_exit")


async def shutdown_coder_down_then_start_agentapi_gone_older_state_file(rig: Rig) -> None:
    await _shutdown_coder_down_then_start_agentapi_gone(rig, save_state="before")


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[Rig], Awaitable[None]]
    check: Callable[[Rig], Awaitable[None]] | None = None
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Rig], None] | None = None


def state_file(rig: Rig) -> None:
    rig.use_state_file()


def state_file_dir_created_later(rig: Rig) -> None:
    rig.use_state_file(create_dir=False)


FAULTS = (
    Fault("coder_refusing_connections", coder_refusing_connections, check_refused),
    Fault("coder_503_with_retry_after", coder_503_with_retry_after, check_retry_after_honoured),
    Fault("coder_503_without_retry_after", coder_503_without_retry_after, check_backoff),
    Fault(
        "coder_request_hangs_until_timeout",
        coder_request_hangs_until_timeout,
        check_timed_out,
        {"SIDECAR_HTTP_TIMEOUT": "1"},
    ),
    Fault("coder_closes_connection_mid_request", coder_closes_connection_mid_request, check_closed),
    Fault(
        "coder_401_until_token_file_rotated",
        coder_401_until_token_file_rotated,
        check_token_reloaded,
    ),
    Fault(
        "coder_401_token_file_rotated_during_backoff",
        coder_401_token_file_rotated_during_backoff,
        check_rotation_used_at_once,
    ),
    Fault("agentapi_killed_mid_stream", agentapi_killed_mid_stream),
    Fault(
        "agentapi_killed_soon_after_state_save",
        agentapi_killed_soon_after_state_save,
        setup=state_file,
    ),
    Fault(
        "agentapi_stopped_last_update_in_state_file",
        agentapi_stopped_last_update_in_state_file,
        setup=state_file,
    ),
    Fault(
        "agentapi_stopped_last_update_in_state_file_new_dir",
        agentapi_stopped_last_update_in_state_file,
        setup=state_file_dir_created_later,
    ),
    Fault("agentapi_restarted_then_short_turn", agentapi_restarted_then_short_turn),
    Fault("agentapi_restarted_shorter_history", agentapi_restarted_shorter_history),
    Fault("sse_dropped_every_k_events", sse_dropped_every_k_events, check_dropped),
    Fault("malformed_frames", malformed_frames, check_malformed),
    Fault("sidecar_sigkill_and_restart", sidecar_sigkill_and_restart, check_spool_cleared),
    Fault(
        "sidecar_sigkill_restart_agentapi_gone",
        sidecar_sigkill_restart_agentapi_gone,
        check_spool_cleared,
    ),
    Fault(
        "shutdown_coder_down_then_start_agentapi_gone",
        shutdown_coder_down_then_start_agentapi_gone,
        check_spool_cleared,
        {"SIDECAR_SHUTDOWN_TIMEOUT": "2"},
    ),
    Fault(
        "shutdown_coder_down_then_start_agentapi_gone_state_saved_at_exit",
        shutdown_coder_down_then_start_agentapi_gone_state_saved_at_exit,
        check_spool_cleared,
        {"SIDECAR_SHUTDOWN_TIMEOUT": "2"},
        state_file,
    ),
    Fault(
        "shutdown_coder_down_then_start_agentapi_gone_older_state_file",
        shutdown_coder_down_then_start_agentapi_gone_older_state_file,
        check_spool_cleared,
        {"SIDECAR_SHUTDOWN_TIMEOUT": "2"},
        state_file,
    ),
)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_newest_conversation_reaches_coder(fault: Fault, rig: Rig) -> None:
    rig.extra_env.update(fault.env)
    if fault.setup is not None:
        fault.setup(rig)
    rig.agentapi.fake.add_message("agent", "Hello! Ready to help.")
    await rig.agent.turn()
    await rig.start_sidecar()
    await rig.wait_truth()

    await fault.inject(rig)
    await rig.wait_truth()
    if fault.check is not None:
        await fault.check(rig)
    await rig.stop_cleanly()


# --- the oracle itself ----------------------------------------------------------------------


def _msg(i: int, content: str, role: str = "agent") -> dict[str, object]:
    return {"id": i, "content": content, "role": role, "time": "2025-01-01T00:00:00Z"}


def _body(messages: list[dict[str, object]]) -> bytes:
    return json.dumps({"messages": messages}, ensure_ascii=False, separators=(",", ":")).encode()


def test_oracle_accepts_exactly_the_newest_window() -> None:
    expected = [_msg(i, f"m{i}") for i in range(10)]
    assert snapshot_problem(expected, _body(expected)) is None
    assert snapshot_problem(expected, _body(expected[1:])) is not None  # dropped one that fit
    stale = [*expected[:-1], _msg(9, "m9 (older)")]
    assert "content" in (snapshot_problem(expected, _body(stale)) or "")
    poisoned = [*expected, _msg(10, "x", role="system")]
    assert snapshot_problem(expected, _body(poisoned)) is not None
    assert snapshot_problem(expected, _body([])) is not None


def test_oracle_applies_the_size_rules() -> None:
    big = "€" * 30_000  # 90,000 bytes: alone over the limit
    older = [_msg(0, "a" * 40_000), _msg(1, "b" * 30_000)]
    # the older message must go (both do not fit), the newer alone fits
    assert snapshot_problem(older, _body(older[1:])) is None
    assert snapshot_problem(older, _body(older)) is not None
    expected = [_msg(0, "hi"), _msg(1, big)]

    def cut(keep: int) -> bytes:
        marker = f"[… {len(big) - keep} earlier characters cut by coder-task-sidecar …]\n"
        return _body([_msg(1, marker + big[len(big) - keep :])])

    keep = MAX_BYTES // 3
    while len(cut(keep)) > MAX_BYTES:  # the longest tail that fits
        keep -= 1
    best = cut(keep)
    assert snapshot_problem(expected, cut(keep - 10)) is not None  # needlessly short
    assert snapshot_problem(expected, best) is None
    assert snapshot_problem(expected, _body([_msg(1, "[… 3 earlier characters cut")])) is not None
    wrong_count = best.replace(b"[\xe2\x80\xa6 ", b"[\xe2\x80\xa6 1", 1)
    assert snapshot_problem(expected, wrong_count) is not None

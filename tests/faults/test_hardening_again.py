"""The second round of what real workspaces do to the daemon, on the real process: stray
signals, a log pipe whose reader went away, answers that are not Coder's, hostile bodies
from both peers, and someone else's files in the state directory.

Peak memory is read from the kernel's accounting of the sidecar process (VmHWM) and held
to the bound the product promises (150 MB whatever a peer sends): a limit, not a timing.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
from pathlib import Path
from typing import Final

import pytest
from aiohttp import web

from sidecar.runtime.signals import STRAY_SIGNALS
from sidecar.standins.coder import Answer
from sidecar.standins.server import serve
from tests.e2e.harness import SidecarProcess, run_to_exit, sidecar_command, stored_contents
from tests.faults.rig import Rig
from tests.tracebacks import assert_no_traceback

DEADLINE: Final = 20.0
PEAK_RSS_BOUND_KB: Final = 150 * 1024


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


# --- stray signals ---------------------------------------------------------------------------


async def test_sigusr1_posts_the_newest_snapshot_now_and_stray_signals_are_harmless(
    rig: Rig,
) -> None:
    fake, coder = rig.agentapi.fake, rig.coder.fake
    fake.add_message("user", "fix the parser")
    await rig.start_sidecar(SIDECAR_SNAPSHOT_INTERVAL="3600")
    await rig.proc.wait_log("agentapi.connected", timeout=DEADLINE)
    # A change waits for its interval (an hour, spread over two at the start);
    # SIGUSR1 asks for the newest words now, as agentapi saves its state on it.
    for words in ("Working: the tokenizer drops the last line.", "Fixed."):
        async with rig.seen(1):
            fake.add_message("agent", words)
        rig.proc.signal(signal.SIGUSR1)
        await rig.wait_truth()
    assert len(rig.proc.events("snapshot.flush_requested")) == 2
    for sig in STRAY_SIGNALS:
        rig.proc.signal(sig)
    await rig.proc.wait_log("signal.ignored", count=len(STRAY_SIGNALS), timeout=DEADLINE)
    assert rig.proc.proc is not None
    assert rig.proc.proc.returncode is None
    async with rig.seen(1):
        fake.add_message("user", "and the docs")
    await rig.stop_cleanly()
    assert stored_contents(coder) == [m.content for m in fake.messages]


# --- a log pipe whose reader went away -------------------------------------------------------


async def test_a_broken_log_pipe_neither_stops_delivery_nor_the_stop(rig: Rig) -> None:
    fake = rig.agentapi.fake
    fake.add_message("user", "hello")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write is EPIPE
    try:
        proc = await asyncio.create_subprocess_exec(
            *sidecar_command(),
            "run",
            env=rig.env(SIDECAR_SNAPSHOT_INTERVAL="1"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
        )
    finally:
        os.close(write_end)
    try:
        await rig.wait_truth(timeout=DEADLINE)
        fake.add_message("agent", "Hi, later words.")
        await rig.wait_truth(timeout=DEADLINE)
        fake.add_message("user", "more words, every log line about them lost")
        await rig.wait_truth(timeout=DEADLINE)
        # SIGTERM is heard, and the stop's own lines (lost too) do not stop it.
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(DEADLINE):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    await rig.assert_truth()
    record = json.loads((rig.state_dir / "daemon.lock").read_bytes())
    assert record["snapshot"] == "delivered"


# --- a 200 that is not Coder ------------------------------------------------------------------

LOGIN_PAGE: Final = Answer(200, b"<html><body>Sign in to continue</body></html>", "text/html")


async def test_a_login_page_answering_200_is_not_delivered(rig: Rig) -> None:
    fake, coder = rig.agentapi.fake, rig.coder.fake
    coder.answer_next(LOGIN_PAGE, times=10_000)
    fake.add_message("user", "kept, not lost to a login page")
    sidecar = await rig.start_sidecar(SIDECAR_SHUTDOWN_TIMEOUT="2")
    await sidecar.proc.wait_log("snapshot.not_coder", timeout=DEADLINE)
    assert not sidecar.proc.events("snapshot.posted")
    assert await rig.sigterm() == 0
    (done,) = sidecar.proc.events("shutdown.complete")
    assert done["snapshot"] == "spooled"
    assert "kept, not lost" in rig.spool_path.read_text()
    assert_no_traceback(sidecar.proc.output())


async def test_check_fails_every_probe_a_login_page_answers(rig: Rig) -> None:
    rig.coder.fake.answer_next(LOGIN_PAGE, times=10_000, path_contains="/api/v2/workspaceagents")
    code, out, _err = await run_to_exit(rig.env(CODER_MCP_APP_STATUS_SLUG="claude-code"), ["check"])
    assert code == 1
    for probe in ("coder token", "log snapshots", "status relay"):
        assert f"[FAIL] {probe}: answered HTTP 200: text/html, as no Coder does" in out, out
    assert "→ CODER_AGENT_URL answers, but not as Coder does" in out


# --- hostile bodies from Coder ----------------------------------------------------------------

GZIP_BOMB: Final = gzip.compress(b"\0" * (1 << 30), compresslevel=9)  # 1 GiB in ~1 MB


@pytest.mark.parametrize(
    "answer",
    [
        Answer(500, b"[" * 100_000),  # nesting too deep for any JSON parser's stack
        Answer(500, b"x" * (1 << 20), repeat=1024),  # 1 GiB
        Answer(500, b"x" * 65_536, repeat=None),  # never ends
        Answer(500, GZIP_BOMB, headers=(("Content-Encoding", "gzip"),)),
    ],
    ids=["nested", "1GiB", "endless", "gzip-bomb"],
)
async def test_a_hostile_error_body_is_read_bounded_and_the_stop_keeps_its_budget(
    rig: Rig, answer: Answer
) -> None:
    fake, coder = rig.agentapi.fake, rig.coder.fake
    coder.answer_next(answer, times=10_000)
    fake.add_message("user", "kept whatever the error page")
    sidecar = await rig.start_sidecar(SIDECAR_SHUTDOWN_TIMEOUT="1")
    await sidecar.proc.wait_log("snapshot.retry", count=2, timeout=DEADLINE)
    assert sidecar.proc.proc is not None
    peak = peak_rss_kb(sidecar.proc.proc.pid)
    assert await rig.sigterm() == 0
    (done,) = sidecar.proc.events("shutdown.complete")
    assert done["snapshot"] == "spooled"
    assert "kept whatever" in rig.spool_path.read_text()
    assert peak < PEAK_RSS_BOUND_KB, f"peak RSS {peak} kB"
    assert_no_traceback(sidecar.proc.output())


# --- hostile bodies from agentapi -------------------------------------------------------------


async def test_a_huge_messages_body_and_an_endless_status_are_refused_bounded(
    rig: Rig, tmp_path: Path
) -> None:
    async def huge_messages(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(
            b'{"messages":[{"id":0,"role":"user","time":"2026-01-01T00:00:00Z","content":"'
        )
        try:
            for _ in range(500):  # 500 MB, if anyone read it all
                await response.write(b"x" * (1 << 20))
        except (ConnectionError, RuntimeError):
            pass
        return response

    async def endless_status(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b" " * 65_536)
        except (ConnectionError, RuntimeError):
            return response

    app = web.Application()
    app.router.add_get("/messages", huge_messages)
    app.router.add_get("/status", endless_status)
    async with serve(app) as hostile:
        env = rig.env(CODER_MCP_AI_AGENTAPI_URL=hostile.url)
        for args in (["snapshot"], ["check"]):
            proc = SidecarProcess(env, args)
            await proc.start()
            try:
                code = await proc.wait(DEADLINE)
            finally:
                await proc.kill()
            assert_no_traceback(proc.output())
            assert code in (0, 1), (args, proc.output())
        # The daemon polls (no /events here) and keeps both answers bounded.
        sidecar = await rig.start_sidecar(CODER_MCP_AI_AGENTAPI_URL=hostile.url)
        await sidecar.proc.wait_log("agentapi.events_missing", timeout=DEADLINE)
        await sidecar.proc.wait_log("agentapi.unreachable", timeout=DEADLINE)
        assert sidecar.proc.proc is not None
        peak = peak_rss_kb(sidecar.proc.proc.pid)
        assert await rig.sigterm() == 0
    assert peak < PEAK_RSS_BOUND_KB, f"peak RSS {peak} kB"


async def test_event_names_a_peer_makes_up_cost_nothing_that_grows(rig: Rig) -> None:
    fake = rig.agentapi.fake
    fake.add_message("user", "hello")
    await rig.start_sidecar()
    await rig.wait_truth()
    await fake.wait_for_subscribers(1)
    for batch in range(30):
        fake.inject_raw(
            b"".join(f"event: made-up-{batch}-{i}\ndata: {{}}\n\n".encode() for i in range(10_000))
        )
    fake.add_message("agent", "after 300,000 made-up event names")
    await rig.wait_truth(timeout=DEADLINE)
    # Counted, under one label, whatever the names.
    assert await rig.metric("sidecar_agentapi_events_total", type="other") == 300_000
    await rig.stop_cleanly()


async def test_a_replay_of_huge_messages_holds_no_more_than_snapshots_carry(rig: Rig) -> None:
    fake = rig.agentapi.fake
    for i in range(10):
        fake.add_message("agent" if i % 2 else "user", f"{i}" * 10_000_000)
    sidecar = await rig.start_sidecar()
    await rig.wait_truth(timeout=DEADLINE)
    assert sidecar.proc.proc is not None
    peak = peak_rss_kb(sidecar.proc.proc.pid)
    await rig.stop_cleanly()
    assert peak < PEAK_RSS_BOUND_KB, f"peak RSS {peak} kB"


# --- someone else's state directory -----------------------------------------------------------


@pytest.fixture
def planted(rig: Rig) -> Path:
    """The rig's state directory, made before the sidecar runs (as another user would)."""
    rig.state_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    return rig.state_dir


@pytest.mark.parametrize("what", ["fifo", "device", "huge", "symlink"])
async def test_a_spool_slot_that_is_not_a_file_of_ours_is_refused_at_once(
    rig: Rig, planted: Path, tmp_path: Path, what: str
) -> None:
    slot = rig.spool_path
    secret = tmp_path / "root-only"
    secret.write_text(
        '{"messages":[{"id":0,"content":"secret","role":"user","time":"2026-01-01T00:00:00Z"}]}'
    )
    secret.chmod(0o600)
    if what == "fifo":
        os.mkfifo(slot)
    elif what == "device":
        slot.symlink_to("/dev/zero")  # a device behind a link: refused either way
    elif what == "huge":
        with slot.open("wb") as handle:
            handle.truncate(1 << 30)
    else:
        slot.symlink_to(secret)
    rig.agentapi.fake.add_message("user", "the real conversation")
    env = rig.env(CODER_MCP_AI_AGENTAPI_URL="http://127.0.0.1:9")  # agentapi gone
    for args in (["snapshot"], ["stop"]):
        code, _out, err = await run_to_exit(env, args, timeout=DEADLINE)
        assert_no_traceback(err)
        assert code in (0, 1), err
        assert "spool.refused" in err, err
    sidecar = await rig.start_sidecar()
    await sidecar.proc.wait_log("spool.refused", timeout=DEADLINE)
    assert await rig.sigterm() == 0
    posted = [r.body for r in rig.coder.fake.snapshot_posts()]
    assert not any(b"secret" in body for body in posted)


async def test_a_lock_planted_as_a_symlink_is_named_and_delivery_goes_on(
    rig: Rig, planted: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (planted / "daemon.lock").symlink_to(victim)
    rig.agentapi.fake.add_message("user", "the real conversation")
    sidecar = await rig.start_sidecar()
    said = await sidecar.proc.wait_log("state_dir.unsafe", timeout=DEADLINE)
    # The lock file is named, not the directory, and the hint says what is lost.
    assert said["path"] == str(planted / "daemon.lock")
    assert "runs without its lock" in said["hint"]
    await rig.wait_truth()
    assert await rig.sigterm() == 0
    assert victim.read_text() == "precious\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's directory needs root to make")
async def test_another_users_state_directory_is_not_used_at_all(rig: Rig, planted: Path) -> None:
    rig.spool_path.write_text(
        '{"messages":[{"id":0,"content":"planted by someone else","role":"user",'
        '"time":"2026-01-01T00:00:00Z"}]}'
    )
    os.chown(planted, 4242, 4242)
    os.chown(rig.spool_path, 4242, 4242)
    rig.agentapi.fake.add_message("user", "the real conversation")
    sidecar = await rig.start_sidecar()
    await sidecar.proc.wait_log("state_dir.unsafe", timeout=DEADLINE)
    await rig.wait_truth()
    assert await rig.sigterm() == 0
    posted = [r.body for r in rig.coder.fake.snapshot_posts()]
    assert not any(b"planted by someone else" in body for body in posted)
    assert not (planted / "daemon.lock").exists()
    code, _out, err = await run_to_exit(rig.env(), ["stop"], timeout=DEADLINE)
    assert "stop.state_dir_refused" in err
    assert code == 0, err

"""The daemon and `stop` against agentapi as its source behaves (the fakes' real profile):
each test states what a sidecar that follows agentapi does. They fail where the product
does not follow it yet.

* A restarted agentapi is message 0 alone until its state file loads: the conversation
  Coder holds must not be replaced by it meanwhile, nor by an empty message 0 at start.
* An ACP turn holds the lock `/status` waits on for the whole turn while its reply
  streams on `/events`: busy, not dead.
* A failed ACP prompt drops its placeholder without a word: the snapshot must not keep
  the partial reply agentapi no longer has.
* agentapi skips a save when nothing changed, and always with AGENTAPI_SAVE_STATE=false:
  `stop` must not wait out its bound for a state file that will not be rewritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import pytest

from sidecar.history import MARKER
from sidecar.standins.agentapi import FakeAgentapi, SendRejected
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served, serve
from tests.conftest import CoderFactory
from tests.e2e.harness import run_to_exit
from tests.fakes.agentapi_runner import agentapi_process
from tests.faults.rig import Rig
from tests.faults.test_stop_hook import events, run_stop

DEADLINE: Final = 15.0
# Time enough for the daemon to post what it holds (SIDECAR_SNAPSHOT_INTERVAL is 1 s in
# the rig): a wait for a post that must not come.
POST_WINDOW: Final = 3.0
# A 13 s turn: longer than two /status probes a second apart take to time out (each
# request to agentapi is given 5 s).
TURN_STEPS: Final = 52
PROBE_EVERY_SECOND: Final = {"SIDECAR_AGENTAPI_PROBE_INTERVAL": "1"}


@contextlib.asynccontextmanager
async def real_rig(
    tmp_path: Path, make_fake_coder: CoderFactory, **fake: Any
) -> AsyncIterator[Rig]:
    agentapi = FakeAgentapi.real(**fake)
    async with serve(agentapi.app) as server:
        rig = Rig(tmp_path, Served(agentapi, server), await make_fake_coder())
        try:
            yield rig
        finally:
            await rig.close()


async def never(coder: FakeCoder, happened: Callable[[], bool]) -> bool:
    """Whether `happened` stayed false while the daemon had time to post."""
    with contextlib.suppress(TimeoutError):
        await coder.wait_for(happened, POST_WINDOW)
    return not happened()


def posted(coder: FakeCoder) -> list[list[tuple[int, str]]]:
    """(id, content) of every accepted snapshot."""
    return [
        [(m["id"], m["content"]) for m in request.json()["messages"]]
        for request in coder.accepted_snapshot_posts()
    ]


async def converse(fake: FakeAgentapi, prompt: str, reply: str) -> None:
    """One turn through agentapi's own send path."""
    await fake.begin_send(prompt)
    fake.add_message("agent", reply)
    fake.set_status("stable")


async def test_a_restart_does_not_store_message_0_alone_over_the_conversation(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    async with real_rig(tmp_path, make_fake_coder, send_duration=0.0) as rig:
        fake, coder = rig.agentapi.fake, rig.coder.fake
        rig.use_state_file()
        await rig.start_sidecar()
        await converse(fake, "fix the flaky test", "Fixed: it waited on a timer.")
        await rig.wait_truth()
        conversation = [(m.id, m.content) for m in fake.messages]
        assert await fake.save_state(rig.state_file) == "saved"
        connects = fake.stream_connects
        fake.restart(status="running", ready=False)
        await fake.wait_for(lambda: fake.stream_connects > connects, DEADLINE)
        fake.show_first_screen()
        fake.set_status("stable")
        assert await never(coder, lambda: any(len(p) == 1 for p in posted(coder))), (
            f"message 0 alone stored over the conversation: {posted(coder)[-1]}"
        )
        assert fake.agent_ready(rig.state_file)
        await rig.wait_truth()
        assert [(m.id, m.content) for m in fake.messages] == conversation


async def test_an_empty_message_0_is_never_posted(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    async with real_rig(tmp_path, make_fake_coder, screen=None) as rig:
        fake, coder = rig.agentapi.fake, rig.coder.fake
        await rig.start_sidecar()
        await fake.wait_for_subscribers(1, DEADLINE)
        fake.set_status("stable")  # the screen holds still before the agent draws
        assert await never(coder, lambda: bool(coder.accepted_snapshot_posts())), (
            f"an empty conversation was stored: {posted(coder)}"
        )
        fake.show_first_screen()
        await rig.wait_truth()


async def test_a_busy_agentapi_is_not_taken_for_a_dead_one(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    async with real_rig(tmp_path, make_fake_coder, transport="acp") as rig:
        fake = rig.agentapi.fake
        await rig.start_sidecar(**PROBE_EVERY_SECOND)
        await fake.wait_for_subscribers(1, DEADLINE)
        turn = fake.begin_send("refactor the parser")
        await fake.wait_for_send()
        # The agent works for a while (real turns take minutes), its reply streaming on
        # /events all along.
        reply = ""
        for step in range(TURN_STEPS):
            reply += f"step {step} done; "
            fake.update_last(reply)
            await asyncio.sleep(0.25)  # the agent's pace, not a wait for the sidecar
        fake.release_send()
        await turn
        await rig.wait_truth()
        assert not rig.proc.events("agentapi.not_answering")
        assert fake.stream_connects == 1, "a healthy stream was torn down"


async def test_a_failed_acp_prompt_leaves_no_partial_reply_in_the_snapshot(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    async with real_rig(tmp_path, make_fake_coder, transport="acp") as rig:
        fake = rig.agentapi.fake
        await rig.start_sidecar()
        await fake.wait_for_subscribers(1, DEADLINE)
        first = fake.begin_send("hello")
        await fake.wait_for_send()
        fake.update_last("Hi! What shall we do?")
        fake.release_send()
        await first
        await rig.wait_truth()
        failing = fake.begin_send("migrate the database")
        await fake.wait_for_send()
        async with rig.seen(updates=2):  # the first chunk announces the prompt and reply
            fake.update_last("Starting the migration: step 1 of")
        fake.release_send("prompt failed: the agent process exited")
        with pytest.raises(SendRejected):
            await failing
        # agentapi now holds: hello, the reply, the failed prompt; no partial reply.
        assert [m.role for m in fake.messages] == ["user", "agent", "user"]
        await rig.wait_truth()


@pytest.mark.parametrize("why", ["unchanged", "disabled"])
async def test_stop_does_not_wait_out_a_save_agentapi_skips(
    rig: Rig, tmp_path: Path, why: str
) -> None:
    """`unchanged`: agentapi restarted and loaded its state, nothing happened since.
    `disabled`: agentapi runs with AGENTAPI_SAVE_STATE=false (it loads, never saves)."""
    home = tmp_path / ".agentapi-module"
    home.mkdir()
    (home / "agentapi-state.json").write_text(
        '{"version":1,"messages":[{"id":0,"message":"port the parser","role":"user",'
        '"time":"2025-01-02T03:04:05Z"},{"id":1,"message":"Ported.","role":"agent",'
        '"time":"2025-01-02T03:04:09Z"}],"initial_prompt":"","initial_prompt_sent":false}\n'
    )
    settings = {"AGENTAPI_SAVE_STATE": "false"} if why == "disabled" else {}
    async with agentapi_process(tmp_path, env={**os.environ, **settings}) as agentapi:
        code, logs = await run_stop(rig, **agentapi.env(), **settings)
    assert ("save_skipped", why) in agentapi.whats()
    assert code == 0
    # agentapi answered, so its state file was not the snapshot's source: nothing waited
    # for a rewrite (what became of the save is told once agentapi has exited); with
    # saving off, agentapi is not even asked.
    if why == "unchanged":
        assert events(logs)[-2:] == ["stop.agentapi_stopped", "stop.agentapi_save_skipped"]
        assert next(w for w in agentapi.whats() if w[0] == "signal") == ("signal", "SIGUSR1")
    else:
        assert "stop.agentapi_save_off" in events(logs)
        assert ("signal", "SIGUSR1") not in agentapi.whats()
    assert stored_words(rig.coder.fake) == [("user", "port the parser"), ("agent", "Ported.")]


# --- one history across restarts --------------------------------------------------------


def stored_words(coder: FakeCoder) -> list[tuple[str, str]]:
    stored = coder.stored_snapshot()
    assert stored is not None
    return [(m["role"], m["content"]) for m in stored["messages"]]


async def test_without_a_state_file_the_new_conversation_follows_the_old_one(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    async with real_rig(tmp_path, make_fake_coder, send_duration=0.0) as rig:
        fake, coder = rig.agentapi.fake, rig.coder.fake
        await rig.start_sidecar()
        await converse(fake, "fix the flaky test", "Fixed: it waited on a timer.")
        await rig.wait_truth()
        before = stored_words(coder)
        posts = len(coder.accepted_snapshot_posts())
        # agentapi starts again, no state file (the registry modules' default).
        connects = fake.stream_connects
        fake.restart(status="running", ready=False)
        await fake.wait_for(lambda: fake.stream_connects > connects, DEADLINE)
        fake.show_first_screen()
        fake.set_status("stable")
        assert await never(coder, lambda: len(coder.accepted_snapshot_posts()) > posts)
        assert not fake.agent_ready()  # no state file to load
        await converse(fake, "now add a test", "Added tests/test_timer.py.")
        await coder.wait_for(lambda: MARKER in [c for _, c in stored_words(coder)], DEADLINE)
        await rig.wait_truth()
        # One history: the words before the restart, the marker, the new conversation.
        words = stored_words(coder)
        marker = words.index(("agent", MARKER))
        assert words[:marker] == before
        # agentapi's new conversation as it holds it, its welcome screen again included.
        assert words[marker + 1 :] == [(m.role, m.content) for m in fake.messages]
        # Across the restart: one post, the joined history, nothing in between.
        assert len(coder.accepted_snapshot_posts()) - posts <= 2
        await rig.stop_cleanly()


async def test_a_daemon_started_again_does_not_post_what_coder_holds(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    async with real_rig(tmp_path, make_fake_coder, send_duration=0.0) as rig:
        fake, coder = rig.agentapi.fake, rig.coder.fake
        await rig.start_sidecar()
        await converse(fake, "fix the flaky test", "Fixed.")
        await rig.wait_truth()
        assert await rig.sigterm() == 0
        posts = len(coder.snapshot_posts())
        await rig.start_sidecar()
        await rig.proc.wait_log("agentapi.connected", timeout=DEADLINE)
        # The record of what Coder accepted says agentapi's replay is nothing new.
        assert await never(coder, lambda: len(coder.snapshot_posts()) > posts)
        await rig.stop_cleanly()


async def test_a_workspace_restart_continues_the_stored_history(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    async with real_rig(tmp_path, make_fake_coder, send_duration=0.0) as rig:
        fake, coder = rig.agentapi.fake, rig.coder.fake
        await rig.start_sidecar()
        await converse(fake, "fix the flaky test", "Fixed.")
        await rig.wait_truth()
        before = stored_words(coder)
        assert await rig.sigterm() == 0
        # The workspace starts again: a new agentapi (its welcome screen), a new daemon;
        # the home volume kept the sidecar's state directory.
        fake.restart()
        posts = len(coder.snapshot_posts())
        await rig.start_sidecar()
        await rig.proc.wait_log("agentapi.connected", timeout=DEADLINE)
        assert await never(coder, lambda: len(coder.snapshot_posts()) > posts)
        await converse(fake, "and the docs?", "Updated README.md.")
        await coder.wait_for(lambda: ("agent", MARKER) in stored_words(coder), DEADLINE)
        words = stored_words(coder)
        assert words[: words.index(("agent", MARKER))] == before
        await rig.wait_truth()
        await rig.stop_cleanly()


# --- busy, not dead -------------------------------------------------------------------------


async def test_polling_a_busy_agentapi_reports_no_failure(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    # A send that holds agentapi's lock for longer than the relay's grace, and than a
    # request to agentapi may take (5 s) wherever in it a poll (every second) falls.
    async with real_rig(tmp_path, make_fake_coder, send_duration=7.5) as rig:
        fake, coder = rig.agentapi.fake, rig.coder.fake
        fake.events_available = False  # polling mode: /status and /messages only
        await rig.start_sidecar(CODER_MCP_APP_STATUS_SLUG="claude-code", SIDECAR_RELAY_GRACE="1")
        await rig.proc.wait_log("agentapi.connected", timeout=DEADLINE)
        await coder.wait_for(lambda: bool(coder.app_statuses), DEADLINE)
        turn = fake.begin_send("refactor the parser")
        await fake.wait_for_send()
        await rig.proc.wait_log("agentapi.busy", timeout=DEADLINE)
        await turn
        fake.add_message("agent", "Refactored.")
        fake.set_status("stable")
        await rig.wait_truth()
        assert "failure" not in [s.state for s in coder.app_statuses]
        assert not rig.proc.events("agentapi.unreachable")
        await rig.stop_cleanly()


async def test_check_says_a_busy_agentapi_is_busy_not_failed(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    async with real_rig(tmp_path, make_fake_coder, transport="acp") as rig:
        fake = rig.agentapi.fake
        turn = fake.begin_send("a long turn")
        await fake.wait_for_send()
        code, out, _err = await run_to_exit(rig.env(), ["check"])
        fake.release_send()
        await turn
    assert "[--  ] agentapi: busy (a message is being sent)" in out
    assert code == 0, out


# --- configuration that agentapi refuses -----------------------------------------------------


async def test_a_host_agentapi_refuses_is_a_configuration_error(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    # agentapi's default --allowed-hosts without 127.0.0.1: the URL's host is refused.
    async with real_rig(tmp_path, make_fake_coder, allowed_hosts=("localhost",)) as rig:
        code, _out, err = await run_to_exit(rig.env(), ["run"])
        assert code == 2
        # The daemon's JSON log lines, then the one line of the contract.
        (line,) = [line for line in err.splitlines() if not line.startswith("{")]
        assert line.startswith("coder-task-sidecar: configuration error: CODER_MCP_AI_AGENTAPI_URL")
        assert "Invalid host header" in line
        code, out, _err = await run_to_exit(rig.env(), ["check"])
    assert code == 1
    assert "[FAIL] agentapi: GET /status: agentapi refuses the Host" in out
    assert "→ CODER_MCP_AI_AGENTAPI_URL must name a host agentapi allows" in out


# --- both generations -------------------------------------------------------------------------


async def test_agentapi_0_11_is_mirrored_and_its_silent_sends_are_not_death(
    tmp_path: Path, make_fake_coder: CoderFactory
) -> None:
    # v0.11: no transport in /status, no agent_error, no state file; a send holds the
    # conversation's lock, so /events too is silent while it lasts.
    async with real_rig(tmp_path, make_fake_coder, version="0.11", send_duration=7.5) as rig:
        fake = rig.agentapi.fake
        await rig.start_sidecar(**PROBE_EVERY_SECOND)
        await rig.proc.wait_log("agentapi.connected", timeout=DEADLINE)
        turn = fake.begin_send("port the parser")
        await fake.wait_for_send()
        await rig.proc.wait_log("agentapi.busy", timeout=DEADLINE)
        await turn
        fake.add_message("agent", "Ported.")
        fake.set_status("stable")
        await rig.wait_truth()
        assert not rig.proc.events("agentapi.not_answering")
        assert fake.stream_connects == 1
        await rig.stop_cleanly()

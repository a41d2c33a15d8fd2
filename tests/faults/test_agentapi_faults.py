"""Fault injection on the agentapi side: the real `coder-task-sidecar` process against an
agentapi that holds its connections open without speaking.

The sidecar's stall deadlines are its defaults (10 s for the /events headers and for the
first frame, 5 s per /status or /messages request): they have no environment variable,
so these cases take a little longer than the others. The invariants are those of
test_faults.py: the snapshot Coder stores equals agentapi's newest conversation, the logs
read-back accepts it, and a SIGTERM afterwards exits 0 without undoing it.
"""

from __future__ import annotations

from tests.faults.rig import Rig, wait_log

# The default deadlines, a /status timeout and a poll or two, with room for a slow host.
STALL_DEADLINE = 40.0
SLUG = "claude-code"
NOT_RESPONDING = "agent is not responding"  # what the relay tells Coder (SPEC §3)


async def test_stream_headers_then_silence_conversation_arrives_by_polling(rig: Rig) -> None:
    """agentapi restarts into a state where /events sends its headers and then nothing
    (no replay) while /status and /messages work: the agent's next turn still reaches
    Coder, through polling."""
    fake = rig.agentapi.fake
    fake.add_message("agent", "Hello! Ready to help.")
    await rig.agent.turn()
    await rig.start_sidecar()
    await rig.wait_truth()

    await rig.agentapi.server.stop()
    fake.events_mode = "headers_then_silence"
    await rig.agentapi.server.start()
    await rig.agent.turn()
    await rig.wait_truth(timeout=STALL_DEADLINE)

    stalled = rig.proc.events("agentapi.stream_stalled")
    assert [e["reason"] for e in stalled] == ["no_first_frame"], stalled
    assert stalled[0]["fallback"] == "polling"
    await rig.agent.turn()  # polling keeps following the conversation
    await rig.wait_truth(timeout=STALL_DEADLINE)
    await rig.stop_cleanly()


async def test_hung_agentapi_is_reported_not_responding_then_recovers(rig: Rig) -> None:
    """The sidecar starts while agentapi is hung: /events never sends headers, /status
    and /messages never answer. After the grace period the relay tells Coder the agent is
    not responding; once agentapi answers again the conversation and the real state
    follow."""
    fake, coder = rig.agentapi.fake, rig.coder.fake
    fake.add_message("agent", "Hello! Ready to help.")
    await rig.agent.turn()
    fake.events_mode = "no_headers"
    fake.hang_paths = {"/status", "/messages"}
    rig.extra_env.update(CODER_MCP_APP_STATUS_SLUG=SLUG, SIDECAR_RELAY_GRACE="1")
    await rig.start_sidecar()

    def shown() -> list[tuple[str, str]]:
        return [(s.state, s.message) for s in coder.app_statuses]

    await coder.wait_for(lambda: ("failure", NOT_RESPONDING) in shown(), STALL_DEADLINE)
    assert rig.proc.events("agentapi.unreachable")
    (stalled,) = rig.proc.events("agentapi.stream_stalled")
    assert stalled["reason"] == "no_headers"
    (reported,) = rig.proc.events("relay.agent_unreachable")
    assert reported["grace_s"] == 1.0
    assert coder.stored_snapshot() is None, "agentapi never answered: nothing to store"

    fake.events_mode = "normal"
    fake.hang_paths = set()
    fake.release_hung()
    await rig.wait_truth(timeout=STALL_DEADLINE)
    await coder.wait_for(lambda: shown()[-1][0] == "idle", STALL_DEADLINE)
    await wait_log(rig.proc, "relay.agent_reachable")
    await rig.stop_cleanly()

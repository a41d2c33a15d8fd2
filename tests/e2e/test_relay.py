"""The state relay in the real process: agentapi fake → sidecar → Coder's app-status."""

from __future__ import annotations

import itertools

from sidecar.standins.coder import FakeCoder
from tests.e2e.conftest import SidecarFactory
from tests.e2e.workspace import Workspace


def relay_env(workspace: Workspace, **overrides: str) -> dict[str, str]:
    relay = {"CODER_MCP_APP_STATUS_SLUG": "claude-code", "SIDECAR_RELAY_GRACE": "1"}
    return workspace.env(**{**relay, **overrides})


def states(coder: FakeCoder) -> list[tuple[str, str]]:
    return [(s.state, s.message) for s in coder.app_statuses]


async def test_relay_reports_turns_errors_and_death(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    agentapi.add_message("agent", "Ready when you are.")
    proc = await start_sidecar(relay_env(workspace))
    await coder.wait_for(lambda: len(coder.app_statuses) == 1, 10)
    assert states(coder)[0][0] == "idle"

    # A user turn: working with the request's first line, then idle with the reply's last.
    agentapi.add_message("user", "Refactor the parser\nand add tests")
    agentapi.set_status("running")
    await coder.wait_for(lambda: states(coder)[-1] == ("working", "Refactor the parser"), 10)
    agentapi.add_message("agent", "Working…")
    agentapi.update_last("Done.\n\x1b[32m✓ all 12 tests pass\x1b[0m")
    agentapi.set_status("stable")
    await coder.wait_for(lambda: states(coder)[-1] == ("idle", "✓ all 12 tests pass"), 10)

    # A reconnect replays everything, errors included: nothing new is sent.
    sent = len(coder.app_statuses)
    connects = agentapi.stream_connects
    agentapi.drop_streams()
    await agentapi.wait_for(lambda: agentapi.stream_connects > connects)
    agentapi.add_error("error", "API rate limit exceeded")
    await coder.wait_for(lambda: states(coder)[-1] == ("failure", "API rate limit exceeded"), 10)
    assert len(coder.app_statuses) == sent + 1

    # agentapi dies: after the grace period, failure "agent is not responding".
    await workspace.agentapi.server.stop()
    await coder.wait_for(lambda: states(coder)[-1] == ("failure", "agent is not responding"), 10)
    assert await proc.stop() == 0
    # No PATCH on stop by default, and never the same report twice in a row.
    assert states(coder)[-1] == ("failure", "agent is not responding")
    pairs = states(coder)
    assert all(a != b for a, b in itertools.pairwise(pairs))


async def test_relay_on_stop_sends_the_configured_state(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    agentapi.add_message("agent", "All done here.")
    proc = await start_sidecar(relay_env(workspace, SIDECAR_RELAY_ON_STOP="complete"))
    await coder.wait_for(lambda: len(coder.app_statuses) == 1, 10)
    assert await proc.stop() == 0
    assert [s.state for s in coder.app_statuses] == ["idle", "complete"]


async def test_unknown_slug_is_reported_and_not_retried(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    agentapi.add_message("agent", "hello")
    proc = await start_sidecar(relay_env(workspace, CODER_MCP_APP_STATUS_SLUG="no-such-app"))
    rejected = await proc.wait_log("relay.rejected")
    assert rejected["status"] == 400
    # The snapshot path is unaffected by the relay's trouble.
    await coder.wait_for(lambda: coder.stored_snapshot() is not None, 10)
    patches = [r for r in coder.requests if r.method == "PATCH"]
    assert len(patches) == 1
    assert await proc.stop() == 0
    assert len([r for r in coder.requests if r.method == "PATCH"]) == 1

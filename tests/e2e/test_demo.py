"""`coder-task-sidecar demo`, the README's first command: the real process, its story, the
task log Coder shows, the summary line, and its exit status (also when interrupted)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import SidecarFactory
from tests.e2e.harness import base_env

pytestmark = pytest.mark.timeout(90)

# What the story must tell, in this order: each line the sidecar's doing, seen by a person.
STORY = (
    r"\] sidecar  started: watching agentapi at http://127\.0\.0\.1:\d+",
    r"\] sidecar  connected to agentapi's event stream",
    r"\] user     asks: “Add a --verbose flag to the CLI”",
    r"\] sidecar  status relayed: working “Add a --verbose flag to the CLI” → HTTP 200",
    r"\] sidecar  snapshot posted: 3 messages, [\d,]+ bytes → HTTP 204",
    r"\] agent    finished its turn",
    r"\] sidecar  status relayed: idle “Done: --verbose is in, with a test and a line in the "
    r"README\.” → HTTP 200",
    r"\] agentapi restarts, keeping no state file",
    r"Coder still holds the 3 messages from before the restart",
    r"\] user     asks: “Now make --verbose also print the version at start”",
    r"\] sidecar  snapshot posted: 7 messages \(the earlier conversation, a restart marker, "
    r"then the new one\)",
    r"\] demo     the workspace stops: SIGTERM while the answer is still streaming",
    r"\] sidecar  SIGTERM received: stop reading agentapi, flush the final snapshot",
    r"\] sidecar  final snapshot posted: 7 messages .* → HTTP 204",
    r"\] sidecar  stopped: final snapshot delivered",
    r"Coder's task log \(GET /api/v2/tasks/me/[0-9a-f-]{36}/logs\):",
    r"  \[input \] Add a --verbose flag to the CLI",
    r"  \[output\] \[coder-task-sidecar: agentapi started again here",
    r"  \[input \] Now make --verbose also print the version at start",
    # The answer that was still streaming when the stop came, up to its newest line.
    r"  \[output\] Looking at where the daemon logs daemon\.started .*",
)


def _demo_env(home: Path) -> dict[str, str]:
    """A shell full of settings that would send a daemon elsewhere: the demo reads none."""
    return base_env(
        home,
        SIDECAR_LOG_FORMAT="console",
        CODER_AGENT_URL="https://coder.example.com",
        CODER_AGENT_TOKEN="not.used",
        HTTPS_PROXY="http://127.0.0.1:9",  # nothing listens there: a proxied request fails
        HTTP_PROXY="http://127.0.0.1:9",
        CODER_MCP_AI_AGENTAPI_URL="http://127.0.0.1:9",
        SIDECAR_STATE_DIR=str(home / "elsewhere"),
    )


async def test_demo_tells_the_story_and_exits_0(
    tmp_path: Path, start_sidecar: SidecarFactory
) -> None:
    demo = await start_sidecar(_demo_env(tmp_path), ["demo"])
    assert await demo.wait(timeout=60) == 0, demo.output()
    out = demo.stdout.decode()
    position = 0
    for step in STORY:
        found = re.compile(step).search(out, position)
        assert found is not None, f"missing after offset {position}: {step}\n{out}"
        position = found.end()
    last = out.rstrip().splitlines()[-1]
    summary = re.fullmatch(
        r"demo: (\d+) snapshots posted \(newest 7 messages, ([\d,]+) bytes\), (\d+) statuses "
        r"relayed, restart kept the earlier conversation, final flush delivered agentapi's "
        r"newest words; ([\d.]+) s",
        last,
    )
    assert summary is not None, last
    assert int(summary[1]) >= 4  # streaming, finished, streaming again, the final flush
    assert int(summary[3]) >= 4  # idle, working, idle, working
    # Nothing was kept where the shell's settings point, and no daemon log reached stderr.
    assert not (tmp_path / "elsewhere").exists()
    assert "Traceback" not in demo.output()
    assert demo.stderr == b""


async def test_ctrl_c_stops_the_demo_with_a_final_flush_and_exit_130(
    tmp_path: Path, start_sidecar: SidecarFactory
) -> None:
    demo = await start_sidecar(_demo_env(tmp_path), ["demo"])
    await demo.wait_output("agent    answers, streaming", timeout=30)
    demo.signal(signal.SIGINT)
    assert await demo.wait(timeout=30) == 130
    out = demo.stdout.decode()
    assert "SIGINT received: stop reading agentapi, flush the final snapshot" in out
    assert "stopped: final snapshot delivered" in out
    assert re.search(r"\] demo     interrupted; the daemon exited 0\n", out), out
    assert "\ndemo: " not in out  # no summary for a demo that did not finish
    assert "Traceback" not in demo.output()

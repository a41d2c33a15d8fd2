"""The daemon as a service: sd_notify datagrams, health endpoints, the state file source."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import SidecarFactory
from tests.e2e.harness import stored_contents
from tests.e2e.workspace import Workspace


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


async def receive_until(
    sock: socket.socket, key: str, seen: list[dict[str, str]]
) -> dict[str, str]:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        while True:
            data = await loop.sock_recv(sock, 4096)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            seen.append(fields)
            if key in fields:
                return fields


async def test_sd_notify_lifecycle(
    workspace: Workspace,
    start_sidecar: SidecarFactory,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    workspace.agentapi.fake.add_message("user", "hi")
    proc = await start_sidecar(workspace.env(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000"))
    seen: list[dict[str, str]] = []
    ready = await receive_until(sock, "READY", seen)
    assert ready["READY"] == "1"
    assert "STATUS" in ready
    await receive_until(sock, "WATCHDOG", seen)
    await receive_until(sock, "WATCHDOG", seen)  # keeps coming from the event loop
    await workspace.agentapi.server.stop()
    async with asyncio.timeout(10):
        while not any("unreachable" in f.get("STATUS", "") for f in seen):
            await receive_until(sock, "STATUS", seen)
    proc.signal(signal.SIGTERM)
    stopping = await receive_until(sock, "STOPPING", seen)
    assert stopping["STOPPING"] == "1"
    extend = (
        stopping
        if "EXTEND_TIMEOUT_USEC" in stopping
        else await receive_until(sock, "EXTEND_TIMEOUT_USEC", seen)
    )
    assert int(extend["EXTEND_TIMEOUT_USEC"]) >= 3_000_000
    assert await proc.wait() == 0


async def test_health_endpoints_over_http(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    coder = workspace.coder.fake
    workspace.agentapi.fake.add_message("user", "hi")
    proc = await start_sidecar(workspace.env(SIDECAR_HTTP_ADDR="127.0.0.1:0"))
    listening = await proc.wait_log("health.listening")
    assert listening["host"] == "127.0.0.1"
    base = f"http://127.0.0.1:{listening['port']}"
    await coder.wait_for(lambda: stored_contents(coder) == ["hi"], 10)
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200, await resp.text()
        # agentapi gone, no state file: not ready, and it says why.
        await workspace.agentapi.server.stop()
        await proc.wait_log("agentapi.unreachable")
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 503
            body = json.loads(await resp.text())
            assert any("agentapi" in r for r in body["reasons"])
        async with http.get(base + "/metrics") as resp:
            text = await resp.text()
    assert 'sidecar_snapshot_posts_total{result="ok",status="204"} 1.0' in text
    assert "sidecar_snapshot_pending_age_seconds 0.0" in text
    assert "sidecar_agentapi_connected 0.0" in text
    assert await proc.stop() == 0


async def test_state_file_speaks_while_agentapi_is_down(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    agentapi, coder = workspace.agentapi.fake, workspace.coder.fake
    agentapi.add_message("user", "from the state file")
    state = workspace.state_file
    agentapi.write_state_file(state)
    await workspace.agentapi.server.stop()
    proc = await start_sidecar(workspace.env(AGENTAPI_STATE_FILE=str(state)))
    await coder.wait_for(lambda: stored_contents(coder) == ["from the state file"], 10)
    # agentapi rewrites the file by rename (SIGUSR1 or its own shutdown): picked up.
    agentapi.add_message("agent", "written later")
    agentapi.write_state_file(state)
    await coder.wait_for(
        lambda: stored_contents(coder) == ["from the state file", "written later"], 10
    )
    # A half-written or foreign file is reported and ignored: the snapshot stays.
    state.write_text('{"version": 1, "messages": [')
    await proc.wait_log("statefile.ignored")
    state.write_text('{"version": 99, "messages": []}')
    await proc.wait_log("statefile.ignored", count=2)
    # agentapi comes back: the live stream wins.
    await workspace.agentapi.server.start()
    agentapi.add_message("user", "live again")
    await coder.wait_for(lambda: (stored_contents(coder) or [""])[-1] == "live again", 10)
    assert await proc.stop() == 0
    assert stored_contents(coder) == [
        "from the state file",
        "written later",
        "live again",
    ]

"""The daemon in-process against the loopback fakes: its lifecycle and what it reports.

The real process with real signals is covered in tests/e2e; here the daemon's own stop
request stands in for the signal, so the log and the loop's state can be inspected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from structlog.testing import capture_logs

from sidecar.agentapi.client import AgentapiClient
from sidecar.pipeline import Clients
from sidecar.runtime.daemon import Daemon
from sidecar.runtime.lock import read_record
from sidecar.settings import Settings, load_settings
from sidecar.variables import ConfigError
from tests.conftest import AgentapiFactory, CoderFactory

DEADLINE = 10.0


class DaemonFactory(Protocol):
    async def __call__(self, **env: str) -> Daemon: ...


@pytest.fixture
def make_daemon(
    make_fake_agentapi: AgentapiFactory, make_fake_coder: CoderFactory, tmp_path: Path
) -> DaemonFactory:
    async def factory(**env: str) -> Daemon:
        agentapi = await make_fake_agentapi()
        coder = await make_fake_coder()
        agentapi.fake.add_message("user", "hello")
        values = {
            "CODER_AGENT_URL": coder.url,
            "CODER_AGENT_TOKEN": coder.fake.token,
            "CODER_TASK_ID": str(coder.fake.task_id),
            "CODER_MCP_AI_AGENTAPI_URL": agentapi.url,
            "SIDECAR_STATE_DIR": str(tmp_path / "state"),
            "SIDECAR_SHUTDOWN_TIMEOUT": "2",
        }
        values.update(env)
        return Daemon(load_settings({k: v for k, v in values.items() if v}))

    return factory


async def run_until_started(daemon: Daemon) -> asyncio.Task[int]:
    task = asyncio.create_task(daemon.run())
    async with asyncio.timeout(DEADLINE):
        while daemon.metrics.registry.get_sample_value("sidecar_agentapi_connected") != 1:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    return task


def completed(logs: list[MutableMapping[str, Any]]) -> MutableMapping[str, Any]:
    (done,) = [e for e in logs if e["event"] == "shutdown.complete"]
    return done


async def test_signal_handlers_are_installed_while_running_and_removed_after(
    make_daemon: DaemonFactory,
) -> None:
    daemon = await make_daemon()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    task = await run_until_started(daemon)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN)
    daemon.request_stop("SIGTERM")
    assert await asyncio.wait_for(task, DEADLINE) == 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


async def test_a_health_listener_that_cannot_bind_is_a_configuration_error(
    make_daemon: DaemonFactory, busy_port: int
) -> None:
    daemon = await make_daemon(SIDECAR_HTTP_ADDR=f"127.0.0.1:{busy_port}")
    with capture_logs() as logs, pytest.raises(ConfigError) as info:
        await asyncio.wait_for(daemon.run(), DEADLINE)
    assert info.value.variable == "SIDECAR_HTTP_ADDR"
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["health.bind_failed"]
    # Nothing was left running, and the signals are the default ones again.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def stopped_by_sigterm(daemon: Daemon) -> MutableMapping[str, Any]:
    """Start the daemon, stop it as a SIGTERM does; its `shutdown.complete` event."""
    with capture_logs() as logs:
        task = await run_until_started(daemon)
        daemon.request_stop("SIGTERM")
        assert await asyncio.wait_for(task, DEADLINE) == 0
    return completed(logs)


async def test_shutdown_reports_a_delivered_snapshot(make_daemon: DaemonFactory) -> None:
    done = await stopped_by_sigterm(await make_daemon())
    assert done["snapshot"] == "delivered"
    assert done["snapshot_delivered"] is True
    assert done["spooled"] is False


async def test_shutdown_without_a_task_claims_no_snapshot(make_daemon: DaemonFactory) -> None:
    done = await stopped_by_sigterm(await make_daemon(CODER_TASK_ID=""))
    assert done["snapshot"] == "off"
    assert done["snapshot_delivered"] is False
    assert done["spooled"] is False


async def test_repeated_sigterm_is_one_stop_request(make_daemon: DaemonFactory) -> None:
    daemon = await make_daemon()
    with capture_logs() as logs:
        task = await run_until_started(daemon)
        daemon.request_stop("SIGTERM")
        daemon.request_stop("SIGTERM")
        daemon.request_stop("SIGHUP")
        assert await asyncio.wait_for(task, DEADLINE) == 0
    assert [e["event"] for e in logs if e["event"].startswith("shutdown.")] == [
        "shutdown.requested",
        "shutdown.repeated",
        "shutdown.repeated",
        "shutdown.complete",
    ]
    assert completed(logs)["forced"] is False


class BrokenAgentapi(AgentapiClient):
    """An agentapi client with a bug: opening the stream raises what no client should."""

    @contextlib.asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        raise RuntimeError("a bug in the stream reader")
        yield aiter(())  # never reached: a generator, as the real one is


async def test_a_part_that_crashes_in_a_loop_stops_the_daemon_with_its_final_flush(
    make_fake_agentapi: AgentapiFactory, make_fake_coder: CoderFactory, tmp_path: Path
) -> None:
    agentapi = await make_fake_agentapi()
    coder = await make_fake_coder()
    settings = load_settings(
        {
            "CODER_AGENT_URL": coder.url,
            "CODER_AGENT_TOKEN": coder.fake.token,
            "CODER_TASK_ID": str(coder.fake.task_id),
            "CODER_MCP_AI_AGENTAPI_URL": agentapi.url,
            "SIDECAR_STATE_DIR": str(tmp_path / "state"),
            "SIDECAR_SHUTDOWN_TIMEOUT": "2",
        }
    )

    def make_clients(s: Settings, session: aiohttp.ClientSession) -> Clients:
        clients = Clients.from_settings(s, session)
        broken = BrokenAgentapi(session=session, base_url=s.coder_mcp_ai_agentapi_url)
        return dataclasses.replace(clients, agentapi=broken)

    daemon = Daemon(settings, make_clients=make_clients, supervisor_pause=0.01)
    with capture_logs() as logs:
        code = await asyncio.wait_for(daemon.run(), DEADLINE)
    # A crash loop is a failure to report: the daemon stops and says which part.
    assert code == 1
    events = [e["event"] for e in logs]
    assert events.count("task.crashed") == 4
    (loop,) = [e for e in logs if e["event"] == "task.crash_loop"]
    assert loop["task"] == "agentapi"
    (requested,) = [e for e in logs if e["event"] == "shutdown.requested"]
    assert requested["reason"] == "crash_loop"
    assert completed(logs)["crashed"] == ["agentapi"]
    assert read_record(settings.state_dir)["exit"] == 1

"""The daemon's ingest wiring (sidecar.pipeline, as the daemon builds it), for in-process
benchmarks.

Imports only sidecar and aiohttp, so a fresh process that imports this measures the
sidecar's own memory. Not a benchmark itself.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TypedDict

import aiohttp

from sidecar.agentapi.client import AgentapiClient
from sidecar.agentapi.source import AgentapiSource
from sidecar.coder.client import CoderClient
from sidecar.coder.session import make_session
from sidecar.coder.token import TokenSource
from sidecar.hub import Hub
from sidecar.mirror import Mirror
from sidecar.pipeline import Clients, Clocks, Options, build_pipeline
from sidecar.relay.delivery import Relay
from sidecar.runtime.metrics import Metrics
from sidecar.uploader import Uploader


class Endpoints(TypedDict):
    """Where the pipeline reads from and posts to."""

    sse: str  # agentapi's base URL (the raw SSE server's, or anything for no socket)
    coder: str  # Coder's base URL
    token: str
    task: str  # the task's UUID


def nowhere() -> Endpoints:
    """Endpoints for a pipeline fed without sockets, whose workers never run: nothing is
    ever sent there."""
    url = "http://127.0.0.1:9"
    return {"sse": url, "coder": url, "token": str(uuid.uuid4()), "task": str(uuid.uuid4())}


def count(metrics: Metrics, event_type: str) -> float:
    value = metrics.registry.get_sample_value("sidecar_agentapi_events_total", {"type": event_type})
    return value or 0.0


def posts(metrics: Metrics, result: str = "ok") -> int:
    """Snapshot POSTs with this result, whatever HTTP status they were answered with."""
    return int(
        sum(
            sample.value
            for family in metrics.registry.collect()
            for sample in family.samples
            if sample.name == "sidecar_snapshot_posts_total"
            and sample.labels.get("result") == result
        )
    )


class Pipeline:
    """The daemon's pipeline (sidecar.pipeline.build_pipeline), from the fakes' addresses."""

    def __init__(self, info: Endpoints, session: aiohttp.ClientSession, relay: bool) -> None:
        self.metrics = Metrics()
        clients = Clients(
            coder=CoderClient(
                session=session, base_url=info["coder"], token=TokenSource(value=info["token"])
            ),
            agentapi=AgentapiClient(session=session, base_url=info["sse"]),
        )
        options = Options(
            task_id=uuid.UUID(info["task"]),
            slug="claude-code" if relay else None,
            interval=5.0,
            probe_interval=5.0,
        )
        built = build_pipeline(clients, Clocks(), options, metrics=self.metrics)
        assert built.uploader is not None
        assert built.source is not None
        self.mirror: Mirror = built.mirror
        self.uploader: Uploader = built.uploader
        self.relay: Relay | None = built.relay
        self.hub: Hub = built.hub
        self.source: AgentapiSource = built.source
        self._tasks: list[asyncio.Task[None]] = []
        self._source: asyncio.Task[None] | None = None

    def start_workers(self) -> None:
        self._tasks.append(asyncio.create_task(self.uploader.run()))
        if self.relay is not None:
            self._tasks.append(asyncio.create_task(self.relay.run()))

    def start_source(self) -> None:
        self._source = asyncio.create_task(self.source.run())
        self._tasks.append(self._source)

    async def stop(self) -> bool:
        if self._source is not None:  # stop reading first, as the daemon does
            self._source.cancel()
        delivered = (await self.uploader.flush(5.0)).delivered
        if self.relay is not None:
            await self.relay.stop(None, 2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return delivered


def session_for(info: Endpoints) -> aiohttp.ClientSession:
    return make_session(None)  # loopback only: no proxy settings to honour

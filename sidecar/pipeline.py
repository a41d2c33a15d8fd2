"""The pipeline: agentapi's source, the mirror, the hub, the uploader and the relay, wired.

`build_pipeline` is the one place that wires them: the daemon, the one-shot, the
benchmarks and the integration tests all build through it, so what they run is what the
daemon runs. It takes what the pieces need from outside (the clients, the clocks, the
options) and nothing else; schedules that tests and benchmarks shorten are `Tuning`.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from uuid import UUID

import aiohttp

from sidecar.agentapi.client import AgentapiClient
from sidecar.agentapi.source import AgentapiSource
from sidecar.backoff import Backoff
from sidecar.coder.client import CoderClient
from sidecar.coder.retry import RetryPolicy
from sidecar.coder.session import make_token
from sidecar.coder.token import TokenSource
from sidecar.dryrun import DRY_RUN_TASK, DryRunCoder
from sidecar.hub import Hub
from sidecar.mirror import Mirror
from sidecar.models import SNAPSHOT_MAX_BYTES
from sidecar.relay.delivery import IDLE_SETTLE_S, Relay, StatusClient
from sidecar.relay.policy import RelayPolicy
from sidecar.runtime.metrics import Metrics
from sidecar.settings import Settings
from sidecar.spool import NOTHING_KEPT, Kept, Spool
from sidecar.uploader import SnapshotClient, Uploader
from sidecar.variables import (
    AGENTAPI_PROBE_INTERVAL,
    RELAY_GRACE,
    SNAPSHOT_INTERVAL,
    SNAPSHOT_MAX_MESSAGES,
)

__all__ = ["Clients", "Clocks", "CoderAPI", "Options", "Pipeline", "Tuning", "build_pipeline"]


class CoderAPI(SnapshotClient, StatusClient, Protocol):
    """What the pipeline needs of sidecar.coder.client.CoderClient."""


@dataclass(frozen=True, slots=True)
class Clients:
    coder: CoderAPI
    agentapi: AgentapiClient | None  # None: events are fed to the hub by hand
    token: TokenSource | None = None  # the coder client's token, watched when from a file

    @classmethod
    def from_settings(cls, settings: Settings, session: aiohttp.ClientSession) -> Clients:
        """The clients every command talks through, as Settings configure them."""
        token = make_token(settings)
        return cls(
            coder=CoderClient(
                session=session,
                base_url=settings.coder_agent_url,
                token=token,
                timeout=settings.sidecar_http_timeout,
            ),
            agentapi=AgentapiClient(session=session, base_url=settings.coder_mcp_ai_agentapi_url),
            token=token,
        )

    @classmethod
    def for_run(cls, settings: Settings, session: aiohttp.ClientSession) -> Clients:
        """The clients the commands talk through: Coder's, or in a dry run a
        printer in its place (agentapi is the real one either way)."""
        if not settings.sidecar_dry_run:
            return cls.from_settings(settings, session)
        return cls(
            coder=DryRunCoder(sys.stdout),
            agentapi=AgentapiClient(session=session, base_url=settings.coder_mcp_ai_agentapi_url),
        )


class Clocks(NamedTuple):
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


@dataclass(frozen=True, slots=True)
class Options:
    """What the configuration decides about the pipeline."""

    task_id: UUID | None  # None: no snapshots (a workspace that is no task)
    slug: str | None = None  # None: no relay
    interval: float = SNAPSHOT_INTERVAL.default
    max_messages: int = SNAPSHOT_MAX_MESSAGES.default
    max_bytes: int = SNAPSHOT_MAX_BYTES
    probe_interval: float = AGENTAPI_PROBE_INTERVAL.default
    relay_grace: float = RELAY_GRACE.default
    screen_activity: bool = False
    relay_uri: str = ""

    @classmethod
    def from_settings(cls, s: Settings) -> Options:
        task_id = s.coder_task_id
        if task_id is None and s.sidecar_dry_run:
            task_id = DRY_RUN_TASK
        return cls(
            task_id=task_id,
            slug=s.coder_mcp_app_status_slug,
            interval=s.sidecar_snapshot_interval,
            max_messages=s.sidecar_snapshot_max_messages,
            max_bytes=s.sidecar_snapshot_max_bytes,
            probe_interval=s.sidecar_agentapi_probe_interval,
            relay_grace=s.sidecar_relay_grace,
            screen_activity=s.sidecar_relay_screen_activity,
            relay_uri=s.sidecar_relay_uri,
        )


@dataclass(frozen=True, slots=True)
class Tuning:
    """Schedules the daemon takes as they are (None: the component's default); tests and
    benchmarks shorten them or seed their random sources."""

    upload_retry: RetryPolicy | None = None
    relay_retry: RetryPolicy | None = None
    stream_backoff: Backoff | None = None
    poll_interval: float = 1.0
    relay_idle_settle: float = IDLE_SETTLE_S
    first_post_rng: random.Random | None = None


@dataclass(slots=True)
class Pipeline:
    mirror: Mirror
    hub: Hub
    source: AgentapiSource | None
    uploader: Uploader | None
    relay: Relay | None

    def runs(self) -> list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
        """The long-running parts, by name, for the daemon to supervise."""
        runs: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        if self.source is not None:
            runs.append(("agentapi", self.source.run))
        if self.uploader is not None:
            runs.append(("uploader", self.uploader.run))
        if self.relay is not None:
            runs.append(("relay", self.relay.run))
        return runs


def build_pipeline(
    clients: Clients,
    clocks: Clocks,
    options: Options,
    *,
    metrics: Metrics,
    spool: Spool | None = None,
    kept: Kept = NOTHING_KEPT,
    status_text: Callable[[str], object] | None = None,
    tuning: Tuning = Tuning(),
) -> Pipeline:
    mirror = Mirror(options.max_messages)
    uploader = None
    if options.task_id is not None:
        uploader = Uploader(
            client=clients.coder,
            task_id=options.task_id,
            mirror=mirror,
            metrics=metrics,
            interval=options.interval,
            spool=spool,
            kept=kept,
            max_bytes=options.max_bytes,
            retry=tuning.upload_retry,
            clock=clocks.monotonic,
            wall_clock=clocks.wall,
            rng=tuning.first_post_rng,
        )
        metrics.snapshot_pending_age.set_function(uploader.pending_age)
    relay = None
    if options.slug is not None:
        relay = Relay(
            client=clients.coder,
            slug=options.slug,
            policy=RelayPolicy(screen_activity=options.screen_activity, uri=options.relay_uri),
            metrics=metrics,
            grace=options.relay_grace,
            retry=tuning.relay_retry,
            idle_settle=tuning.relay_idle_settle,
            clock=clocks.monotonic,
        )
    held = kept.held
    hub = Hub(
        mirror=mirror,
        uploader=uploader,
        relay=relay,
        clock=clocks.monotonic,
        recovered=held.messages if held is not None else (),
    )
    if status_text is not None:
        hub.status_text = status_text
    source = None
    if clients.agentapi is not None:
        source = AgentapiSource(
            client=clients.agentapi,
            listener=hub,
            metrics=metrics,
            probe_interval=options.probe_interval,
            poll_interval=tuning.poll_interval,
            backoff=tuning.stream_backoff,
            clock=clocks.monotonic,
        )
    return Pipeline(mirror=mirror, hub=hub, source=source, uploader=uploader, relay=relay)

"""Prometheus metrics, one registry per Metrics instance so tests never share state."""

from __future__ import annotations

from typing import Final

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from sidecar import __version__
from sidecar.coder.outcomes import Outcome
from sidecar.models import AppState, Invalid
from sidecar.slot import Skip

_RESULTS = ", ".join(outcome.value for outcome in Outcome)

log = structlog.get_logger(__name__)

# A snapshot POST answered from the same host takes milliseconds; one through a proxy to a
# loaded server, seconds; the client gives up at SIDECAR_HTTP_TIMEOUT.
POST_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Closed label sets, created at 0 so a series exists (and a dashboard shows 0, a rate()
# works) before the first event.
FRAME_DROP_REASONS: Final = ("too_large",)


class Metrics:
    __slots__ = (
        "agentapi_connected",
        "build_info",
        "events",
        "frames_dropped",
        "invalid",
        "registry",
        "relay_patches",
        "relay_state",
        "snapshot_bytes",
        "snapshot_last_success",
        "snapshot_pending_age",
        "snapshot_pending_since",
        "snapshot_post_duration",
        "snapshot_posts",
        "snapshot_skipped",
        "snapshot_tasks_api",
        "spool_writes",
    )

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "sidecar_agentapi_events", "agentapi events received, by type", ["type"], registry=r
        )
        self.frames_dropped = Counter(
            "sidecar_agentapi_frames_dropped",
            "agentapi /events frames dropped unread, by reason (too_large: over the "
            "parser's cap; the stream is reconnected for a fresh replay)",
            ["reason"],
            registry=r,
        )
        self.invalid = Counter(
            "sidecar_invalid_input",
            "agentapi input dropped as invalid, by reason",
            ["reason"],
            registry=r,
        )
        self.snapshot_posts = Counter(
            "sidecar_snapshot_posts",
            f"log-snapshot POSTs, by result ({_RESULTS}) and HTTP status (none: no answer)",
            ["result", "status"],
            registry=r,
        )
        self.snapshot_skipped = Counter(
            "sidecar_snapshot_skipped",
            "changes that needed no POST, by reason ("
            + ", ".join(reason.value for reason in Skip)
            + ")",
            ["reason"],
            registry=r,
        )
        self.snapshot_tasks_api = Gauge(
            "sidecar_snapshot_tasks_api",
            "0 once Coder answered that it has no Tasks API (log snapshots off), else 1",
            registry=r,
        )
        self.snapshot_tasks_api.set(1)
        self.snapshot_bytes = Gauge(
            "sidecar_snapshot_bytes", "size of the last accepted snapshot body", registry=r
        )
        self.snapshot_last_success = Gauge(
            "sidecar_snapshot_last_success_timestamp_seconds",
            "wall-clock time of the last accepted snapshot",
            registry=r,
        )
        self.snapshot_pending_since = Gauge(
            "sidecar_snapshot_pending_since_timestamp_seconds",
            "wall-clock time since which a changed conversation is undelivered (0: none)",
            registry=r,
        )
        self.snapshot_pending_age = Gauge(
            "sidecar_snapshot_pending_age_seconds",
            "seconds the server has lacked the newest words (0: it holds them)",
            registry=r,
        )
        self.relay_patches = Counter(
            "sidecar_relay_patches",
            f"app-status PATCHes, by result ({_RESULTS})",
            ["result"],
            registry=r,
        )
        self.agentapi_connected = Gauge(
            "sidecar_agentapi_connected", "1 while agentapi is reachable", registry=r
        )
        self.spool_writes = Counter(
            "sidecar_spool_writes", "undelivered snapshots written to the spool", registry=r
        )
        self.snapshot_post_duration = Histogram(
            "sidecar_snapshot_post_duration_seconds",
            "time from sending a log-snapshot POST to its answer (or its failure)",
            buckets=POST_DURATION_BUCKETS,
            registry=r,
        )
        self.relay_state = Gauge(
            "sidecar_relay_state",
            "1 for the app state Coder last accepted from the relay, 0 for the others",
            ["state"],
            registry=r,
        )
        self.build_info = Gauge(
            "sidecar_build_info",
            "always 1; the sidecar's version as a label",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        for skip in Skip:
            self.snapshot_skipped.labels(reason=skip.value)
        for reason in FRAME_DROP_REASONS:
            self.frames_dropped.labels(reason=reason)
        for outcome in Outcome:
            self.relay_patches.labels(result=outcome.value)
        for state in AppState:
            self.relay_state.labels(state=state.value)
        # process_start_time_seconds (restart loops), CPU, memory, open fds; python_info.
        # Instances of their own: the module-level ones belong to the global registry.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def relay_accepted(self, state: AppState) -> None:
        for each in AppState:
            self.relay_state.labels(state=each.value).set(1 if each is state else 0)


class InvalidCounter:
    """Counts dropped input by reason and logs each reason once, so a flood of bad frames
    costs a counter increment each, not a log line each."""

    __slots__ = ("_children", "_counter", "_logged")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[str, Counter] = {}
        self._logged: set[str] = set()

    def __call__(self, invalid: Invalid, *, origin: str) -> None:
        child = self._children.get(invalid.reason)
        if child is None:
            child = self._children[invalid.reason] = self._counter.labels(reason=invalid.reason)
        child.inc()
        if invalid.reason not in self._logged:
            self._logged.add(invalid.reason)
            log.warning(
                "agentapi.invalid_input",
                reason=invalid.reason,
                detail=invalid.detail,
                origin=origin,
                note="dropped; further input invalid for this reason is counted, not logged",
            )

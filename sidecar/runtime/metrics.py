"""Prometheus metrics, one registry per Metrics instance so tests never share state."""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from sidecar.coder.outcomes import Outcome
from sidecar.models import Invalid
from sidecar.slot import Skip

_RESULTS = ", ".join(outcome.value for outcome in Outcome)

log = structlog.get_logger(__name__)


class Metrics:
    __slots__ = (
        "agentapi_connected",
        "events",
        "frames_dropped",
        "invalid",
        "registry",
        "relay_patches",
        "snapshot_bytes",
        "snapshot_last_success",
        "snapshot_pending_age",
        "snapshot_pending_since",
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
            "seconds the newest change has waited undelivered (0: none)",
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

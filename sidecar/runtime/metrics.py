"""Prometheus metrics, one registry per Metrics instance so tests never share state."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    __slots__ = (
        "agentapi_connected",
        "events",
        "invalid",
        "registry",
        "relay_patches",
        "snapshot_bytes",
        "snapshot_last_success",
        "snapshot_pending_age",
        "snapshot_pending_since",
        "snapshot_posts",
        "spool_writes",
    )

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "sidecar_agentapi_events", "agentapi events received, by type", ["type"], registry=r
        )
        self.invalid = Counter(
            "sidecar_invalid_input",
            "agentapi input dropped as invalid, by reason",
            ["reason"],
            registry=r,
        )
        self.snapshot_posts = Counter(
            "sidecar_snapshot_posts",
            "log-snapshot POSTs, by result (ok, retry, rejected, not_found, unauthorized) and "
            "HTTP status (none: no answer)",
            ["result", "status"],
            registry=r,
        )
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
            "sidecar_relay_patches", "app-status PATCHes, by result", ["result"], registry=r
        )
        self.agentapi_connected = Gauge(
            "sidecar_agentapi_connected", "1 while agentapi is reachable", registry=r
        )
        self.spool_writes = Counter(
            "sidecar_spool_writes", "undelivered snapshots written to the spool", registry=r
        )

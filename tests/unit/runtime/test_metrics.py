"""What a fresh Metrics exposes before anything happens, and the series it adds for
dashboards and alerts: the POST latency histogram, the relay's state, build and process
information."""

from __future__ import annotations

import os
import time

import pytest

from sidecar import __version__
from sidecar.coder.outcomes import Outcome
from sidecar.models import AppState
from sidecar.runtime.metrics import FRAME_DROP_REASONS, POST_DURATION_BUCKETS, Metrics
from sidecar.slot import Skip


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def label_values(metrics: Metrics, sample_name: str, label: str) -> set[str]:
    return {
        s.labels[label]
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == sample_name
    }


def test_closed_label_sets_exist_at_zero_before_any_event() -> None:
    metrics = Metrics()
    cases = {
        ("sidecar_snapshot_skipped_total", "reason"): {skip.value for skip in Skip},
        ("sidecar_agentapi_frames_dropped_total", "reason"): set(FRAME_DROP_REASONS),
        ("sidecar_relay_patches_total", "result"): {o.value for o in Outcome},
        ("sidecar_relay_state", "state"): {s.value for s in AppState},
    }
    for (name, label), values in cases.items():
        assert label_values(metrics, name, label) == values, name
        for value in values:
            assert sample(metrics, name, **{label: value}) == 0, (name, value)


def test_relay_accepted_marks_exactly_one_state() -> None:
    metrics = Metrics()
    metrics.relay_accepted(AppState.WORKING)
    metrics.relay_accepted(AppState.FAILURE)
    states = {s.value: sample(metrics, "sidecar_relay_state", state=s.value) for s in AppState}
    assert states == {"working": 0, "idle": 0, "complete": 0, "failure": 1}


def test_build_info_carries_the_version() -> None:
    metrics = Metrics()
    assert label_values(metrics, "sidecar_build_info", "version") == {__version__}
    assert sample(metrics, "sidecar_build_info", version=__version__) == 1


def test_post_duration_buckets_span_milliseconds_to_the_longest_timeout() -> None:
    assert POST_DURATION_BUCKETS[0] == 0.005
    assert POST_DURATION_BUCKETS[-1] == 30
    assert list(POST_DURATION_BUCKETS) == sorted(set(POST_DURATION_BUCKETS))
    metrics = Metrics()
    for seconds in (0.003, 0.2, 45.0):
        metrics.snapshot_post_duration.observe(seconds)
    name = "sidecar_snapshot_post_duration_seconds_bucket"
    assert sample(metrics, name, le="0.005") == 1
    assert sample(metrics, name, le="0.25") == 2
    assert sample(metrics, name, le="30.0") == 2
    assert sample(metrics, name, le="+Inf") == 3


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the process collector reads /proc")
def test_each_registry_has_the_process_and_platform_collectors() -> None:
    before = time.time()
    first, second = Metrics(), Metrics()  # one collector per registry, no clash
    for metrics in (first, second):
        started = sample(metrics, "process_start_time_seconds")
        assert started is not None
        assert 0 < started <= before
        assert (sample(metrics, "process_resident_memory_bytes") or 0) > 0
        assert label_values(metrics, "python_info", "implementation")

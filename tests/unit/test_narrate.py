"""The demo's narrator: which events it tells, in which words, and that a listener's bug
never reaches the daemon through the log's tap."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from sidecar.history import MARKER
from sidecar.log import configure
from sidecar.narrate import Narrator, one_line


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _narrator(
    stored: Sequence[Mapping[str, Any]] | None = None, status: str | None = None
) -> tuple[Narrator, io.StringIO, _Clock]:
    out, clock = io.StringIO(), _Clock()
    narrator = Narrator(out, stored=lambda: stored, last_status=lambda: status, clock=clock)
    return narrator, out, clock


def test_one_line_flattens_and_keeps_the_end() -> None:
    assert one_line("a\n  b\tc") == "“a b c”"
    long = "x" * 50 + " the newest words"
    quoted = one_line(long, limit=20)
    assert quoted == "“…" + long[-19:] + "”"
    assert len(quoted) == 22


def test_a_posted_snapshot_is_told_with_what_coder_holds() -> None:
    stored = [{"content": "hi"}, {"content": MARKER}, {"content": "again"}]
    narrator, out, clock = _narrator(stored)
    clock.now += 2.5
    narrator({"event": "snapshot.posted", "bytes": 12345, "status": 204, "latency_ms": 3.4})
    assert out.getvalue() == (
        "[  2.5s] sidecar  snapshot posted: 3 messages (the earlier conversation, a restart "
        "marker, then the new one), 12,345 bytes → HTTP 204 in 3 ms\n"
    )


def test_after_a_stop_request_the_post_is_the_final_one() -> None:
    narrator, out, _ = _narrator([{"content": "hi"}])
    narrator({"event": "shutdown.requested", "signal": "SIGTERM"})
    narrator({"event": "snapshot.posted", "bytes": 10, "status": 204, "latency_ms": 1.0})
    narrator({"event": "shutdown.complete", "snapshot": "delivered"})
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("SIGTERM received: stop reading agentapi, flush the final snapshot")
    assert lines[1].endswith("final snapshot posted: 1 message, 10 bytes → HTTP 204 in 1 ms")
    assert lines[2].endswith("stopped: final snapshot delivered")


def test_a_relayed_status_quotes_what_coder_accepted() -> None:
    narrator, out, _ = _narrator(status="Reading\ncli.py")
    narrator({"event": "relay.patched", "state": "working", "status": 200})
    assert out.getvalue().endswith("status relayed: working “Reading cli.py” → HTTP 200\n")


def test_warnings_are_always_told_and_quiet_events_are_not() -> None:
    narrator, out, _ = _narrator()
    narrator({"event": "snapshot.skipped", "level": "debug", "reason": "unchanged"})
    narrator({"event": "spool.written", "level": "info", "bytes": 3})
    assert out.getvalue() == ""
    narrator(
        {"event": "snapshot.server_error", "level": "warning", "status": 503, "timestamp": "t"}
    )
    assert out.getvalue().endswith("warning: snapshot.server_error (status=503)\n")
    assert narrator.seen == {"snapshot.skipped": 1, "spool.written": 1, "snapshot.server_error": 1}


def test_listeners_hear_every_event_told_or_not() -> None:
    narrator, _, _ = _narrator()
    heard: list[str] = []
    narrator.listeners.append(heard.append)
    narrator({"event": "snapshot.skipped", "level": "debug"})
    narrator({"event": "agentapi.connected", "level": "info", "url": "u"})
    assert heard == ["snapshot.skipped", "agentapi.connected"]


def test_a_tap_that_raises_never_stops_the_log_line() -> None:
    out = io.StringIO()

    def broken(_event: Mapping[str, Any]) -> None:
        raise RuntimeError("a listener's bug")

    configure("info", "json", out, tap=broken)
    try:
        structlog.get_logger("t").info("snapshot.posted", bytes=1)
    finally:
        configure("info", "json", io.StringIO())
    assert json.loads(out.getvalue())["event"] == "snapshot.posted"


def test_the_tap_sees_redacted_events() -> None:
    from sidecar.log import REDACTED, register_secret

    seen: list[Mapping[str, Any]] = []
    register_secret("s3cr3t-token-value")
    configure("info", "json", io.StringIO(), tap=lambda e: seen.append(dict(e)))
    try:
        structlog.get_logger("t").warning("token.reload_failed", error="bad s3cr3t-token-value")
    finally:
        configure("info", "json", io.StringIO())
    assert seen[0]["error"] == f"bad {REDACTED}"

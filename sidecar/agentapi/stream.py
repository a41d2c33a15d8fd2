"""One /events stream: how an attempt ended, what the open stream has said, and its frames
turned into events for the listener.

The reader (sidecar.agentapi.source) feeds the `Dispatcher` whole frames; the dispatcher
validates each into an event, hands it to the listener, counts it, and notes on the
stream's `Connection` what the prober compares against (the status it last delivered).
"""

from __future__ import annotations

import asyncio
import enum
from typing import Final, Protocol

from prometheus_client import Counter

from sidecar.agentapi.sse import SSEEvent
from sidecar.models import AgentStatus, Event, Invalid, StatusChange, parse_sse_event
from sidecar.runtime.metrics import InvalidCounter, Metrics

__all__ = ["KNOWN_EVENTS", "Connection", "Dispatcher", "Listener", "StreamEnd"]

# The event types agentapi sends; any other name is counted as "other", so neither the
# metric's label values nor the counters kept for them grow with what a peer sends.
KNOWN_EVENTS: Final = ("message_update", "status_change", "agent_error", "screen_update")


class StreamEnd(enum.Enum):
    """How one attempt at the /events stream ended."""

    ENDED = "ended"  # the stream was open, then closed or broke
    MISSING = "missing"  # 404: an agentapi without the stream
    DOWN = "down"  # nothing answered
    FAILED = "failed"  # any other answer
    STALLED = "stalled"  # connected, but silent where a healthy agentapi speaks


class Connection:
    """What one open stream has said, shared by its reader, its prober and its
    reconciler."""

    __slots__ = ("busy", "chunks", "spoke", "status", "turn_ended")

    def __init__(self) -> None:
        self.spoke = False  # a first frame arrived: agentapi is there
        self.status: AgentStatus | None = None  # the status the stream last delivered
        self.chunks = 0  # chunks read so far: anything the stream says moves it
        self.busy = False  # /status is held by a send (logged once a spell)
        # The stream went from running to stable: what agentapi removed without a word
        # (a failed ACP prompt's placeholder) shows only in /messages.
        self.turn_ended = asyncio.Event()


class Listener(Protocol):
    def on_event(self, event: Event) -> None: ...

    def on_reachable(self, reachable: bool) -> None: ...


class Dispatcher:
    __slots__ = ("_counters", "_invalid", "_listener", "_other")

    def __init__(self, listener: Listener, metrics: Metrics, invalid: InvalidCounter) -> None:
        self._listener = listener
        self._invalid = invalid
        self._counters: dict[str, Counter] = {
            name: metrics.events.labels(type=name) for name in KNOWN_EVENTS
        }
        self._other = metrics.events.labels(type="other")

    def deliver(self, frames: list[SSEEvent], conn: Connection) -> None:
        dispatch = self._dispatch
        # Counted once per chunk and type: a metrics increment per event would cost as
        # much as parsing it.
        counts: dict[str, int] = {}
        for frame in frames:
            counts[frame.event] = counts.get(frame.event, 0) + 1
            dispatch(frame.event, frame.data)
        counters = self._counters
        for event_type, n in counts.items():
            counters.get(event_type, self._other).inc(n)
        if "status_change" in counts:
            _note_status(frames, conn)

    def _dispatch(self, event_type: str, data: str) -> None:
        event = parse_sse_event(event_type, data)
        if event is None:
            return
        if isinstance(event, Invalid):
            self._invalid(event, origin="events")
            return
        self._listener.on_event(event)


def _note_status(frames: list[SSEEvent], conn: Connection) -> None:
    # Status changes are rare: parsing the newest one again is cheaper than looking at
    # the type of every event on the hot path.
    for frame in reversed(frames):
        if frame.event == "status_change":
            event = parse_sse_event(frame.event, frame.data)
            if isinstance(event, StatusChange):
                if conn.status is AgentStatus.RUNNING and event.status is AgentStatus.STABLE:
                    conn.turn_ended.set()
                conn.status = event.status
                return

"""AgentapiSource: turns agentapi into a stream of validated events.

SSE first; reconnects with capped, jittered backoff; falls back to polling when /events is
missing or keeps failing, and tries the stream again now and then. It only produces
events: the listener decides what they mean. The listener is called synchronously and must
not block, so this reader always drains agentapi faster than agentapi's 1,024-event
subscriber limit.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol

import structlog
from prometheus_client import Counter

from sidecar.agentapi.client import AgentapiClient, AgentapiError
from sidecar.agentapi.sse import SSEParser
from sidecar.backoff import Backoff
from sidecar.models import (
    AgentStatus,
    Conversation,
    Event,
    Invalid,
    ReplayStarted,
    parse_sse_event,
)
from sidecar.runtime.metrics import InvalidCounter, Metrics

log = structlog.get_logger(__name__)

_STREAM_FAILURES_BEFORE_POLLING: Final = 3
_PROBE_FAILURES_BEFORE_DEAD: Final = 2
_POLL_REFRESH_EVERY: Final = 5
_KNOWN_EVENTS: Final = frozenset(
    ("message_update", "status_change", "agent_error", "screen_update")
)
# A stream that stayed up this long was healthy: the next drop starts backoff afresh.
_HEALTHY_STREAM_S: Final = 10.0


class StreamEnd(enum.Enum):
    """How one attempt at the /events stream ended."""

    ENDED = "ended"  # the stream was open, then closed or broke
    MISSING = "missing"  # 404: an agentapi without the stream
    DOWN = "down"  # nothing answered
    FAILED = "failed"  # any other answer


class Listener(Protocol):
    def on_event(self, event: Event) -> None: ...

    def on_reachable(self, reachable: bool) -> None: ...


class AgentapiSource:
    __slots__ = (
        "_backoff",
        "_client",
        "_clock",
        "_down_attempts",
        "_event_counters",
        "_invalid",
        "_listener",
        "_metrics",
        "_poll_interval",
        "_probe_interval",
        "_reachable",
        "_stream_retry",
    )

    def __init__(
        self,
        *,
        client: AgentapiClient,
        listener: Listener,
        metrics: Metrics,
        probe_interval: float = 5.0,
        poll_interval: float = 1.0,
        stream_retry: float = 60.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._listener = listener
        self._metrics = metrics
        self._probe_interval = probe_interval
        self._poll_interval = poll_interval
        self._stream_retry = stream_retry
        self._backoff = backoff or Backoff(base=0.25, cap=5.0)
        self._clock = clock
        self._invalid = InvalidCounter(metrics.invalid)
        self._event_counters: dict[str, Counter] = {}
        self._reachable: bool | None = None
        self._down_attempts = 0

    def _set_reachable(self, reachable: bool) -> None:
        if reachable == self._reachable:
            return
        self._reachable = reachable
        self._metrics.agentapi_connected.set(1 if reachable else 0)
        if reachable:
            log.info("agentapi.connected", url=self._client.base_url)
        else:
            log.warning("agentapi.unreachable", url=self._client.base_url)
        self._listener.on_reachable(reachable)

    async def run(self) -> None:
        failures = 0
        while True:
            started = self._clock()
            outcome = await self._stream_once()
            if outcome is StreamEnd.ENDED:
                failures = 0 if self._clock() - started >= _HEALTHY_STREAM_S else failures + 1
            elif outcome is StreamEnd.DOWN:
                # agentapi is not there at all: polling would fail the same way, so keep
                # trying the stream, which resumes the moment agentapi is back.
                failures = 0
            elif outcome is StreamEnd.MISSING:
                log.warning("agentapi.events_missing", fallback="polling")
                await self._poll(until=self._clock() + self._stream_retry)
                continue
            else:
                failures += 1
            if failures >= _STREAM_FAILURES_BEFORE_POLLING:
                log.warning("agentapi.stream_failing", failures=failures, fallback="polling")
                await self._poll(until=self._clock() + self._stream_retry)
                failures = 0
                continue
            attempt = self._down_attempts - 1 if outcome is StreamEnd.DOWN else failures - 1
            await asyncio.sleep(self._backoff.delay(max(attempt, 0)))

    # --- SSE --------------------------------------------------------------------------------

    async def _stream_once(self) -> StreamEnd:
        try:
            async with self._client.events() as chunks:
                self._set_reachable(True)
                self._down_attempts = 0
                self._listener.on_event(ReplayStarted())
                reader = asyncio.create_task(self._read(chunks))
                prober = asyncio.create_task(self._probe())
                try:
                    await asyncio.wait((reader, prober), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (reader, prober):
                        task.cancel()
                    await asyncio.gather(reader, prober, return_exceptions=True)
                if reader.done() and not reader.cancelled() and reader.exception() is not None:
                    log.warning("agentapi.stream_broken", error=str(reader.exception()))
                else:
                    log.info("agentapi.stream_ended")
                self._set_reachable(False)
                return StreamEnd.ENDED
        except AgentapiError as exc:
            if exc.status == 404:
                return StreamEnd.MISSING
            log.debug("agentapi.connect_failed", error=str(exc))
            self._set_reachable(False)
            if exc.status is None:
                self._down_attempts += 1
                return StreamEnd.DOWN
            return StreamEnd.FAILED

    async def _read(self, chunks: AsyncIterator[bytes]) -> None:
        parser = SSEParser()
        dispatch = self._dispatch
        async for chunk in chunks:
            frames = parser.feed(chunk)
            if not frames:
                continue
            # Counted once per chunk and type: a metrics increment per event would cost
            # as much as parsing it.
            counts: dict[str, int] = {}
            for frame in frames:
                counts[frame.event] = counts.get(frame.event, 0) + 1
                dispatch(frame.event, frame.data)
            for event_type, n in counts.items():
                self._event_counter(event_type).inc(n)

    def _event_counter(self, event_type: str) -> Counter:
        counter = self._event_counters.get(event_type)
        if counter is None:
            # Label values stay a closed set whatever agentapi sends.
            label = event_type if event_type in _KNOWN_EVENTS else "other"
            counter = self._event_counters[event_type] = self._metrics.events.labels(type=label)
        return counter

    def _dispatch(self, event_type: str, data: str) -> None:
        event = parse_sse_event(event_type, data)
        if event is None:
            return
        if isinstance(event, Invalid):
            self._invalid(event, origin="events")
            return
        self._listener.on_event(event)

    async def _probe(self) -> None:
        """Returns when agentapi stopped answering /status: a hung agentapi keeps its
        socket open, so EOF alone would never tell."""
        misses = 0
        while misses < _PROBE_FAILURES_BEFORE_DEAD:
            await asyncio.sleep(self._probe_interval)
            try:
                await self._client.status()
            except AgentapiError as exc:
                misses += 1
                log.debug("agentapi.probe_failed", error=str(exc), misses=misses)
            else:
                misses = 0
        log.warning("agentapi.not_answering", misses=misses)

    # --- polling ----------------------------------------------------------------------------

    async def _poll(self, *, until: float) -> None:
        """/status every interval; /messages only on a status change or while the agent
        works (the only times the conversation moves)."""
        last_status = None
        polls = 0
        while self._clock() < until:
            polls += 1
            try:
                status = await self._client.status()
                # A whole turn can fit between two polls: look at the messages now and
                # then even when the status seems unchanged.
                refresh = polls % _POLL_REFRESH_EVERY == 0
                if status != last_status or status is AgentStatus.RUNNING or refresh:
                    messages, invalid = await self._client.messages()
                    for item in invalid:
                        self._invalid(item, origin="messages")
                    self._set_reachable(True)
                    self._listener.on_event(Conversation(tuple(messages), status))
                last_status = status
            except AgentapiError as exc:
                last_status = None
                log.debug("agentapi.poll_failed", error=str(exc))
                self._set_reachable(False)
            await asyncio.sleep(self._poll_interval)

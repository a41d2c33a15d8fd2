"""AgentapiSource: turns agentapi into a stream of validated events.

SSE first; reconnects with capped, jittered backoff; falls back to polling when /events is
missing, keeps failing or stalls, and tries the stream again now and then. It only produces
events: the listener decides what they mean. The listener is called synchronously and must
not block, so this reader always drains agentapi faster than agentapi's 1,024-event
subscriber limit.

A stalled stream: agentapi sends no keepalives, so silence on an open stream proves nothing
(an idle agent is silent for hours). It counts as stalled only where a healthy agentapi
must speak: the response headers and the first frame (the replay is written at once on
connect) each have a deadline; after that, only when the periodic /status probe
contradicts the status the stream last delivered, twice in a row, without the stream
saying anything in between.
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
from sidecar.agentapi.sse import DEFAULT_MAX_FRAME, FrameTooLarge, SSEEvent, SSEParser
from sidecar.backoff import Backoff
from sidecar.models import (
    AgentStatus,
    Conversation,
    Event,
    Invalid,
    ReplayStarted,
    StatusChange,
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
    STALLED = "stalled"  # connected, but silent where a healthy agentapi speaks


class Listener(Protocol):
    def on_event(self, event: Event) -> None: ...

    def on_reachable(self, reachable: bool) -> None: ...


class AgentapiSource:
    __slots__ = (
        "_backoff",
        "_chunks_read",
        "_client",
        "_clock",
        "_down_attempts",
        "_event_counters",
        "_first_frame_timeout",
        "_frames_too_large",
        "_invalid",
        "_listener",
        "_max_frame",
        "_metrics",
        "_poll_interval",
        "_probe_interval",
        "_reachable",
        "_stream_retry",
        "_stream_spoke",
        "_stream_status",
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
        first_frame_timeout: float = 10.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`first_frame_timeout`: how long a new stream may stay silent before its first
        frame. `max_frame`: the cap on one SSE frame, in characters (see SSEParser)."""
        if not first_frame_timeout > 0:
            raise ValueError(f"first_frame_timeout must be > 0, got {first_frame_timeout}")
        self._client = client
        self._listener = listener
        self._metrics = metrics
        self._probe_interval = probe_interval
        self._poll_interval = poll_interval
        self._stream_retry = stream_retry
        self._first_frame_timeout = first_frame_timeout
        self._max_frame = max_frame
        self._backoff = backoff or Backoff(base=0.25, cap=5.0)
        self._clock = clock
        self._invalid = InvalidCounter(metrics.invalid)
        self._event_counters: dict[str, Counter] = {}
        self._reachable: bool | None = None
        self._down_attempts = 0
        self._frames_too_large = metrics.frames_dropped.labels(reason="too_large")
        # What the open stream last said, for the probe to compare against.
        self._stream_spoke = False
        self._stream_status: AgentStatus | None = None
        self._chunks_read = 0

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
            elif outcome is StreamEnd.STALLED:
                # agentapi holds the stream but does not feed it: /status and /messages
                # may still answer, and if they do not, polling says agentapi is gone.
                await self._poll(until=self._clock() + self._stream_retry)
                failures = 0
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
                self._listener.on_event(ReplayStarted())
                self._stream_spoke = False
                self._stream_status = None
                reader = asyncio.create_task(self._read(chunks))
                prober = asyncio.create_task(self._probe())
                try:
                    await asyncio.wait((reader, prober), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (reader, prober):
                        task.cancel()
                    await asyncio.gather(reader, prober, return_exceptions=True)
        except AgentapiError as exc:
            if exc.status == 404:
                return StreamEnd.MISSING
            if exc.stalled:
                # It accepted the connection: whether it answers at all, polling tells.
                log.warning(
                    "agentapi.stream_stalled",
                    reason="no_headers",
                    error=str(exc),
                    fallback="polling",
                )
                return StreamEnd.STALLED
            self._set_reachable(False)
            log.debug("agentapi.connect_failed", error=str(exc))
            if exc.status is None:
                self._down_attempts += 1
                return StreamEnd.DOWN
            return StreamEnd.FAILED
        outcome = StreamEnd.ENDED
        for task in (reader, prober):
            if task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    log.warning("agentapi.stream_broken", error=str(error))
                else:
                    outcome = task.result()
                break
        # A stalled stream says nothing about /status and /messages: polling tells
        # whether agentapi still answers, without a false alarm in between.
        if outcome is not StreamEnd.STALLED:
            self._set_reachable(False)
        return outcome

    async def _read(self, chunks: AsyncIterator[bytes]) -> StreamEnd:
        """Reads the stream to its end: ENDED at EOF or after dropping an oversized frame
        (reconnecting brings a fresh replay), STALLED when no first frame came in time."""
        parser = SSEParser(max_frame=self._max_frame)
        stream = aiter(chunks)
        try:
            # A healthy agentapi replays at once on connect: until the first frame, a gap
            # between chunks means the stream is stalled. After it, silence is an idle
            # agent and proves nothing.
            while True:
                deadline = asyncio.timeout(self._first_frame_timeout)
                try:
                    async with deadline:
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    log.info("agentapi.stream_ended")
                    return StreamEnd.ENDED
                except TimeoutError:
                    if not deadline.expired():
                        raise
                    log.warning(
                        "agentapi.stream_stalled",
                        reason="no_first_frame",
                        waited_s=self._first_frame_timeout,
                        fallback="polling",
                    )
                    return StreamEnd.STALLED
                self._chunks_read += 1
                frames = parser.feed(chunk)
                if frames:
                    self._live()
                    self._deliver(frames)
                    break
            deliver = self._deliver
            async for chunk in stream:
                self._chunks_read += 1
                frames = parser.feed(chunk)
                if frames:
                    deliver(frames)
        except FrameTooLarge as exc:
            if exc.frames:
                self._live()
                self._deliver(exc.frames)
            self._frames_too_large.inc()
            log.warning(
                "agentapi.frame_too_large",
                limit=exc.limit,
                note="frame dropped; reconnecting for a fresh replay",
            )
            return StreamEnd.ENDED
        log.info("agentapi.stream_ended")
        return StreamEnd.ENDED

    def _live(self) -> None:
        """The stream spoke: agentapi is there."""
        self._stream_spoke = True
        self._set_reachable(True)
        self._down_attempts = 0

    def _deliver(self, frames: list[SSEEvent]) -> None:
        dispatch = self._dispatch
        # Counted once per chunk and type: a metrics increment per event would cost
        # as much as parsing it.
        counts: dict[str, int] = {}
        for frame in frames:
            counts[frame.event] = counts.get(frame.event, 0) + 1
            dispatch(frame.event, frame.data)
        for event_type, n in counts.items():
            self._event_counter(event_type).inc(n)
        if "status_change" in counts:
            self._note_status(frames)

    def _note_status(self, frames: list[SSEEvent]) -> None:
        # Status changes are rare: parsing the newest one again is cheaper than looking
        # at the type of every event on the hot path.
        for frame in reversed(frames):
            if frame.event == "status_change":
                event = parse_sse_event(frame.event, frame.data)
                if isinstance(event, StatusChange):
                    self._stream_status = event.status
                    return

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

    async def _probe(self) -> StreamEnd:
        """Returns ENDED when agentapi stopped answering /status (a hung agentapi keeps its
        socket open, so EOF alone would never tell), STALLED when /status contradicts
        the stream and the stream stays silent."""
        misses = 0
        doubt: int | None = None  # chunks read when /status first contradicted the stream
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                status = await self._client.status()
            except AgentapiError as exc:
                misses += 1
                log.debug("agentapi.probe_failed", error=str(exc), misses=misses)
                if misses >= _PROBE_FAILURES_BEFORE_DEAD:
                    log.warning("agentapi.not_answering", misses=misses)
                    return StreamEnd.ENDED
                continue
            misses = 0
            if not self._stream_spoke:
                continue  # the first-frame deadline rules until then
            if status == self._stream_status:
                doubt = None
            elif doubt != self._chunks_read:
                # The first contradiction may just be the probe overtaking the stream's
                # status_change; anything the stream sends resets the doubt.
                doubt = self._chunks_read
            else:
                log.warning(
                    "agentapi.stream_stalled",
                    reason="status_contradicted",
                    stream_status=self._stream_status,
                    probed_status=status,
                    fallback="polling",
                )
                return StreamEnd.STALLED

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

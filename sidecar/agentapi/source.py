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
from collections.abc import AsyncIterator, Callable, Mapping
from types import MappingProxyType
from typing import Final

import structlog

from sidecar.agentapi.client import AgentapiClient, AgentapiError
from sidecar.agentapi.sse import DEFAULT_MAX_FRAME, FrameTooLarge, SSEParser
from sidecar.agentapi.stream import Connection, Dispatcher, Listener, StreamEnd
from sidecar.backoff import Backoff
from sidecar.models import AgentStatus, Conversation, ReplayStarted
from sidecar.runtime.metrics import InvalidCounter, Metrics

log = structlog.get_logger(__name__)

_STREAM_FAILURES_BEFORE_POLLING: Final = 3
_PROBE_FAILURES_BEFORE_DEAD: Final = 2
_POLL_REFRESH_EVERY: Final = 5
# A stream that stayed up this long was healthy: the next drop starts backoff afresh.
_HEALTHY_STREAM_S: Final = 10.0


class Mode(enum.Enum):
    STREAM = "stream"  # connect to /events again, after a back-off
    POLL = "poll"  # poll /status and /messages for a while, then try the stream again


class Tally(enum.Enum):
    """What an ending does to the count of stream failures in a row (three fall back to
    polling)."""

    ADD = "add"
    RESET = "reset"
    # A stream that stayed up for a while was healthy: the next drop starts afresh.
    ADD_UNLESS_HEALTHY = "add_unless_healthy"


# What follows each way a stream attempt can end.
AFTER: Final[Mapping[StreamEnd, tuple[Mode, Tally]]] = MappingProxyType(
    {
        StreamEnd.ENDED: (Mode.STREAM, Tally.ADD_UNLESS_HEALTHY),
        StreamEnd.FAILED: (Mode.STREAM, Tally.ADD),
        # Nothing answers at all: polling would fail the same way, so keep trying the
        # stream, which resumes the moment agentapi is back.
        StreamEnd.DOWN: (Mode.STREAM, Tally.RESET),
        StreamEnd.MISSING: (Mode.POLL, Tally.RESET),
        # agentapi holds the stream but does not feed it: /status and /messages may still
        # answer, and if they do not, polling says agentapi is gone.
        StreamEnd.STALLED: (Mode.POLL, Tally.RESET),
    }
)


class AgentapiSource:
    __slots__ = (
        "_backoff",
        "_client",
        "_clock",
        "_dispatcher",
        "_downs",
        "_first_frame_timeout",
        "_frames_too_large",
        "_host_refused_logged",
        "_invalid",
        "_listener",
        "_max_frame",
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
        self._dispatcher = Dispatcher(listener, metrics, self._invalid)
        self._reachable: bool | None = None
        # Connects in a row that nothing answered (the back-off while agentapi is absent);
        # ended by a stream that speaks.
        self._downs = 0
        self._frames_too_large = metrics.frames_dropped.labels(reason="too_large")
        self._host_refused_logged = False

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
            mode, tally = AFTER[outcome]
            if tally is Tally.RESET:
                failures = 0
            elif tally is Tally.ADD or self._clock() - started < _HEALTHY_STREAM_S:
                failures += 1
            else:
                failures = 0
            if mode is Mode.STREAM and failures >= _STREAM_FAILURES_BEFORE_POLLING:
                log.warning("agentapi.stream_failing", failures=failures, fallback="polling")
                mode, failures = Mode.POLL, 0
            if mode is Mode.POLL:
                if outcome is StreamEnd.MISSING:
                    log.warning("agentapi.events_missing", fallback="polling")
                hung = outcome is StreamEnd.STALLED
                await self._poll(until=self._clock() + self._stream_retry, hung=hung)
                continue
            attempt = self._downs if outcome is StreamEnd.DOWN else failures
            await asyncio.sleep(self._backoff.delay(max(attempt - 1, 0)))

    # --- SSE --------------------------------------------------------------------------------

    async def _stream_once(self) -> StreamEnd:
        try:
            async with self._client.events() as chunks:
                self._listener.on_event(ReplayStarted())
                conn = Connection()
                reader = asyncio.create_task(self._read(chunks, conn))
                prober = asyncio.create_task(self._probe(conn))
                reconciler = asyncio.create_task(self._reconcile(conn))
                try:
                    await asyncio.wait((reader, prober), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (reader, prober, reconciler):
                        task.cancel()
                    await asyncio.gather(reader, prober, reconciler, return_exceptions=True)
        except AgentapiError as exc:
            if exc.status == 404:
                return StreamEnd.MISSING
            self._refused(exc)
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
                self._downs += 1
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

    async def _read(self, chunks: AsyncIterator[bytes], conn: Connection) -> StreamEnd:
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
                conn.chunks += 1
                frames = parser.feed(chunk)
                if frames:
                    self._live(conn)
                    self._dispatcher.deliver(frames, conn)
                    break
            deliver = self._dispatcher.deliver
            async for chunk in stream:
                conn.chunks += 1
                frames = parser.feed(chunk)
                if frames:
                    deliver(frames, conn)
        except FrameTooLarge as exc:
            if exc.frames:
                self._live(conn)
                self._dispatcher.deliver(exc.frames, conn)
            self._frames_too_large.inc()
            log.warning(
                "agentapi.frame_too_large",
                limit=exc.limit,
                note="frame dropped; reconnecting for a fresh replay",
            )
            return StreamEnd.ENDED
        log.info("agentapi.stream_ended")
        return StreamEnd.ENDED

    def _live(self, conn: Connection) -> None:
        """The stream spoke: agentapi is there."""
        conn.spoke = True
        self._set_reachable(True)
        self._downs = 0

    async def _probe(self, conn: Connection) -> StreamEnd:
        """Returns ENDED when agentapi stopped answering /status (refused or failed, twice:
        a hung agentapi keeps its socket open, so EOF alone would never tell), STALLED
        when /status contradicts the stream and the stream stays silent. A /status that
        does not answer in time is agentapi busy with a send, not gone: its stream says
        it lives."""
        misses = 0
        doubt: int | None = None  # chunks read when /status first contradicted the stream
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                status = await self._client.status()
            except AgentapiError as exc:
                if exc.busy:
                    self._busy(conn)
                    continue
                misses += 1
                log.debug("agentapi.probe_failed", error=str(exc), misses=misses)
                if misses >= _PROBE_FAILURES_BEFORE_DEAD:
                    log.warning("agentapi.not_answering", misses=misses)
                    return StreamEnd.ENDED
                continue
            misses = 0
            conn.busy = False
            if not conn.spoke:
                continue  # the first-frame deadline rules until then
            if status == conn.status:
                doubt = None
            elif doubt != conn.chunks:
                # The first contradiction may just be the probe overtaking the stream's
                # status_change; anything the stream sends resets the doubt.
                doubt = conn.chunks
            else:
                log.warning(
                    "agentapi.stream_stalled",
                    reason="status_contradicted",
                    stream_status=conn.status,
                    probed_status=status,
                    fallback="polling",
                )
                return StreamEnd.STALLED

    def _busy(self, conn: Connection) -> None:
        if not conn.busy:
            conn.busy = True
            log.info(
                "agentapi.busy",
                note="/status waits on a message being sent; the stream says agentapi lives",
            )

    async def _reconcile(self, conn: Connection) -> None:
        """After each turn, read /messages once: agentapi never announces a removal (a
        failed ACP prompt drops its placeholder reply), only /messages or a replay shows
        it. What is read stands in for the stream's view only if the stream said nothing
        meanwhile (else it may be older than what the stream said)."""
        while True:
            await conn.turn_ended.wait()
            conn.turn_ended.clear()
            chunks = conn.chunks
            try:
                messages, invalid = await self._client.messages()
            except AgentapiError as exc:
                log.debug("agentapi.reconcile_failed", error=str(exc))
                continue
            if conn.chunks != chunks:
                continue
            for item in invalid:
                self._invalid(item, origin="messages")
            self._listener.on_event(Conversation(tuple(messages), None))

    def _refused(self, exc: AgentapiError) -> None:
        """A Host that agentapi refuses will be refused again: say it once, clearly."""
        if exc.host_refused and not self._host_refused_logged:
            self._host_refused_logged = True
            log.error(
                "agentapi.host_refused",
                url=self._client.base_url,
                error=str(exc),
                hint="agentapi accepts only its --allowed-hosts (by default localhost, "
                "127.0.0.1 and ::1): point CODER_MCP_AI_AGENTAPI_URL at one of them, or "
                "start agentapi with --allowed-hosts naming this host",
            )

    # --- polling ----------------------------------------------------------------------------

    async def _poll(self, *, until: float, hung: bool = False) -> None:
        """/status every interval; /messages only on a status change or while the agent
        works (the only times the conversation moves). A request that gets no answer in
        time is agentapi busy with a send, unless its stream hung too (`hung`: a send
        never holds up the stream's replay): then agentapi is taken for unreachable."""
        last_status = None
        polls = 0
        poll = Connection()  # for the busy spells of polling
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
                poll.busy = False
            except AgentapiError as exc:
                log.debug("agentapi.poll_failed", error=str(exc))
                if exc.busy and not hung:
                    # A send holds agentapi's lock: it is there, only slow to answer.
                    self._busy(poll)
                else:
                    last_status = None
                    self._refused(exc)
                    self._set_reachable(False)
            await asyncio.sleep(self._poll_interval)

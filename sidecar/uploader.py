"""The uploader decides when a snapshot is posted, and flushes it on stop.

A snapshot is read only when a task is paused or its workspace is gone; while the agent
works, Coder shows the live conversation. So the periodic post is insurance against an
unclean death, paid for by the server (every POST upserts a row of up to 64 KiB): a turn
that ended is posted promptly, a turn that streams at most once per interval, and a
change that leaves the body as it was never. The first post after a start lands at a
random point of the first two intervals, so a fleet that starts together does not post
together.

It holds one slot (sidecar.slot), not a queue: whatever it posts (first try or retry) is
built from the mirror at that moment, so the server only ever receives the newest
conversation. How an answer is acted on is the shared outcome table's business
(sidecar.coder.delivery); when to post is this module's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Final, Protocol
from uuid import UUID

import structlog

from sidecar import snapshot
from sidecar.backoff import Deadline
from sidecar.coder.client import Result
from sidecar.coder.delivery import Decision, Delivery, SlotLoop
from sidecar.coder.outcomes import NO_TASKS_API_HINT, Sink, Step, no_tasks_api
from sidecar.coder.retry import RetryPolicy
from sidecar.history import History
from sidecar.log import remove_secrets
from sidecar.mirror import Mirror
from sidecar.models import SNAPSHOT_MAX_BYTES
from sidecar.runtime.metrics import Metrics
from sidecar.slot import FlushOutcome, Skip, SnapshotSlot
from sidecar.spool import NOTHING_KEPT, Kept, Spool

__all__ = ["FIRST_POST_SPREAD", "SnapshotClient", "Uploader"]

log = structlog.get_logger(__name__)

# A turn that ended is posted promptly, but a flapping status must still not flood.
_URGENT_MIN_GAP: Final = 1.0
# How many intervals the first post after a start is spread over.
FIRST_POST_SPREAD: Final = 2.0


class SnapshotClient(Protocol):
    """What the uploader needs of sidecar.coder.client.CoderClient."""

    async def post_log_snapshot(
        self, task_id: UUID, body: bytes, *, timeout: float | None = None
    ) -> Result: ...

    async def reload_token(self) -> bool: ...

    async def server_version(self) -> str | None: ...


class Uploader:
    __slots__ = (
        "_body_cache",
        "_client",
        "_clock",
        "_delivery",
        "_first_due",
        "_history",
        "_interval",
        "_loop",
        "_max_bytes",
        "_metrics",
        "_mirror",
        "_published",
        "_slot",
        "_spool",
        "_task_id",
        "_wall_clock",
    )

    def __init__(
        self,
        *,
        client: SnapshotClient,
        task_id: UUID,
        mirror: Mirror,
        metrics: Metrics,
        interval: float,
        spool: Spool | None = None,
        kept: Kept = NOTHING_KEPT,
        max_bytes: int = SNAPSHOT_MAX_BYTES,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._task_id = task_id
        self._mirror = mirror
        self._metrics = metrics
        self._interval = interval
        self._spool = spool
        self._max_bytes = max_bytes
        self._clock = clock
        self._wall_clock = wall_clock
        self._delivery = Delivery(sink=Sink.SNAPSHOT, credentials=client, retry=retry, clock=clock)
        self._loop = SlotLoop(self, self._delivery, clock=clock)
        # The first periodic post lands at a random point of the first two intervals (a
        # finished turn or a stop does not wait for it): spread over one, a fleet that
        # starts together still had seconds with over 5 % of it posting
        # (bench/server_load.py).
        spread = FIRST_POST_SPREAD * interval
        self._first_due = clock() + (rng or random.Random()).uniform(0.0, spread)
        self._body_cache: tuple[int, bytes | None] = (-1, None)
        # What this task's snapshot showed when it was last built: the spooled body
        # (undelivered, so newer) or the one Coder accepted last.
        held = kept.held
        self._history = History(mirror.max_messages, held.messages if held else ())
        self._slot = SnapshotSlot(
            pending=kept.pending is not None,
            accepted=kept.accepted.body if kept.accepted is not None else None,
            now=clock(),
        )
        self._published: float | None = None
        self._publish_pending()

    # --- what the rest of the daemon sees -------------------------------------------------

    def notify(self, *, urgent: bool = False) -> None:
        """The conversation changed. Synchronous and cheap: called from the SSE reader."""
        self._slot.changed(self._clock(), urgent=urgent)
        self._publish_pending()
        self._loop.wake()

    def credentials_changed(self) -> None:
        """The token file was rotated: a 401 back-off in progress is pointless now."""
        if self._delivery.credentials_changed():
            self._loop.wake()

    def pending_age(self) -> float:
        """Seconds the server has lacked the newest words (0 when it holds them)."""
        since = self._slot.pending_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    @property
    def blocked_reason(self) -> str | None:
        """Why uploads are held back for long, while that back-off holds; None otherwise
        (a Coder without Tasks is `tasks_api_missing`)."""
        return self._delivery.blocked_reason

    @property
    def tasks_api_missing(self) -> bool:
        """The server answered that it has no Tasks API: snapshots are off until a
        later check finds one."""
        return self._slot.no_tasks_api

    def current_body(self) -> bytes | None:
        """The body that stands for the newest conversation known: agentapi's, joined to
        what was said before agentapi last started again (sidecar.history)."""
        version, body = self._body_cache
        if version != self._mirror.version:
            messages = self._history.view(self._mirror.messages())
            body = (
                snapshot.build(
                    messages,
                    max_messages=self._mirror.max_messages,
                    max_bytes=self._max_bytes,
                    clean=remove_secrets,
                )
                if messages
                else None
            )
            self._body_cache = (self._mirror.version, body)
        return body

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        await self._loop.run()

    def next_due(self, now: float) -> float | None:
        slot = self._slot
        if not slot.dirty:
            return None
        if slot.urgent:
            return self._delivery.ready_at(min(_URGENT_MIN_GAP, self._interval))
        return max(self._delivery.ready_at(self._interval), self._first_due)

    async def send(self, timeout: float | None) -> Decision | None:
        """Post the newest body once; None when there was nothing new to post."""
        slot = self._slot
        slot.taking()
        body = self.current_body()
        skipped = slot.skip(body)
        if body is None or skipped is not None:
            reason = skipped or Skip.EMPTY
            log.debug("snapshot.skipped", reason=reason.value)
            self._metrics.snapshot_skipped.labels(reason=reason.value).inc()
            slot.skipped(reason)
            self._publish_pending()
            return None
        self._delivery.sending()
        result = await self._delivery.call(
            self._client.post_log_snapshot(self._task_id, body, timeout=timeout)
        )
        status = "none" if result.status is None else str(result.status)
        self._metrics.snapshot_posts.labels(result=result.outcome.value, status=status).inc()
        self._metrics.snapshot_post_duration.observe(result.latency_ms / 1000)
        decision = await self._delivery.record(result, bytes=len(body))
        if decision.step is Step.ACCEPTED:
            self._accepted(body)
        elif decision.step is Step.REFUSED:
            slot.on_refused(body)
        elif decision.rule.endpoint_missing:
            await self._tasks_api_gone()
        else:
            slot.on_failed()
            if decision.keep and self._spool is not None:
                self._spool.keep(body)
        self._publish_pending()
        return decision

    async def _tasks_api_gone(self) -> None:
        """Say once what is wrong and what still works; stop keeping bodies that this
        server has nowhere to store."""
        if not self._slot.on_no_tasks_api():
            return
        self._metrics.snapshot_tasks_api.set(0)
        version = await self._client.server_version()
        log.error(
            "snapshot.no_tasks_api",
            coder_version=version or "(version unknown)",
            message=no_tasks_api(version),
            hint=f"{NO_TASKS_API_HINT}; the server is asked again about once an hour",
        )
        if self._spool is not None:
            self._spool.drop("no Tasks API on this server")

    def _accepted(self, body: bytes) -> None:
        if self._slot.on_accepted(body):
            self._metrics.snapshot_tasks_api.set(1)
            log.info("snapshot.tasks_api_found")
        self._metrics.snapshot_bytes.set(len(body))
        self._metrics.snapshot_last_success.set(self._wall_clock())
        if self._spool is not None:
            self._spool.delivered(body)

    def _publish_pending(self) -> None:
        """The pending gauge is wall-clock time, for dashboards; the age behind it is
        measured on the monotonic clock, which a stepped wall clock cannot bend. Set when
        it changes only: this runs for every streamed update."""
        since = self._slot.pending_since
        if since == self._published:
            return
        self._published = since
        wall = 0.0 if since is None else self._wall_clock() - self.pending_age()
        self._metrics.snapshot_pending_since.set(wall)

    # --- stop -----------------------------------------------------------------------------

    async def flush(self, timeout: float) -> FlushOutcome:
        """Deliver the newest body within `timeout`; spool it if that fails. Safe to call
        twice."""
        deadline = Deadline(timeout, clock=self._clock)
        try:
            await self._loop.stop(deadline, self.send)
        except asyncio.CancelledError:
            # A second signal cut the flush short: the body must still reach the disk.
            self.conclude()
            raise
        return self.conclude()

    def conclude(self) -> FlushOutcome:
        """What became of the newest body; it is spooled now when it is undelivered.
        Safe to call at any time, also after a flush was cancelled."""
        body = self.current_body()
        outcome = self._slot.outcome(body)
        if outcome is not None:
            return outcome
        assert body is not None
        kept = self._spool is not None and self._spool.keep(body)
        log.warning("snapshot.flush_incomplete", bytes=len(body), spooled=kept)
        return FlushOutcome.SPOOLED if kept else FlushOutcome.LOST

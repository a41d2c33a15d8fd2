"""The uploader decides when a snapshot is posted, and flushes it on stop.

A snapshot is read only when a task is paused or its workspace is gone; while the agent
works, Coder shows the live conversation. So the periodic post is insurance against an
unclean death, paid for by the server (every POST upserts a row of up to 64 KiB): a turn
that ended is posted promptly, a turn that streams at most once per interval, and a
change that leaves the body as it was never. The first post after a start lands at a
random point of the first two intervals, so a fleet that starts together does not post
together.

It holds one slot, not a queue: whatever it posts (first try or retry) is built from the
mirror at that moment, so the server only ever receives the newest conversation. How an
answer is acted on (retry, back-off, token re-read) is the shared `Delivery`'s business.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable
from typing import Final, Protocol
from uuid import UUID

import structlog

from sidecar import snapshot
from sidecar.backoff import Deadline
from sidecar.coder.client import Outcome, Result
from sidecar.coder.delivery import Decision, Delivery, SinkEvents, Step, wait_event
from sidecar.coder.retry import RetryPolicy
from sidecar.log import remove_secrets
from sidecar.mirror import Mirror
from sidecar.models import SNAPSHOT_MAX_BYTES
from sidecar.runtime.metrics import Metrics
from sidecar.spool import Spool, Spooled

__all__ = ["FIRST_POST_SPREAD", "FlushOutcome", "SnapshotClient", "Uploader"]

log = structlog.get_logger(__name__)

# A turn that ended is posted promptly, but a flapping status must still not flood.
_URGENT_MIN_GAP: Final = 1.0
# How many intervals the first post after a start is spread over.
FIRST_POST_SPREAD: Final = 2.0

_EVENTS: Final = SinkEvents(
    prefix="snapshot",
    accepted="snapshot.posted",
    not_found="snapshot.task_not_found",
    no_route=None,
    not_found_hint="the task does not exist in this workspace, or Coder is too old for log "
    "snapshots",
)


class SnapshotClient(Protocol):
    """What the uploader needs of sidecar.coder.client.CoderClient."""

    async def post_log_snapshot(
        self, task_id: UUID, body: bytes, *, timeout: float | None = None
    ) -> Result: ...

    async def reload_token(self) -> bool: ...

    async def server_version(self) -> str | None: ...


class FlushOutcome(enum.Enum):
    """What became of the newest conversation at a flush."""

    DELIVERED = "delivered"  # the server holds it
    NOTHING = "nothing"  # there was no conversation to deliver
    REJECTED = "rejected"  # the server refused it (400): neither delivered nor kept
    SPOOLED = "spooled"  # undelivered, kept on disk for the next start
    LOST = "lost"  # undelivered, and the spool could not keep it
    NO_TASKS_API = "no_tasks_api"  # the server has nowhere to keep it: nothing to deliver

    @property
    def delivered(self) -> bool:
        """The server holds the newest conversation, or there is nothing to deliver."""
        return self in _NOTHING_LEFT


_NOTHING_LEFT: Final = frozenset(
    (FlushOutcome.DELIVERED, FlushOutcome.NOTHING, FlushOutcome.NO_TASKS_API)
)


class Uploader:
    __slots__ = (
        "_body_cache",
        "_client",
        "_clock",
        "_closing",
        "_delivery",
        "_dirty",
        "_first_due",
        "_interval",
        "_last_accepted",
        "_max_bytes",
        "_metrics",
        "_mirror",
        "_no_tasks_api",
        "_pending_since",
        "_post_lock",
        "_recovered",
        "_rejected",
        "_spool",
        "_spooled",
        "_task_id",
        "_urgent",
        "_wake",
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
        recovered: Spooled | None = None,
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
        self._delivery = Delivery(events=_EVENTS, credentials=client, retry=retry, clock=clock)
        # The first periodic post lands at a random point of the first two intervals (a
        # finished turn or a stop does not wait for it): spread over one, a fleet that
        # starts together still had seconds with over 5 % of it posting
        # (bench/server_load.py).
        spread = FIRST_POST_SPREAD * interval
        self._first_due = clock() + (rng or random.Random()).uniform(0.0, spread)
        self._clock = clock
        self._wall_clock = wall_clock

        self._wake = asyncio.Event()
        self._post_lock = asyncio.Lock()
        self._dirty = False
        self._urgent = False
        self._closing = False
        self._no_tasks_api = False
        self._pending_since: float | None = None
        self._last_accepted: bytes | None = None
        self._rejected: bytes | None = None
        self._body_cache: tuple[int, bytes | None] = (-1, None)
        # A body recovered from the spool stands for the conversation until the mirror
        # holds one: delivered unless something newer is first.
        self._recovered = recovered.body if recovered is not None else None
        self._spooled = self._recovered  # what the spool file holds now
        if self._recovered is not None:
            self._mark_dirty()

    # --- what the rest of the daemon sees -------------------------------------------------

    def notify(self, *, urgent: bool = False) -> None:
        """The conversation changed. Synchronous and cheap: called from the SSE reader."""
        self._mark_dirty()
        if urgent:
            self._urgent = True
        self._wake.set()

    def credentials_changed(self) -> None:
        """The token file was rotated: a 401 back-off in progress is pointless now."""
        if self._delivery.credentials_changed():
            self._wake.set()

    def pending_age(self) -> float:
        """Seconds the newest change has waited undelivered (0 when none)."""
        if self._pending_since is None:
            return 0.0
        return max(0.0, self._wall_clock() - self._pending_since)

    @property
    def blocked_reason(self) -> str | None:
        """Why uploads are held back for long ('not_found', 'unauthorized', 'redirect'),
        while that back-off holds; None otherwise (see `tasks_api_missing`)."""
        reason = self._delivery.blocked_reason
        return None if reason == Outcome.NO_ROUTE.value else reason

    @property
    def tasks_api_missing(self) -> bool:
        """The server answered that it has no Tasks API: snapshots are off until a
        later check finds one."""
        return self._no_tasks_api

    def current_body(self) -> bytes | None:
        """The body that stands for the newest conversation known."""
        messages = self._mirror.messages()
        version, body = self._body_cache
        if not messages:
            # agentapi restarted empty or is gone: the last conversation built, else what
            # the spool kept, is still the best there is.
            return body if body is not None else self._recovered
        if version != self._mirror.version:
            body = snapshot.build(
                messages,
                max_messages=self._mirror.max_messages,
                max_bytes=self._max_bytes,
                clean=remove_secrets,
            )
            self._body_cache = (self._mirror.version, body)
        return body

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while not self._closing:
            wait: float | None = None
            if self._dirty:
                if self._urgent:
                    due = self._delivery.ready_at(min(_URGENT_MIN_GAP, self._interval))
                else:
                    due = max(self._delivery.ready_at(self._interval), self._first_due)
                wait = due - self._clock()
            if wait is None or wait > 0:
                self._wake.clear()
                await wait_event(self._wake, wait)
                continue
            self._urgent = False
            async with self._post_lock:
                if self._closing:
                    return
                await self._post_once(deadline=None)

    async def _post_once(self, *, deadline: Deadline | None) -> Decision | None:
        """Post the newest body once; None when there was nothing new to post."""
        self._dirty = False
        body = self.current_body()
        skipped = "empty" if body is None else self._skip_reason(body)
        if body is None or skipped is not None:
            self._metrics.snapshot_skipped.labels(reason=skipped or "empty").inc()
            # A refused body stays pending: the newest conversation is not at the server.
            if skipped != "refused" and not self._dirty:
                self._clear_pending()
            return None
        timeout = None
        if deadline is not None:
            timeout = deadline.remaining()
            if timeout <= 0:
                raise TimeoutError
        self._delivery.sending()
        result = await self._client.post_log_snapshot(self._task_id, body, timeout=timeout)
        status = "none" if result.status is None else str(result.status)
        self._metrics.snapshot_posts.labels(result=result.outcome.value, status=status).inc()
        decision = await self._delivery.record(
            result, stopping=deadline is not None, bytes=len(body)
        )
        if decision.step is Step.ACCEPTED:
            self._accepted(body)
        elif decision.step is Step.REFUSED:
            self._rejected = body
        elif result.outcome is Outcome.NO_ROUTE:
            await self._tasks_api_gone()
            self._mark_dirty()  # asked again, with the newest body, once the hour is over
        else:
            self._mark_dirty()
            if decision.keep:
                self._save_spool(body)
        return decision

    def _skip_reason(self, body: bytes) -> str | None:
        """Why `body` needs no POST, or None when it does."""
        if body == self._last_accepted:
            return "unchanged"
        if body == self._rejected:
            # Resending the same bytes would be refused the same way; wait for a change.
            return "refused"
        return None

    async def _tasks_api_gone(self) -> None:
        """Say once what is wrong and what still works; stop keeping bodies that this
        server has nowhere to store."""
        if self._no_tasks_api:
            return
        self._no_tasks_api = True
        self._metrics.snapshot_tasks_api.set(0)
        version = await self._client.server_version() or "(version unknown)"
        log.error(
            "snapshot.no_tasks_api",
            coder_version=version,
            message=f"Coder {version} has no Tasks API: log snapshots are off; statuses are "
            "still relayed",
            hint="log snapshots need Coder v2.30 to v2.35 (or the v2.34 ESR, or v2.36 with "
            "its Tasks API turned on); the server is asked again about once an hour",
        )
        self._clear_pending()
        self._recovered = None
        if self._spooled is not None:
            self._spooled = None
            if self._spool is not None:
                self._spool.clear(reason="no Tasks API on this server")

    def _clear_pending(self) -> None:
        if self._pending_since is not None:
            self._pending_since = None
            self._metrics.snapshot_pending_since.set(0)

    def _accepted(self, body: bytes) -> None:
        if self._no_tasks_api:
            self._no_tasks_api = False
            self._metrics.snapshot_tasks_api.set(1)
            log.info("snapshot.tasks_api_found")
        self._last_accepted = body
        self._metrics.snapshot_bytes.set(len(body))
        self._metrics.snapshot_last_success.set(self._wall_clock())
        if self._spooled is not None:
            self._spooled = None
            # A file that cannot be removed is overwritten with what the server now
            # holds, so that no later start delivers older words over it.
            if self._spool is not None and not self._spool.clear():
                self._save_spool(body)
        if not self._dirty:
            self._clear_pending()

    def _save_spool(self, body: bytes) -> bool:
        """Keep `body` on disk; True when the spool holds it."""
        if self._spool is None:
            return False
        if body == self._spooled:
            return True
        if not self._spool.save(body):
            if self._spooled is not None:
                # What the file holds is older than the body that could not be kept: left
                # there, the next start would deliver it over newer words.
                self._spooled = None
                self._spool.clear(reason="older than the conversation that could not be kept")
            return False
        self._spooled = body
        self._metrics.spool_writes.inc()
        return True

    def _mark_dirty(self) -> None:
        self._dirty = True
        # With snapshots off there is nothing pending, only a change to try hourly.
        if self._pending_since is None and not self._no_tasks_api:
            self._pending_since = self._wall_clock()
            self._metrics.snapshot_pending_since.set(self._pending_since)

    # --- stop -----------------------------------------------------------------------------

    async def flush(self, timeout: float) -> FlushOutcome:
        """Deliver the newest body within `timeout`; spool it if that fails. Safe to call
        twice."""
        deadline = Deadline(timeout, clock=self._clock)
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(deadline.remaining()):
                await self._post_lock.acquire()
        except TimeoutError:
            return self.conclude()
        except asyncio.CancelledError:
            self.conclude()
            raise
        try:
            self._delivery.lift_backoff()
            self._dirty = True
            await self._delivery.settle(lambda: self._post_once(deadline=deadline), deadline)
            return self.conclude()
        except asyncio.CancelledError:
            # A second signal cut the flush short: the body must still reach the disk.
            self.conclude()
            raise
        finally:
            self._post_lock.release()

    def conclude(self) -> FlushOutcome:
        """What became of the newest body; it is spooled now when it is undelivered.
        Safe to call at any time, also after a flush was cancelled."""
        body = self.current_body()
        if body is None:
            return FlushOutcome.NOTHING
        if self._no_tasks_api:
            return FlushOutcome.NO_TASKS_API
        skipped = self._skip_reason(body)
        if skipped == "unchanged":
            return FlushOutcome.DELIVERED
        if skipped == "refused":
            return FlushOutcome.REJECTED
        kept = self._save_spool(body)
        log.warning("snapshot.flush_incomplete", bytes=len(body), spooled=kept)
        return FlushOutcome.SPOOLED if kept else FlushOutcome.LOST

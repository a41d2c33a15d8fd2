"""The uploader decides when a snapshot is posted, retries it, and flushes it on stop.

It holds one slot, not a queue: whatever it posts (first try or retry) is built from the
mirror at that moment, so the server only ever receives the newest conversation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from uuid import UUID

import structlog

from sidecar import snapshot
from sidecar.backoff import Deadline
from sidecar.coder.client import CoderClient, Outcome, Result
from sidecar.coder.retry import RetryPolicy
from sidecar.mirror import Mirror
from sidecar.models import SNAPSHOT_MAX_BYTES
from sidecar.runtime.metrics import Metrics
from sidecar.spool import Spool

log = structlog.get_logger(__name__)

# A turn that ended is posted promptly, but a flapping status must still not flood.
_URGENT_MIN_GAP = 1.0


class Uploader:
    __slots__ = (
        "_blocked_reason",
        "_blocked_until",
        "_body_cache",
        "_client",
        "_clock",
        "_closing",
        "_dirty",
        "_interval",
        "_last_accepted",
        "_last_post_at",
        "_max_bytes",
        "_metrics",
        "_mirror",
        "_not_found_logged",
        "_pending_since",
        "_post_lock",
        "_rejected",
        "_retry",
        "_spool",
        "_spooled",
        "_task_id",
        "_urgent",
        "_wake",
        "_wall_clock",
        "recovered",
    )

    def __init__(
        self,
        *,
        client: CoderClient,
        task_id: UUID,
        mirror: Mirror,
        metrics: Metrics,
        interval: float,
        spool: Spool | None = None,
        max_bytes: int = SNAPSHOT_MAX_BYTES,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._task_id = task_id
        self._mirror = mirror
        self._metrics = metrics
        self._interval = interval
        self._spool = spool
        self._max_bytes = max_bytes
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._wall_clock = wall_clock

        self._wake = asyncio.Event()
        self._post_lock = asyncio.Lock()
        self._dirty = False
        self._urgent = False
        self._closing = False
        self._last_post_at = float("-inf")
        self._blocked_until = float("-inf")
        self._blocked_reason: str | None = None
        self._not_found_logged = False
        self._pending_since: float | None = None
        self._last_accepted: bytes | None = None
        self._rejected: bytes | None = None
        self._body_cache: tuple[int, bytes | None] = (-1, None)
        # A body recovered from the spool: delivered unless something newer is first.
        self.recovered = spool.load() if spool is not None else None
        self._spooled: bytes | None = None
        if self.recovered is not None:
            self._spooled = self.recovered.body
            log.info("spool.recovered", bytes=len(self._spooled))
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
        if self._retry.last_outcome is Outcome.UNAUTHORIZED:
            self._blocked_until = self._clock()
            self._wake.set()

    def pending_age(self) -> float:
        """Seconds the newest change has waited undelivered (0 when none)."""
        if self._pending_since is None:
            return 0.0
        return max(0.0, self._wall_clock() - self._pending_since)

    @property
    def blocked_reason(self) -> str | None:
        """'unauthorized' or 'not_found' while such a back-off holds, else None."""
        if self._blocked_reason is not None and self._clock() < self._blocked_until:
            return self._blocked_reason
        return None

    def current_body(self) -> bytes | None:
        messages = self._mirror.messages()
        if not messages:
            # agentapi restarted empty or is gone: what the spool kept is still the best.
            return self._spooled
        version, body = self._body_cache
        if version != self._mirror.version:
            body = snapshot.build(
                messages, max_messages=self._mirror.max_messages, max_bytes=self._max_bytes
            )
            self._body_cache = (self._mirror.version, body)
        return body

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while not self._closing:
            if not self._dirty:
                await self._wait(None)
                continue
            due = self._due()
            now = self._clock()
            if due > now:
                await self._wait(due - now)
                continue
            self._urgent = False
            async with self._post_lock:
                if self._closing:
                    return
                result = await self._post_once(deadline=None)
            # A rotated token file makes the back-off pointless: retry at once.
            if (
                result is not None
                and result.outcome is Outcome.UNAUTHORIZED
                and await self._client.reload_token()
            ):
                self._blocked_until = self._clock()

    def _due(self) -> float:
        gap = min(_URGENT_MIN_GAP, self._interval) if self._urgent else self._interval
        return max(self._last_post_at + gap, self._blocked_until)

    async def _wait(self, timeout: float | None) -> None:
        self._wake.clear()
        if timeout is None:
            await self._wake.wait()
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _post_once(self, *, deadline: Deadline | None) -> Result | None:
        """Post the newest body once; None when there was nothing to post."""
        self._dirty = False
        body = self.current_body()
        if body is None or body == self._last_accepted or body == self._rejected:
            if self._pending_since is not None and not self._dirty:
                self._pending_since = None
                self._metrics.snapshot_pending_since.set(0)
            return None
        timeout = None
        if deadline is not None:
            timeout = deadline.remaining()
            if timeout <= 0:
                raise TimeoutError
        self._last_post_at = self._clock()
        result = await self._client.post_log_snapshot(self._task_id, body, timeout=timeout)
        status = "none" if result.status is None else str(result.status)
        self._metrics.snapshot_posts.labels(result=result.outcome.value, status=status).inc()
        self._handle(result, body)
        return result

    def _handle(self, result: Result, body: bytes) -> None:
        fields = {
            "bytes": len(body),
            "status": result.status,
            "latency_ms": round(result.latency_ms, 1),
            "attempt": self._retry.failures + 1,
        }
        if result.outcome is Outcome.OK:
            log.info("snapshot.posted", **fields)
            self._accepted(body)
            return
        if result.outcome is Outcome.REJECTED:
            # Resending the same bytes would be refused the same way; wait for a change.
            log.error("snapshot.rejected", detail=result.detail, **fields)
            self._rejected = body
            self._retry.succeeded()
            return
        self._mark_dirty()
        delay = self._retry.failed(result)
        if result.outcome is Outcome.RETRY:
            log.warning(
                "snapshot.retry", detail=result.detail, retry_in_s=round(delay, 2), **fields
            )
            self._block(delay, None)
        elif result.outcome is Outcome.NOT_FOUND:
            if not self._not_found_logged:
                log.error(
                    "snapshot.task_not_found",
                    detail=result.detail,
                    hint="the task does not exist in this workspace, or Coder is too old "
                    "for log snapshots",
                    retry_in_s=round(delay, 1),
                    **fields,
                )
                self._not_found_logged = True
            self._block(delay, "not_found")
        else:
            log.error(
                "snapshot.unauthorized",
                detail=result.detail,
                hint="the agent token was rejected; it is re-read from CODER_AGENT_TOKEN_FILE "
                "when that is set",
                retry_in_s=round(delay, 1),
                **fields,
            )
            self._block(delay, "unauthorized")
        self._save_spool(body)

    def _block(self, delay: float, reason: str | None) -> None:
        self._blocked_until = self._clock() + delay
        self._blocked_reason = reason

    def _accepted(self, body: bytes) -> None:
        self._last_accepted = body
        self._retry.succeeded()
        self._blocked_until = float("-inf")
        self._blocked_reason = None
        self._not_found_logged = False
        self._metrics.snapshot_bytes.set(len(body))
        self._metrics.snapshot_last_success.set(self._wall_clock())
        if self._spooled is not None:
            self._spooled = None
            if self._spool is not None:
                self._spool.clear()
        if not self._dirty:
            self._pending_since = None
            self._metrics.snapshot_pending_since.set(0)

    def _save_spool(self, body: bytes) -> None:
        if self._spool is None or body == self._spooled:
            return
        if self._spool.save(body):
            self._spooled = body
            self._metrics.spool_writes.inc()

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self._pending_since is None:
            self._pending_since = self._wall_clock()
            self._metrics.snapshot_pending_since.set(self._pending_since)

    # --- stop -----------------------------------------------------------------------------

    async def flush(self, timeout: float) -> bool:
        """Deliver the newest body within `timeout`; spool it if that fails. True when the
        server holds the newest conversation (or there is none). Safe to call twice."""
        deadline = Deadline(timeout, clock=self._clock)
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(deadline.remaining()):
                await self._post_lock.acquire()
        except TimeoutError:
            return self._give_up()
        except asyncio.CancelledError:
            self._give_up()
            raise
        try:
            self._blocked_until = float("-inf")
            self._dirty = True
            while True:
                result = await self._post_once(deadline=deadline)
                if result is None or result.outcome is Outcome.OK:
                    return True
                if result.outcome is Outcome.REJECTED:
                    return False
                changed = (
                    result.outcome is Outcome.UNAUTHORIZED and await self._client.reload_token()
                )
                # At stop the transient schedule serves every failure: minutes-long 404 or
                # 401 back-offs would only waste the budget the spool is waiting for.
                delay = 0.0 if changed else self._retry.transient.delay(self._retry.failures - 1)
                if result.outcome is Outcome.RETRY and result.retry_after is not None:
                    delay = result.retry_after
                # Give up when the next wait would pass the deadline, not after it.
                if delay >= deadline.remaining():
                    return self._give_up()
                await asyncio.sleep(delay)
        except TimeoutError:
            return self._give_up()
        except asyncio.CancelledError:
            # A second signal cut the flush short: the body must still reach the disk.
            self._give_up()
            raise
        finally:
            self._post_lock.release()

    def _give_up(self) -> bool:
        body = self.current_body()
        if body is None or body == self._last_accepted:
            return True
        log.warning("snapshot.flush_incomplete", bytes=len(body))
        self._save_spool(body)
        return False

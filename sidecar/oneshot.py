"""`snapshot`: read the conversation once, post it once, exit — a shutdown hook.

The conversation comes from agentapi, else its state file, else the spool. A stop signal
(the hook's own time running out) ends the attempt early; what was read is spooled for
the daemon's next start, never lost to a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable

import aiohttp
import structlog

from sidecar.agentapi.client import AgentapiClient, AgentapiError
from sidecar.agentapi.statefile import StateFileSource
from sidecar.coder.session import make_session
from sidecar.mirror import Mirror
from sidecar.models import Conversation
from sidecar.pipeline import Clients, Clocks, Options, build_pipeline
from sidecar.runtime.metrics import InvalidCounter, Metrics
from sidecar.runtime.signals import stop_signals
from sidecar.settings import Settings
from sidecar.slot import FlushOutcome
from sidecar.spool import NOTHING_KEPT, open_spool
from sidecar.uploader import Uploader

log = structlog.get_logger(__name__)


async def snapshot_once(
    settings: Settings,
    *,
    wait_for_save: Callable[[], None] | None = None,
    interruptible: bool = True,
) -> int:
    """0 when the server holds the newest conversation (or there is nothing to deliver);
    1 otherwise, with the body kept in the spool for the daemon's next start.
    `wait_for_save` (blocking; from `stop`) waits for the state file agentapi was asked to
    rewrite: called only when agentapi does not answer and that file is the source.
    `interruptible`: a stop signal ends the attempt early (False: `stop`, which holds
    those signals itself and finishes its bounded steps)."""
    if settings.coder_task_id is None and not settings.sidecar_dry_run:
        # The same template serves workspaces that are not tasks: nothing to do there.
        log.info("oneshot.skipped", reason="CODER_TASK_ID is not set: this workspace is no task")
        return 0
    async with make_session(settings) as session:
        metrics = Metrics()
        uploader, mirror, agentapi = _uploader(settings, session, metrics)
        invalid = InvalidCounter(metrics.invalid)
        work = asyncio.create_task(
            _read_and_post(settings, agentapi, uploader, mirror, invalid, wait_for_save)
        )

        def interrupted(signame: str) -> None:
            log.warning("oneshot.interrupted", signal=signame)
            work.cancel()

        with stop_signals(interrupted) if interruptible else contextlib.nullcontext():
            try:
                outcome = await work
            except asyncio.CancelledError:
                if not work.cancelled():
                    raise
                # Cut short: whatever was read is kept in the spool.
                outcome = uploader.conclude()
    # Cut short before anything was read is no success either.
    ok = outcome.delivered and not (work.cancelled() and outcome is FlushOutcome.NOTHING)
    log.info("oneshot.done", snapshot=outcome.value, delivered=ok)
    return 0 if ok else 1


def _uploader(
    settings: Settings, session: aiohttp.ClientSession, metrics: Metrics
) -> tuple[Uploader, Mirror, AgentapiClient]:
    clients = Clients.for_run(settings, session)
    assert clients.agentapi is not None
    options = Options.from_settings(settings)
    assert options.task_id is not None
    spool, kept = (
        # A printed snapshot is no delivery: nothing of it may be kept.
        (None, NOTHING_KEPT)
        if settings.sidecar_dry_run
        else open_spool(settings.state_dir, options.task_id, on_write=metrics.spool_writes.inc)
    )
    # The conversation is read once, by hand: no stream, and no statuses to relay.
    pipeline = build_pipeline(
        dataclasses.replace(clients, agentapi=None),
        Clocks(),
        dataclasses.replace(options, slug=None),
        metrics=metrics,
        spool=spool,
        kept=kept,
    )
    assert pipeline.uploader is not None
    return pipeline.uploader, pipeline.mirror, clients.agentapi


async def _read_and_post(
    settings: Settings,
    agentapi: AgentapiClient,
    uploader: Uploader,
    mirror: Mirror,
    invalid: InvalidCounter,
    wait_for_save: Callable[[], None] | None,
) -> FlushOutcome:
    try:
        messages, bad = await agentapi.messages()
        for item in bad:
            invalid(item, origin="messages")
        mirror.apply(Conversation(tuple(messages), None))
        log.info("oneshot.read", origin="agentapi", messages=len(messages))
    except AgentapiError as exc:
        if exc.host_refused:
            log.error(
                "oneshot.agentapi_refused",
                error=str(exc),
                hint="CODER_MCP_AI_AGENTAPI_URL must name a host agentapi allows (localhost, "
                "127.0.0.1, ::1, or one in its --allowed-hosts)",
            )
        else:
            log.warning("oneshot.agentapi_unreachable", error=str(exc), busy=exc.busy)
        if settings.agentapi_state_file is not None:
            if wait_for_save is not None:
                await asyncio.to_thread(wait_for_save)
            source = StateFileSource(
                path=settings.agentapi_state_file, on_read=lambda _r: None, invalid=invalid
            )
            read = await asyncio.to_thread(source.read)
            if read is not None:
                mirror.apply(read.conversation)
                log.info(
                    "oneshot.read", origin="statefile", messages=len(read.conversation.messages)
                )
    if uploader.current_body() is None:
        log.info("oneshot.nothing_to_post")
        return FlushOutcome.NOTHING
    return await uploader.flush(settings.sidecar_shutdown_timeout)

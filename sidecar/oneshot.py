"""`snapshot`: read the conversation once, post it once, exit — a shutdown hook."""

from __future__ import annotations

import structlog

from sidecar.agentapi.client import AgentapiClient, AgentapiError
from sidecar.agentapi.statefile import StateFileSource
from sidecar.coder.client import CoderClient
from sidecar.coder.session import make_session, make_token
from sidecar.config import Settings
from sidecar.mirror import Mirror
from sidecar.models import Conversation
from sidecar.runtime.metrics import InvalidCounter, Metrics
from sidecar.spool import Spool
from sidecar.uploader import Uploader

log = structlog.get_logger(__name__)


async def snapshot_once(settings: Settings) -> int:
    """0 when the server holds the newest conversation (or there is none); 1 otherwise,
    with the body kept in the spool for the daemon's next start."""
    assert settings.coder_task_id is not None
    metrics = Metrics()
    mirror = Mirror(settings.sidecar_snapshot_max_messages)
    async with make_session() as session:
        agentapi = AgentapiClient(session=session, base_url=settings.coder_mcp_ai_agentapi_url)
        invalid = InvalidCounter(metrics.invalid)
        try:
            messages, bad = await agentapi.messages()
            for item in bad:
                invalid(item, origin="messages")
            mirror.apply(Conversation(tuple(messages), None))
            log.info("oneshot.read", origin="agentapi", messages=len(messages))
        except AgentapiError as exc:
            log.warning("oneshot.agentapi_unreachable", error=str(exc))
            if settings.agentapi_state_file is not None:
                read = StateFileSource(
                    path=settings.agentapi_state_file, on_read=lambda _r: None, invalid=invalid
                ).read()
                if read is not None:
                    mirror.apply(read.conversation)
                    log.info(
                        "oneshot.read",
                        origin="statefile",
                        messages=len(read.conversation.messages),
                    )
        spool = Spool(settings.state_dir, settings.coder_task_id)
        uploader = Uploader(
            client=CoderClient(
                session=session,
                base_url=settings.coder_agent_url,
                token=make_token(settings),
                timeout=settings.sidecar_http_timeout,
            ),
            task_id=settings.coder_task_id,
            mirror=mirror,
            metrics=metrics,
            interval=settings.sidecar_snapshot_interval,
            spool=spool,
            recovered=spool.load(),
            max_bytes=settings.sidecar_snapshot_max_bytes,
        )
        if uploader.current_body() is None:
            log.info("oneshot.nothing_to_post")
            return 0
        outcome = await uploader.flush(settings.sidecar_shutdown_timeout)
    log.info("oneshot.done", snapshot=outcome.value, delivered=outcome.delivered)
    return 0 if outcome.delivered else 1

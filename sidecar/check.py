"""`check`: validate the configuration, probe agentapi and Coder, print a readable report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from sidecar.agentapi.client import AgentapiClient, AgentapiError
from sidecar.coder.client import CoderClient, Outcome, Result
from sidecar.coder.session import make_session, make_token
from sidecar.config import Settings
from sidecar.models import AgentStatus, AppState


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    ok: bool | None  # None: not run (nothing to check)
    detail: str


def _describe(result: Result) -> str:
    status = f"HTTP {result.status}" if result.status is not None else "no answer"
    return f"{status}: {result.detail}" if result.detail else status


async def run_check(settings: Settings, out: TextIO) -> int:
    token = make_token(settings)
    probes: list[Probe] = []
    agent_status: AgentStatus | None = None
    async with make_session() as session:
        agentapi = AgentapiClient(session=session, base_url=settings.coder_mcp_ai_agentapi_url)
        try:
            agent_status = await agentapi.status()
            messages, invalid = await agentapi.messages()
            extra = f", {len(invalid)} invalid" if invalid else ""
            probes.append(
                Probe("agentapi", True, f"status {agent_status}, {len(messages)} messages{extra}")
            )
        except AgentapiError as exc:
            probes.append(Probe("agentapi", False, str(exc)))
        if settings.agentapi_state_file is not None:
            path = settings.agentapi_state_file
            probes.append(
                Probe(
                    "state file",
                    path.is_file(),
                    str(path) + ("" if path.is_file() else " does not exist (yet)"),
                )
            )

        coder = CoderClient(
            session=session,
            base_url=settings.coder_agent_url,
            token=token,
            timeout=settings.sidecar_http_timeout,
        )
        auth = await coder.probe_token()
        if auth.ok:
            probes.append(Probe("coder token", True, "accepted"))
        elif auth.outcome is Outcome.UNAUTHORIZED:
            probes.append(Probe("coder token", False, "rejected (" + _describe(auth) + ")"))
        elif auth.outcome is Outcome.RETRY:
            probes.append(Probe("coder", False, "unreachable (" + _describe(auth) + ")"))
        else:
            probes.append(Probe("coder token", None, "not verifiable (" + _describe(auth) + ")"))

        if settings.coder_task_id is None:
            probes.append(Probe("log snapshots", None, "off: CODER_TASK_ID is not set"))
        else:
            # An empty object is refused with 400 by an endpoint that knows the task, and
            # stores nothing: a probe with no side effect.
            result = await coder.post_log_snapshot(settings.coder_task_id, b"{}")
            if result.outcome is Outcome.REJECTED:
                probes.append(Probe("log snapshots", True, "endpoint reachable, task found"))
            elif result.outcome is Outcome.NOT_FOUND:
                probes.append(
                    Probe(
                        "log snapshots",
                        False,
                        "task not found in this workspace, or Coder too old for snapshots",
                    )
                )
            else:
                probes.append(Probe("log snapshots", False, _describe(result)))

        slug = settings.coder_mcp_app_status_slug
        if slug is None:
            probes.append(Probe("status relay", None, "off: CODER_MCP_APP_STATUS_SLUG is not set"))
        elif agent_status is None:
            probes.append(Probe("status relay", None, "not probed: agentapi is unreachable"))
        else:
            # Coder validates the slug only by accepting a report, so the probe sends the
            # agent's true current state: what the relay would report anyway.
            state = AppState.WORKING if agent_status is AgentStatus.RUNNING else AppState.IDLE
            result = await coder.patch_app_status(
                slug=slug,
                state=state,
                message="checked by coder-task-sidecar",
                uri=settings.sidecar_relay_uri,
            )
            probes.append(
                Probe(
                    "status relay",
                    result.ok,
                    f"slug {slug!r} accepted" if result.ok else _describe(result),
                )
            )

    _report(settings, probes, out)
    return 1 if any(p.ok is False for p in probes) else 0


def _report(settings: Settings, probes: list[Probe], out: TextIO) -> None:
    token_from = (
        "CODER_AGENT_TOKEN"
        if settings.coder_agent_token is not None
        else f"CODER_AGENT_TOKEN_FILE ({settings.coder_agent_token_file})"
    )
    rows = [
        ("CODER_AGENT_URL", settings.coder_agent_url),
        ("token", f"******** from {token_from}"),
        ("CODER_TASK_ID", str(settings.coder_task_id or "(unset: snapshots off)")),
        ("CODER_MCP_APP_STATUS_SLUG", settings.coder_mcp_app_status_slug or "(unset: relay off)"),
        ("CODER_MCP_AI_AGENTAPI_URL", settings.coder_mcp_ai_agentapi_url),
        ("AGENTAPI_STATE_FILE", str(settings.agentapi_state_file or "(unset)")),
        ("SIDECAR_SNAPSHOT_INTERVAL", f"{settings.sidecar_snapshot_interval:g}s"),
        ("SIDECAR_SNAPSHOT_MAX_MESSAGES", str(settings.sidecar_snapshot_max_messages)),
        ("SIDECAR_STATE_DIR", str(settings.state_dir)),
        ("SIDECAR_SHUTDOWN_TIMEOUT", f"{settings.sidecar_shutdown_timeout:g}s"),
        ("SIDECAR_HTTP_ADDR", settings.sidecar_http_addr or "(unset: no listener)"),
    ]
    width = max(len(name) for name, _ in rows)
    print("configuration", file=out)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=out)
    print("probes", file=out)
    marks = {True: "ok  ", False: "FAIL", None: "--  "}
    for probe in probes:
        print(f"  [{marks[probe.ok]}] {probe.name}: {probe.detail}", file=out)
    failed = sum(p.ok is False for p in probes)
    print(f"result: {'ok' if not failed else f'{failed} probe(s) failed'}", file=out)

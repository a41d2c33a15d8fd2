"""`check`: validate the configuration, probe agentapi and Coder, print a readable report.

Every line says where the workspace stands and, when something is wrong, what to do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, TextIO

import aiohttp

from sidecar.agentapi.client import AgentapiClient, AgentapiError
from sidecar.coder.client import CoderClient, Outcome, Result
from sidecar.coder.session import describe_proxy, make_session, make_token
from sidecar.models import AgentStatus, AppState
from sidecar.runtime.lock import running_daemon
from sidecar.settings import Settings
from sidecar.spool import writable_problem

_REDIRECT_FIX: Final = "set CODER_AGENT_URL to the URL it points to (a redirect is never followed)"
_SNAPSHOT_VERSIONS: Final = "v2.30 to v2.35, the v2.34 ESR, or v2.36 with its Tasks API turned on"


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    ok: bool | None  # None: nothing to check, or only information
    detail: str
    fix: str = ""  # what to do, when it failed


def _describe(result: Result) -> str:
    status = f"HTTP {result.status}" if result.status is not None else "no answer"
    return f"{status}: {result.detail}" if result.detail else status


def _coder_trouble(name: str, result: Result) -> Probe | None:
    """The failures every Coder probe shares; None for the probe's own outcomes."""
    if result.outcome is Outcome.REDIRECT:
        return Probe(name, False, f"redirected to {result.location}", _REDIRECT_FIX)
    if result.outcome is Outcome.RETRY:
        return Probe(
            name,
            False,
            f"unreachable ({_describe(result)})",
            "check CODER_AGENT_URL and the proxy settings; is Coder up?",
        )
    if result.outcome is Outcome.UNAUTHORIZED:
        return Probe(
            name,
            False,
            f"the token was rejected ({_describe(result)})",
            "the agent token of the current workspace build must be in CODER_AGENT_TOKEN or "
            "CODER_AGENT_TOKEN_FILE",
        )
    return None


async def run_check(settings: Settings, out: TextIO) -> int:
    probes: list[Probe] = []
    async with make_session(settings) as session:
        agent_status = await _probe_agentapi(settings, session, probes)
        coder = CoderClient(
            session=session,
            base_url=settings.coder_agent_url,
            token=make_token(settings),
            timeout=settings.sidecar_http_timeout,
        )
        version = await coder.server_version()
        probes.append(
            Probe("coder version", None, version or "unknown (GET /api/v2/buildinfo failed)")
        )
        probes.append(Probe("proxy for coder", None, describe_proxy(settings) or "none"))
        auth = await coder.probe_token()
        probes.append(_coder_trouble("coder token", auth) or Probe("coder token", True, "accepted"))
        probes.append(await _probe_snapshots(settings, coder, version))
        probes.append(await _probe_relay(settings, coder, agent_status))
    probes.extend(await asyncio.to_thread(_local_probes, settings))
    _report(settings, probes, out)
    return 1 if any(p.ok is False for p in probes) else 0


async def _probe_agentapi(
    settings: Settings, session: aiohttp.ClientSession, probes: list[Probe]
) -> AgentStatus | None:
    agentapi = AgentapiClient(session=session, base_url=settings.coder_mcp_ai_agentapi_url)
    status = None
    try:
        status = await agentapi.status()
        messages, invalid = await agentapi.messages()
        extra = f", {len(invalid)} invalid" if invalid else ""
        probes.append(Probe("agentapi", True, f"status {status}, {len(messages)} messages{extra}"))
    except AgentapiError as exc:
        probes.append(
            Probe(
                "agentapi",
                False,
                str(exc),
                "is agentapi running? CODER_MCP_AI_AGENTAPI_URL must be its address",
            )
        )
    return status


async def _probe_snapshots(settings: Settings, coder: CoderClient, version: str | None) -> Probe:
    name = "log snapshots"
    if settings.coder_task_id is None:
        return Probe(name, None, "off: CODER_TASK_ID is not set (this workspace is no task)")
    # Coder checks the token, then the route, the task id, the query, the task, and only
    # then the body: an empty object is refused with 400 by an endpoint that knows the
    # task, and stores nothing. A probe with no side effect.
    result = await coder.post_log_snapshot(settings.coder_task_id, b"{}")
    if result.outcome is Outcome.REJECTED:
        return Probe(name, True, f"the Tasks API is there and knows task {settings.coder_task_id}")
    if result.outcome is Outcome.NO_ROUTE:
        return Probe(
            name,
            False,
            f"Coder {version or '(version unknown)'} has no Tasks API: log snapshots are off; "
            "statuses are still relayed",
            f"log snapshots need Coder {_SNAPSHOT_VERSIONS}",
        )
    if result.outcome is Outcome.NOT_FOUND:
        return Probe(
            name,
            False,
            f"Coder does not know task {settings.coder_task_id} in this workspace",
            "CODER_TASK_ID must be this workspace's task (templates fill it from data.coder_task)",
        )
    return _coder_trouble(name, result) or Probe(name, False, _describe(result))


async def _probe_relay(
    settings: Settings, coder: CoderClient, agent_status: AgentStatus | None
) -> Probe:
    name = "status relay"
    slug = settings.coder_mcp_app_status_slug
    if slug is None:
        return Probe(name, None, "off: CODER_MCP_APP_STATUS_SLUG is not set")
    if agent_status is None:
        return Probe(name, None, "not probed: agentapi is unreachable")
    # Coder validates the slug only by accepting a report, so the probe sends the agent's
    # true current state: what the relay would report anyway.
    state = AppState.WORKING if agent_status is AgentStatus.RUNNING else AppState.IDLE
    result = await coder.patch_app_status(
        slug=slug,
        state=state,
        message="checked by coder-task-sidecar",
        uri=settings.sidecar_relay_uri,
    )
    if result.ok:
        return Probe(name, True, f"statuses are accepted for slug {slug!r}")
    if result.outcome is Outcome.REJECTED:
        return Probe(
            name,
            False,
            f"slug {slug!r} refused ({_describe(result)})",
            "CODER_MCP_APP_STATUS_SLUG must be the slug of a coder_app on this agent",
        )
    return _coder_trouble(name, result) or Probe(name, False, _describe(result))


def _local_probes(settings: Settings) -> list[Probe]:
    probes = []
    if settings.agentapi_state_file is not None:
        path = settings.agentapi_state_file
        probes.append(
            Probe("state file", None, f"{path}" + ("" if path.is_file() else " (not there yet)"))
        )
    problem = writable_problem(settings.state_dir)
    probes.append(
        Probe("state dir", True, f"{settings.state_dir} is writable")
        if problem is None
        else Probe(
            "state dir",
            False,
            f"{settings.state_dir}: {problem}",
            "set SIDECAR_STATE_DIR to a writable directory, or an undelivered snapshot is lost",
        )
    )
    pid = running_daemon(settings.state_dir)
    probes.append(
        Probe("daemon", None, f"running, pid {pid}" if pid is not None else "not running here")
    )
    return probes


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
        if probe.ok is False and probe.fix:
            print(f"         → {probe.fix}", file=out)
    failed = sum(p.ok is False for p in probes)
    print(f"result: {'ok' if not failed else f'{failed} probe(s) failed'}", file=out)

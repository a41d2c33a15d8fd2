"""`check`: validate the configuration, probe agentapi and Coder, print a readable report.

Every line says where the workspace stands and, when something is wrong, what to do.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Final, TextIO

from sidecar.agentapi.client import AgentapiError
from sidecar.coder.client import CoderClient, Result
from sidecar.coder.outcomes import Outcome, Sink, words
from sidecar.coder.session import describe_proxy, make_session, url_problems
from sidecar.dryrun import DRY_RUN_TASK
from sidecar.models import AgentStatus, AppState
from sidecar.pipeline import Clients
from sidecar.runtime.lock import running_daemon
from sidecar.settings import Settings
from sidecar.spool import writable_problem

_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    ok: bool | None  # None: nothing to check, or only information
    detail: str
    fix: str = ""  # what to do, when it failed
    warn: bool = False  # information that needs attention (not a failure)


def printable(text: str) -> str:
    """`text` with every control character (C0, DEL, C1; line breaks and ESC among them)
    written as an escape, so that it stays on its line and cannot drive the terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _describe(result: Result) -> str:
    status = f"HTTP {result.status}" if result.status is not None else "no answer"
    return f"{status}: {result.detail}" if result.detail else status


def _verdict(name: str, sink: Sink, result: Result, **context: object) -> Probe:
    """What the outcome table says of `result`, in `check`'s words."""
    said = words(sink, result.outcome)
    detail = said.check.format(answer=_describe(result), location=result.location, **context)
    return Probe(name, result.ok, detail, "" if result.ok else said.hint)


async def run_check(settings: Settings, out: TextIO) -> int:
    probes: list[Probe] = []
    async with make_session(settings) as session:
        clients = Clients.for_run(settings, session)
        agent_status = await _probe_agentapi(clients, probes)
        if settings.sidecar_dry_run:
            probes.append(Probe("coder", None, "not probed: SIDECAR_DRY_RUN is on"))
        else:
            await _probe_coder(settings, clients, agent_status, probes)
    probes.extend(await asyncio.to_thread(_local_probes, settings))
    _report(settings, probes, out)
    return 1 if any(p.ok is False for p in probes) else 0


async def _probe_coder(
    settings: Settings, clients: Clients, agent_status: AgentStatus | None, probes: list[Probe]
) -> None:
    coder = clients.coder
    assert isinstance(coder, CoderClient)
    version = await coder.server_version()
    probes.append(Probe("coder version", None, version or "unknown (GET /api/v2/buildinfo failed)"))
    probes.append(Probe("proxy for coder", None, describe_proxy(settings) or "none"))
    probes.extend(
        Probe("coder url", None, note, warn=True)
        for _event, note in url_problems(settings.coder_agent_url)
    )
    probes.append(_verdict("coder token", Sink.TOKEN, await coder.probe_token()))
    probes.append(await _probe_snapshots(settings, coder, version))
    probes.append(await _probe_relay(settings, coder, agent_status))


async def _probe_agentapi(clients: Clients, probes: list[Probe]) -> AgentStatus | None:
    agentapi = clients.agentapi
    assert agentapi is not None
    status = None
    try:
        status = await agentapi.status()
        messages, invalid = await agentapi.messages()
        extra = f", {len(invalid)} invalid" if invalid else ""
        probes.append(Probe("agentapi", True, f"status {status}, {len(messages)} messages{extra}"))
    except AgentapiError as exc:
        probes.append(_agentapi_trouble(exc))
    return status


def _agentapi_trouble(exc: AgentapiError) -> Probe:
    if exc.busy:
        # agentapi answers /status and /messages only once a send has let go of its lock.
        return Probe("agentapi", None, f"busy (a message is being sent): {exc}")
    if exc.host_refused:
        return Probe(
            "agentapi",
            False,
            str(exc),
            "CODER_MCP_AI_AGENTAPI_URL must name a host agentapi allows (by default "
            "localhost, 127.0.0.1 or ::1; agentapi's --allowed-hosts adds others)",
        )
    return Probe(
        "agentapi",
        False,
        str(exc),
        "is agentapi running? CODER_MCP_AI_AGENTAPI_URL must be its address",
    )


async def _probe_snapshots(settings: Settings, coder: CoderClient, version: str | None) -> Probe:
    name = "log snapshots"
    if settings.coder_task_id is None:
        return Probe(name, None, "off: CODER_TASK_ID is not set (this workspace is no task)")
    # Coder checks the token, then the route, the task id, the query, the task, and only
    # then the body: an empty object is refused with 400 by an endpoint that knows the
    # task, and stores nothing. A probe with no side effect, whose refusal is success.
    result = await coder.post_log_snapshot(settings.coder_task_id, b"{}")
    if result.outcome is Outcome.REJECTED:
        return Probe(name, True, f"the Tasks API is there and knows task {settings.coder_task_id}")
    return _verdict(
        name,
        Sink.SNAPSHOT,
        result,
        task=settings.coder_task_id,
        version=version or "(version unknown)",
    )


async def _probe_relay(
    settings: Settings, coder: CoderClient, agent_status: AgentStatus | None
) -> Probe:
    name = "status relay"
    slug = settings.coder_mcp_app_status_slug
    if slug is None:
        return Probe(name, None, "off: CODER_MCP_APP_STATUS_SLUG is not set")
    if agent_status is None:
        return Probe(name, None, "not probed: agentapi's status is not known")
    # Coder validates the slug only by accepting a report, so the probe sends the agent's
    # true current state: what the relay would report anyway.
    state = AppState.WORKING if agent_status is AgentStatus.RUNNING else AppState.IDLE
    result = await coder.patch_app_status(
        slug=slug,
        state=state,
        message="checked by coder-task-sidecar",
        uri=settings.sidecar_relay_uri,
    )
    return _verdict(name, Sink.STATUS, result, slug=slug)


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


def _unset_task(dry_run: bool) -> str:
    return f"(unset: {DRY_RUN_TASK} in a dry run)" if dry_run else "(unset: snapshots off)"


def _token_origin(settings: Settings) -> str:
    if settings.coder_agent_token is not None:
        return "******** from CODER_AGENT_TOKEN"
    if settings.coder_agent_token_file is not None:
        return f"******** from CODER_AGENT_TOKEN_FILE ({settings.coder_agent_token_file})"
    return "(unset: not needed in a dry run)"


def _report(settings: Settings, probes: list[Probe], out: TextIO) -> None:
    dry_run = settings.sidecar_dry_run
    rows = [
        ("CODER_AGENT_URL", "(not used in a dry run)" if dry_run else settings.coder_agent_url),
        ("token", _token_origin(settings)),
        ("CODER_TASK_ID", str(settings.coder_task_id or _unset_task(dry_run))),
        ("CODER_MCP_APP_STATUS_SLUG", settings.coder_mcp_app_status_slug or "(unset: relay off)"),
        ("CODER_MCP_AI_AGENTAPI_URL", settings.coder_mcp_ai_agentapi_url),
        ("AGENTAPI_STATE_FILE", str(settings.agentapi_state_file or "(unset)")),
        ("SIDECAR_SNAPSHOT_INTERVAL", f"{settings.sidecar_snapshot_interval:g}s"),
        ("SIDECAR_SNAPSHOT_MAX_MESSAGES", str(settings.sidecar_snapshot_max_messages)),
        ("SIDECAR_STATE_DIR", str(settings.state_dir)),
        ("SIDECAR_SHUTDOWN_TIMEOUT", f"{settings.sidecar_shutdown_timeout:g}s"),
        ("SIDECAR_HTTP_ADDR", settings.sidecar_http_addr or "(unset: no listener)"),
    ]
    if dry_run:
        rows.append(("SIDECAR_DRY_RUN", "on: nothing is sent to Coder"))
    width = max(len(name) for name, _ in rows)
    print("configuration", file=out)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=out)
    print("probes", file=out)
    marks = {True: "ok  ", False: "FAIL", None: "--  "}
    for probe in probes:
        mark = "WARN" if probe.warn else marks[probe.ok]
        # What a server said is shown, never obeyed: no escape sequence or forged line.
        print(f"  [{mark}] {probe.name}: {printable(probe.detail)}", file=out)
        if probe.ok is False and probe.fix:
            print(f"         → {printable(probe.fix)}", file=out)
    failed = sum(p.ok is False for p in probes)
    print(f"result: {'ok' if not failed else f'{failed} probe(s) failed'}", file=out)

"""What each of Coder's answers means: one frozen table that every decision reads.

Pure (the standard library only). `classify` turns an HTTP answer into an `Outcome`; `RULES`
says, for each outcome, what follows (accepted, refused for good, retried), on which
back-off schedule, whether a stop's budget is worth spending on it, how it is logged, whether
it holds readiness back, and what `check` says about it. `words` gives the sink-specific
wording (log event names are stable; hints say what a person should check). A new status
(a 413, say) is one row here: the retry policy (sidecar.coder.retry), the delivery loop
(sidecar.coder.delivery), the sinks, `check` and the readiness probe all read this table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "JSON_OK",
    "NO_TASKS_API_HINT",
    "RESOURCE_NOT_FOUND",
    "ROUTE_NOT_FOUND",
    "RULES",
    "SNAPSHOT_STORED",
    "Expect",
    "Level",
    "Outcome",
    "Rule",
    "Schedule",
    "Sink",
    "Step",
    "Words",
    "classify",
    "no_tasks_api",
    "words",
]


class Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # no answer, a timeout, 408, 429 or 5xx: seconds may heal it
    REJECTED = "rejected"  # 400 and the like: this body or report is refused for good
    NOT_FOUND = "not_found"  # coderd's "Resource not found": the task is unknown here
    NO_ROUTE = "no_route"  # any other 404: this server has no such endpoint
    UNAUTHORIZED = "unauthorized"  # 401/403: the agent token is not (or no longer) valid
    REDIRECT = "redirect"  # Coder is not at CODER_AGENT_URL; never followed
    NOT_CODER = "not_coder"  # a success no Coder gives (a login page answering 200)


class Step(enum.Enum):
    """What an outcome means for the item that was sent."""

    ACCEPTED = "accepted"
    REFUSED = "refused"  # final for this item: send it again and it is refused again
    RETRY = "retry"  # send the newest item again once its back-off has passed


class Schedule(enum.Enum):
    """Which back-off a failure waits on (sidecar.coder.retry holds the figures)."""

    NONE = "none"  # nothing to wait for: the outcome is final
    TRANSIENT = "transient"  # seconds, or what Retry-After says
    NOT_FOUND = "not_found"  # minutes: a task unknown to the server does not heal quickly
    CONFIG = "config"  # credentials or configuration must change: slow
    NO_ROUTE = "no_route"  # about an hour: a server gains an endpoint only by an upgrade


class Level(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Words:
    """How an outcome is told. `event` follows the sink's prefix in the log (None: the sink
    tells it itself); `hint` says what a person should check; `check` is what the `check`
    command says, a template over {answer}, {location}, {task}, {slug} and {version}."""

    event: str | None
    hint: str = ""
    check: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    step: Step
    schedule: Schedule
    level: Level
    words: Words
    # Logged once per run of failures: repeating it at every back-off would bury the
    # first line, which says what to do.
    once: bool = False
    # Seconds cannot heal it: at stop, the budget the spool waits for is not spent on it.
    lasting: bool = False
    # 401/403: the token file is re-read first; a new token retries at once.
    reload_token: bool = False
    # Holds readiness back while its back-off lasts, saying this.
    readiness: str | None = None
    # The server has no such endpoint at all (a Coder without Tasks, for snapshots).
    endpoint_missing: bool = False


_CHECK_URL: Final = "check CODER_AGENT_URL and the proxy settings; is Coder up?"
_CREDENTIALS_HINT: Final = (
    "the agent token was rejected; it is re-read from CODER_AGENT_TOKEN_FILE when that is set"
)
_REDIRECT_HINT: Final = (
    "set CODER_AGENT_URL to the URL it points to: a redirect is never followed (the agent "
    "token must not go elsewhere)"
)
_NOT_CODER_HINT: Final = (
    "CODER_AGENT_URL answers, but not as Coder does (a login page or a proxy in front of "
    "Coder?): set it to the URL the workspace agent uses"
)

RULES: Final[Mapping[Outcome, Rule]] = MappingProxyType(
    {
        Outcome.OK: Rule(Step.ACCEPTED, Schedule.NONE, Level.INFO, Words("accepted", check="ok")),
        Outcome.RETRY: Rule(
            Step.RETRY,
            Schedule.TRANSIENT,
            Level.WARNING,
            Words("retry", hint=_CHECK_URL, check="unreachable ({answer})"),
        ),
        Outcome.REJECTED: Rule(
            Step.REFUSED, Schedule.NONE, Level.ERROR, Words("rejected", check="refused ({answer})")
        ),
        Outcome.NOT_FOUND: Rule(
            Step.RETRY,
            Schedule.NOT_FOUND,
            Level.ERROR,
            Words("not_found", check="not found ({answer})"),
            once=True,
            readiness="Coder does not know the task (404)",
        ),
        Outcome.NO_ROUTE: Rule(
            Step.RETRY,
            Schedule.NO_ROUTE,
            Level.ERROR,
            Words("no_route", check="no such endpoint on this server ({answer})"),
            once=True,
            lasting=True,
            endpoint_missing=True,
        ),
        Outcome.UNAUTHORIZED: Rule(
            Step.RETRY,
            Schedule.CONFIG,
            Level.ERROR,
            Words(
                "unauthorized",
                hint=_CREDENTIALS_HINT,
                check="the token was rejected ({answer})",
            ),
            reload_token=True,
            readiness="the agent token is rejected (401/403)",
        ),
        Outcome.REDIRECT: Rule(
            Step.RETRY,
            Schedule.CONFIG,
            Level.ERROR,
            Words("redirected", hint=_REDIRECT_HINT, check="redirected to {location}"),
            once=True,
            lasting=True,
            readiness="Coder answers with a redirect",
        ),
        Outcome.NOT_CODER: Rule(
            Step.RETRY,
            Schedule.CONFIG,
            Level.ERROR,
            Words("not_coder", hint=_NOT_CODER_HINT, check="answered {answer}, as no Coder does"),
            once=True,
            lasting=True,
            readiness="CODER_AGENT_URL does not answer as Coder",
        ),
    }
)


# --- the supported versions, said once ------------------------------------------------------

SNAPSHOT_VERSIONS: Final = "v2.30 to v2.35, the v2.34 ESR, or v2.36 with its Tasks API turned on"
NO_TASKS_API_HINT: Final = f"log snapshots need Coder {SNAPSHOT_VERSIONS}"


def no_tasks_api(version: str | None) -> str:
    """What a Coder without the snapshot endpoint means for the sidecar."""
    return (
        f"Coder {version or '(version unknown)'} has no Tasks API: log snapshots are off; "
        "statuses are still relayed"
    )


# --- wording per sink -----------------------------------------------------------------------


class Sink(enum.Enum):
    """Who sent what was answered; the value prefixes its log events."""

    SNAPSHOT = "snapshot"
    STATUS = "relay"
    TOKEN = "token"  # noqa: S105 (`check`'s harmless authenticated GET)


_WORDS: Final[Mapping[tuple[Sink, Outcome], Words]] = MappingProxyType(
    {
        (Sink.SNAPSHOT, Outcome.OK): Words("posted", check="accepted"),
        (Sink.SNAPSHOT, Outcome.NOT_FOUND): Words(
            "task_not_found",
            hint="CODER_TASK_ID must be this workspace's task (templates fill it from "
            "data.coder_task); a task that was deleted, or belongs to an older build, is not "
            "found either",
            check="Coder does not know task {task} in this workspace",
        ),
        # The uploader says it itself, with the server's version.
        (Sink.SNAPSHOT, Outcome.NO_ROUTE): Words(
            None, hint=NO_TASKS_API_HINT, check=no_tasks_api("{version}")
        ),
        (Sink.STATUS, Outcome.OK): Words(
            "patched", check="statuses are accepted for slug {slug!r}"
        ),
        (Sink.STATUS, Outcome.REJECTED): Words(
            "rejected",
            hint="CODER_MCP_APP_STATUS_SLUG must be the slug of a coder_app on this agent",
            check="slug {slug!r} refused ({answer})",
        ),
        (Sink.STATUS, Outcome.NOT_FOUND): Words(
            "not_found",
            hint="Coder does not know the app-status endpoint (too old?) or a proxy is in the way",
            check="the app-status endpoint was not found ({answer})",
        ),
        (Sink.STATUS, Outcome.NO_ROUTE): Words(
            "no_route",
            hint="this Coder has no app-status endpoint, or something in front of it hides it; "
            "checked again hourly",
            check="this Coder has no app-status endpoint ({answer})",
        ),
        (Sink.TOKEN, Outcome.OK): Words(None, check="accepted"),
        (Sink.TOKEN, Outcome.UNAUTHORIZED): Words(
            None,
            hint="the agent token of the current workspace build must be in CODER_AGENT_TOKEN "
            "or CODER_AGENT_TOKEN_FILE",
            check="the token was rejected ({answer})",
        ),
    }
)


def words(sink: Sink, outcome: Outcome) -> Words:
    """How `outcome` is told for `sink`: its own wording where it has one."""
    return _WORDS.get((sink, outcome), RULES[outcome].words)


# --- classification -------------------------------------------------------------------------

# coderd's `message` for a path it has no route for, and the start of the one for a
# resource it does not know (or that belongs to another workspace).
ROUTE_NOT_FOUND: Final = "Route not found."
RESOURCE_NOT_FOUND: Final = "Resource not found"


@dataclass(frozen=True, slots=True)
class Expect:
    """Coder's success answer for one endpoint: anything else with a 2xx status is not
    Coder's (an SSO page answering 200 to everything must not count as delivered)."""

    status: int
    json: bool


SNAPSHOT_STORED: Final = Expect(204, json=False)  # the log snapshot: 204 No Content
JSON_OK: Final = Expect(200, json=True)  # app status, buildinfo, gitsshkey


def classify(
    status: int | None,
    *,
    expect: Expect,
    message: str | None = None,
    json_body: bool = False,
) -> Outcome:
    """The one classifier. `status` None means no HTTP answer (refused, reset, timed out);
    `message` is the `message` field of Coder's error body, which tells a missing route from
    a missing resource; `json_body` says the answer was a JSON object."""
    if status is None or status in (408, 429) or status >= 500:
        return Outcome.RETRY
    if 200 <= status < 300:
        if status == expect.status and (json_body or not expect.json):
            return Outcome.OK
        return Outcome.NOT_CODER
    if 300 <= status < 400:
        return Outcome.REDIRECT
    if status in (401, 403):
        return Outcome.UNAUTHORIZED
    if status == 404:
        # Only coderd's own words name an unknown resource. Any other 404 (a bare one, a
        # proxy's page) says the path is not served: coder/registry's shutdown script
        # reads every 404 as "not supported" too.
        if message is not None and message.startswith(RESOURCE_NOT_FOUND):
            return Outcome.NOT_FOUND
        return Outcome.NO_ROUTE
    return Outcome.REJECTED

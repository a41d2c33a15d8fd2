"""Narrow Coder client tests: what goes on the wire and how answers are classified."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from email.utils import formatdate
from uuid import UUID

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from aioresponses.core import RequestCall
from yarl import URL

from sidecar.coder.client import CoderClient
from sidecar.coder.outcomes import Outcome
from sidecar.coder.token import TokenSource
from sidecar.models import AppState

BASE = "https://coder.example.com"
TASK = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
TOKEN = "5f3b2a1c-0d4e-4f6a-8b7c-9d0e1f2a3b4c"
SNAPSHOT_URL = f"{BASE}/api/v2/workspaceagents/me/tasks/{TASK}/log-snapshot?format=agentapi"
STATUS_URL = f"{BASE}/api/v2/workspaceagents/me/app-status"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def requests(mocked: aioresponses) -> dict[tuple[str, URL], list[RequestCall]]:
    assert mocked.requests is not None
    return mocked.requests


def coder(session: aiohttp.ClientSession, now: float = 1_000_000.0) -> CoderClient:
    return CoderClient(
        session=session,
        base_url=BASE + "/",
        token=TokenSource(value=TOKEN),
        timeout=2.0,
        wall_clock=lambda: now,
    )


async def test_snapshot_request_on_the_wire(session: aiohttp.ClientSession) -> None:
    body = b'{"messages":[]}'
    with aioresponses() as m:
        m.post(SNAPSHOT_URL, status=204)
        result = await coder(session).post_log_snapshot(TASK, body)
        (((method, url), calls),) = requests(m).items()
    assert (method, url) == ("POST", URL(SNAPSHOT_URL))
    kwargs = calls[0].kwargs
    assert kwargs["data"] == body
    assert kwargs["headers"]["Coder-Session-Token"] == TOKEN
    assert kwargs["headers"]["Content-Type"] == "application/json"
    assert kwargs["allow_redirects"] is False
    assert result.ok
    assert result.status == 204
    assert result.detail == ""


async def test_app_status_body(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.patch(STATUS_URL, status=200, payload={})
        result = await coder(session).patch_app_status(
            slug="claude-code", state=AppState.IDLE, message="✓ done", uri=""
        )
        call = next(iter(requests(m).values()))[0]
    assert json.loads(call.kwargs["data"]) == {
        "app_slug": "claude-code",
        "state": "idle",
        "message": "✓ done",
        "uri": "",
    }
    assert result.outcome is Outcome.OK


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, Outcome.REJECTED),
        (401, Outcome.UNAUTHORIZED),
        (403, Outcome.UNAUTHORIZED),
        (404, Outcome.NO_ROUTE),  # not coderd's words for an unknown task
        (408, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
async def test_error_statuses_carry_the_server_message(
    session: aiohttp.ClientSession, status: int, outcome: Outcome
) -> None:
    with aioresponses() as m:
        m.post(SNAPSHOT_URL, status=status, payload={"message": "Nope.", "detail": "why"})
        result = await coder(session).post_log_snapshot(TASK, b"{}")
    assert result.outcome is outcome
    assert result.status == status
    assert result.detail == "Nope.: why"


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        ("Route not found.", Outcome.NO_ROUTE),
        ("Resource not found or you do not have access to this resource", Outcome.NOT_FOUND),
        # Only coderd's own words name an unknown task; any other 404 is a path not served.
        ("route not found", Outcome.NO_ROUTE),
        ("Not Found", Outcome.NO_ROUTE),
    ],
)
async def test_a_missing_route_is_told_from_a_missing_task_by_the_body(
    session: aiohttp.ClientSession, message: str, outcome: Outcome
) -> None:
    with aioresponses() as m:
        m.post(SNAPSHOT_URL, status=404, payload={"message": message})
        result = await coder(session).post_log_snapshot(TASK, b"{}")
    assert result.outcome is outcome


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_reported_with_its_location_and_not_followed(
    session: aiohttp.ClientSession, status: int
) -> None:
    with aioresponses() as m:
        m.post(SNAPSHOT_URL, status=status, headers={"Location": "https://elsewhere.example/"})
        result = await coder(session).post_log_snapshot(TASK, b"{}")
        (calls,) = requests(m).values()
    assert result.outcome is Outcome.REDIRECT
    assert result.location == "https://elsewhere.example/"
    assert len(calls) == 1
    assert calls[0].kwargs["allow_redirects"] is False


async def test_server_version_is_read_without_the_token(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.get(f"{BASE}/api/v2/buildinfo", payload={"version": "v2.37.2", "external_url": "x"})
        m.get(f"{BASE}/api/v2/buildinfo", status=404, payload={"message": "Route not found."})
        m.get(f"{BASE}/api/v2/buildinfo", body=b"not json")
        m.get(f"{BASE}/api/v2/buildinfo", payload=["not", "an", "object"])
        client = coder(session)
        assert await client.server_version() == "v2.37.2"
        assert await client.server_version() is None
        assert await client.server_version() is None
        assert await client.server_version() is None
        (calls,) = requests(m).values()
    assert all("Coder-Session-Token" not in call.kwargs["headers"] for call in calls)


async def test_non_json_error_body(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.post(SNAPSHOT_URL, status=502, body=b"<html>Bad Gateway</html>")
        result = await coder(session).post_log_snapshot(TASK, b"{}")
    assert result.outcome is Outcome.RETRY
    assert "Bad Gateway" in result.detail


async def test_retry_after_seconds_and_date(session: aiohttp.ClientSession) -> None:
    now = 1_700_000_000.0
    with aioresponses() as m:
        m.post(SNAPSHOT_URL, status=429, headers={"Retry-After": "7"})
        m.post(SNAPSHOT_URL, status=503, headers={"Retry-After": formatdate(now + 30, usegmt=True)})
        m.post(SNAPSHOT_URL, status=503, headers={"Retry-After": "soon-ish"})
        client = coder(session, now=now)
        first = await client.post_log_snapshot(TASK, b"{}")
        second = await client.post_log_snapshot(TASK, b"{}")
        third = await client.post_log_snapshot(TASK, b"{}")
    assert first.retry_after == 7
    assert second.retry_after == pytest.approx(30, abs=1)
    assert third.retry_after is None


async def test_connection_error_and_timeout_are_retryable(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.post(SNAPSHOT_URL, exception=aiohttp.ClientConnectionError("Connection refused"))
        m.post(SNAPSHOT_URL, exception=TimeoutError())
        client = coder(session)
        refused = await client.post_log_snapshot(TASK, b"{}")
        timed_out = await client.post_log_snapshot(TASK, b"{}")
    assert (refused.outcome, refused.status) == (Outcome.RETRY, None)
    assert "refused" in refused.detail
    assert (timed_out.outcome, timed_out.detail) == (Outcome.RETRY, "timed out")


async def test_per_call_timeout_only_shortens(session: aiohttp.ClientSession) -> None:
    seen: list[aiohttp.ClientTimeout] = []

    def record(url: URL, **kwargs: object) -> CallbackResult:
        seen.append(kwargs["timeout"])  # type: ignore[arg-type]
        return CallbackResult(status=204)

    with aioresponses() as m:
        m.post(SNAPSHOT_URL, callback=record, repeat=True)
        client = coder(session)
        await client.post_log_snapshot(TASK, b"{}", timeout=0.5)
        await client.post_log_snapshot(TASK, b"{}", timeout=30)
        await client.post_log_snapshot(TASK, b"{}")
    assert [t.total for t in seen] == [0.5, 2.0, 2.0]


async def test_rotated_token_is_sent(session: aiohttp.ClientSession, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "token"
    path.write_text(TOKEN)
    source = TokenSource(path=path)
    client = CoderClient(session=session, base_url=BASE, token=source)
    new = "99999999-8888-4777-8666-555555555555"
    path.write_text(new)
    assert await client.reload_token() is True
    with aioresponses() as m:
        m.post(SNAPSHOT_URL, status=204)
        await client.post_log_snapshot(TASK, b"{}")
        call = next(iter(requests(m).values()))[0]
    assert call.kwargs["headers"]["Coder-Session-Token"] == new


async def test_a_200_page_is_not_a_stored_snapshot(session: aiohttp.ClientSession) -> None:
    # An SSO or login page in front of Coder answers 200 text/html to everything.
    with aioresponses() as m:
        m.post(SNAPSHOT_URL, status=200, body="<html>Sign in</html>", content_type="text/html")
        result = await coder(session).post_log_snapshot(TASK, b"{}")
    assert result.outcome is Outcome.NOT_CODER
    assert not result.ok
    assert result.detail == "text/html"


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (200, "<html>Sign in</html>", "text/html"),
        (200, "[]", "application/json"),  # JSON, but not Coder's object
        (204, "", "application/json"),
        (201, "{}", "application/json"),
    ],
)
async def test_an_app_status_is_accepted_only_as_coder_accepts_it(
    session: aiohttp.ClientSession, status: int, body: str, content_type: str
) -> None:
    with aioresponses() as m:
        m.patch(STATUS_URL, status=status, body=body, content_type=content_type)
        result = await coder(session).patch_app_status(
            slug="claude-code", state=AppState.IDLE, message="", uri=""
        )
    assert result.outcome is Outcome.NOT_CODER

"""Requests to Coder through an HTTP proxy, chosen as Coder's agent (Go) chooses.

Go never proxies loopback, and tests talk to nothing but loopback. So the Coder URL uses
a made-up name, `coder.test`, that only the recording proxy maps to the fake Coder on
127.0.0.1. The session's resolver (HostsResolver) knows no names unless a test gives it
some, so a request that bypasses the proxy fails at once instead of looking a name up.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from sidecar.agentapi.client import AgentapiClient
from sidecar.coder.client import CoderClient
from sidecar.coder.outcomes import Outcome
from sidecar.coder.session import make_session, make_token
from sidecar.models import AgentStatus
from sidecar.settings import Settings, load_settings
from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served
from tests.conftest import AgentapiFactory
from tests.fakes.proxy import HostsResolver, RecordingProxy

CODER_HOST = "coder.test"
USER = "sidecar"
PASSWORD = "pr0xy-s3cret"
SNAPSHOT = json.dumps(
    {"messages": [{"id": 0, "content": "hi", "role": "user", "time": "2026-01-02T03:04:05Z"}]}
).encode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def settings_for(
    coder: Served[FakeCoder], tmp_path: Path, *, scheme: str = "http", **env: str
) -> Settings:
    return load_settings(
        {
            "CODER_AGENT_URL": f"{scheme}://{CODER_HOST}:{coder.server.port}",
            "CODER_AGENT_TOKEN": coder.fake.token,
            "CODER_TASK_ID": str(coder.fake.task_id),
            "SIDECAR_STATE_DIR": str(tmp_path),
            **env,
        }
    )


def coder_client(session: aiohttp.ClientSession, settings: Settings) -> CoderClient:
    return CoderClient(
        session=session,
        base_url=settings.coder_agent_url,
        token=make_token(settings),
        timeout=5.0,
    )


def snapshot_target(coder: Served[FakeCoder]) -> str:
    path = coder.fake.snapshot_path()
    return f"http://{CODER_HOST}:{coder.server.port}{path}?format=agentapi"


@pytest.fixture
async def proxy() -> AsyncIterator[RecordingProxy]:
    async with RecordingProxy(hosts={CODER_HOST: "127.0.0.1"}) as running:
        yield running


@pytest.mark.parametrize(
    "no_proxy",
    [
        None,
        "coder.test:1",  # another port
        ".coder.test",  # subdomains only
        "other.test, 10.0.0.0/8, 127.0.0.1",
    ],
)
async def test_snapshot_goes_through_the_http_proxy(
    fake_coder: Served[FakeCoder], proxy: RecordingProxy, tmp_path: Path, no_proxy: str | None
) -> None:
    settings = settings_for(
        fake_coder,
        tmp_path,
        HTTP_PROXY=f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}",
        **({"NO_PROXY": no_proxy} if no_proxy else {}),
    )
    resolver = HostsResolver()  # knows no name: going direct would fail
    async with make_session(settings, resolver=resolver) as session:
        result = await coder_client(session, settings).post_log_snapshot(
            fake_coder.fake.task_id, SNAPSHOT
        )
    assert result.ok, result
    (request,) = proxy.requests
    assert request.method == "POST"
    assert request.target == snapshot_target(fake_coder)
    assert request.proxy_authorization == basic(USER, PASSWORD)
    assert request.forwarded_to == f"127.0.0.1:{fake_coder.server.port}"
    stored = fake_coder.fake.stored_snapshot()
    assert stored is not None
    assert [m["content"] for m in stored["messages"]] == ["hi"]
    # The proxy keeps its credentials: the target never sees them.
    (post,) = fake_coder.fake.snapshot_posts()
    assert "Proxy-Authorization" not in post.headers
    assert resolver.asked == []


@pytest.mark.parametrize(
    "no_proxy", ["coder.test", "CODER.TEST", ".test", "*.test", "*", "coder.test:{port}"]
)
async def test_no_proxy_match_goes_direct(
    fake_coder: Served[FakeCoder], proxy: RecordingProxy, tmp_path: Path, no_proxy: str
) -> None:
    settings = settings_for(
        fake_coder,
        tmp_path,
        HTTP_PROXY=proxy.url,
        NO_PROXY="github.com, " + no_proxy.format(port=fake_coder.server.port),
    )
    # Direct means the client resolves the name itself: here, to the fake on loopback.
    resolver = HostsResolver({CODER_HOST: "127.0.0.1"})
    async with make_session(settings, resolver=resolver) as session:
        result = await coder_client(session, settings).post_log_snapshot(
            fake_coder.fake.task_id, SNAPSHOT
        )
    assert result.ok, result
    assert proxy.requests == []
    assert resolver.asked == [CODER_HOST]
    assert fake_coder.fake.stored_snapshot() is not None


async def test_https_coder_goes_through_a_connect_tunnel(
    fake_coder: Served[FakeCoder], proxy: RecordingProxy, tmp_path: Path
) -> None:
    async with RecordingProxy(hosts={CODER_HOST: "127.0.0.1"}) as http_only:
        settings = settings_for(
            fake_coder,
            tmp_path,
            scheme="https",
            HTTPS_PROXY=f"{USER}:{PASSWORD}@127.0.0.1:{proxy.port}",
            HTTP_PROXY=http_only.url,  # for http:// URLs only: must see nothing
        )
        resolver = HostsResolver()
        async with make_session(settings, resolver=resolver) as session:
            result = await coder_client(session, settings).post_log_snapshot(
                fake_coder.fake.task_id, SNAPSHOT
            )
    # The tunnel leads to the fake's plain-HTTP port, so TLS cannot succeed (and no test
    # CA is at hand): what matters is the route, which the proxy recorded.
    assert result.outcome is Outcome.RETRY
    assert proxy.requests, "the https request did not reach HTTPS_PROXY"
    for request in proxy.requests:
        assert request.method == "CONNECT"
        assert request.target == f"{CODER_HOST}:{fake_coder.server.port}"
        assert request.proxy_authorization == basic(USER, PASSWORD)
    assert http_only.requests == []
    assert resolver.asked == []
    assert fake_coder.fake.stored_snapshot() is None


@pytest.mark.parametrize("agentapi_host", ["127.0.0.1", "localhost", "agentapi.test"])
async def test_agentapi_is_never_proxied(
    make_fake_agentapi: AgentapiFactory,
    fake_coder: Served[FakeCoder],
    proxy: RecordingProxy,
    tmp_path: Path,
    agentapi_host: str,
) -> None:
    # Any Host, as the registry's module starts agentapi (AGENTAPI_ALLOWED_HOSTS="*"):
    # agentapi's default would refuse agentapi.test with a 400.
    agentapi: Served[FakeAgentapi] = await make_fake_agentapi(allowed_hosts=("*",))
    agentapi.fake.add_message("user", "Fix the tests")
    settings = settings_for(
        fake_coder,
        tmp_path,
        # A name Go's rules would proxy (not loopback, no NO_PROXY): the session must not.
        CODER_MCP_AI_AGENTAPI_URL=f"http://{agentapi_host}:{agentapi.server.port}",
        HTTP_PROXY=proxy.url,
        HTTPS_PROXY=proxy.url,
    )
    resolver = HostsResolver({"localhost": "127.0.0.1", "agentapi.test": "127.0.0.1"})
    async with make_session(settings, resolver=resolver) as session:
        client = AgentapiClient(session=session, base_url=settings.coder_mcp_ai_agentapi_url)
        assert await client.status() is AgentStatus.STABLE
        messages, _invalid = await client.messages()
        async with client.events() as chunks:
            first = await anext(aiter(chunks))
        # The same session still sends Coder's requests through the proxy.
        coder_result = await coder_client(session, settings).probe_token()
    assert [m.content for m in messages] == ["Fix the tests"]
    assert first.startswith(b"event: ")
    assert coder_result.ok, coder_result
    assert [r.target for r in proxy.requests] == [
        f"http://{CODER_HOST}:{fake_coder.server.port}/api/v2/workspaceagents/me/gitsshkey"
    ]
    assert set(resolver.asked) <= {agentapi_host}


async def test_credentials_reach_the_proxy_and_no_log_line(
    fake_coder: Served[FakeCoder], proxy: RecordingProxy, tmp_path: Path
) -> None:
    settings = settings_for(
        fake_coder, tmp_path, http_proxy=f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"
    )
    with capture_logs() as logs:
        async with make_session(settings, resolver=HostsResolver()) as session:
            client = coder_client(session, settings)
            delivered = await client.post_log_snapshot(fake_coder.fake.task_id, SNAPSHOT)
            status = await client.probe_token()
            await proxy.close()  # now the proxy refuses connections: an error text to check
            failed = await client.post_log_snapshot(fake_coder.fake.task_id, SNAPSHOT)
    assert delivered.ok, delivered
    assert status.ok, status
    assert [r.proxy_authorization for r in proxy.requests] == [basic(USER, PASSWORD)] * 2
    assert failed.outcome is Outcome.RETRY
    assert f"127.0.0.1:{proxy.port}" in failed.detail
    assert PASSWORD not in failed.detail
    assert [e for e in logs if e["event"] == "coder.proxy"] == [
        {
            "event": "coder.proxy",
            "log_level": "info",
            "proxy": f"http://127.0.0.1:{proxy.port}",
            "source": "HTTP_PROXY",
            "credentials": True,
        }
    ]
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in repr(settings)


async def test_a_proxy_that_is_set_but_not_taken_is_logged(
    fake_coder: Served[FakeCoder], proxy: RecordingProxy, tmp_path: Path
) -> None:
    settings = settings_for(fake_coder, tmp_path, HTTP_PROXY=proxy.url, NO_PROXY=".test")
    with capture_logs() as logs:
        async with make_session(settings, resolver=HostsResolver({CODER_HOST: "127.0.0.1"})):
            pass
    assert [e for e in logs if e["event"] == "coder.proxy"] == [
        {
            "event": "coder.proxy",
            "log_level": "info",
            "proxy": None,
            "reason": f"NO_PROXY matches {CODER_HOST}",
        }
    ]


async def test_nothing_is_logged_without_proxy_variables(
    fake_coder: Served[FakeCoder], tmp_path: Path
) -> None:
    with capture_logs() as logs:
        async with make_session(settings_for(fake_coder, tmp_path)):
            pass
    assert [e for e in logs if e["event"] == "coder.proxy"] == []

"""The health listener over real HTTP on a loopback port."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.addr import parse_http_addr
from sidecar.runtime.health import HealthServer, Readiness
from sidecar.runtime.metrics import Metrics

READY = Readiness(True, ())
TIMEOUT = aiohttp.ClientTimeout(total=10)


class Start(Protocol):
    """Starts a HealthServer on a free loopback port: (server, base URL)."""

    def __call__(
        self, readiness: Callable[[], Readiness] = ..., metrics: Metrics | None = ...
    ) -> Awaitable[tuple[HealthServer, str]]: ...


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


@pytest.fixture
async def start_server() -> AsyncIterator[Start]:
    servers: list[HealthServer] = []

    async def start(
        readiness: Callable[[], Readiness] = lambda: READY,
        metrics: Metrics | None = None,
    ) -> tuple[HealthServer, str]:
        registry = (metrics or Metrics()).registry
        server = HealthServer(host="127.0.0.1", port=0, registry=registry, readiness=readiness)
        servers.append(server)
        await server.start()
        return server, f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.stop()


async def test_healthz_answers_ok(start_server: Start, client: aiohttp.ClientSession) -> None:
    _, base = await start_server()

    async with client.get(f"{base}/healthz") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert response.headers["Cache-Control"] == "no-store"
        assert await response.text() == "ok"


async def test_port_zero_binds_a_real_port(start_server: Start) -> None:
    unstarted = HealthServer(
        host="127.0.0.1", port=0, registry=Metrics().registry, readiness=lambda: READY
    )
    assert unstarted.port == 0

    server, _ = await start_server()

    assert 0 < server.port <= 65535


async def test_readyz_ready(start_server: Start, client: aiohttp.ClientSession) -> None:
    _, base = await start_server()

    async with client.get(f"{base}/readyz") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"ready": True, "reasons": []}


async def test_readyz_not_ready_is_503_with_reasons(
    start_server: Start, client: aiohttp.ClientSession
) -> None:
    reasons = ("agentapi unreachable for 45 s", "snapshot undelivered for 300 s")
    _, base = await start_server(readiness=lambda: Readiness(False, reasons))

    async with client.get(f"{base}/readyz") as response:
        assert response.status == 503
        assert await response.json() == {"ready": False, "reasons": list(reasons)}


async def test_readyz_asks_on_every_request(
    start_server: Start, client: aiohttp.ClientSession
) -> None:
    state = [Readiness(False, ("starting",))]
    _, base = await start_server(readiness=lambda: state[0])

    async with client.get(f"{base}/readyz") as response:
        assert response.status == 503
    state[0] = READY
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 200


async def test_readyz_failing_check_reads_as_not_ready(
    start_server: Start, client: aiohttp.ClientSession
) -> None:
    def broken() -> Readiness:
        raise RuntimeError("boom")

    _, base = await start_server(readiness=broken)

    async with client.get(f"{base}/readyz") as response:
        assert response.status == 503
        body = await response.json()
    assert body["ready"] is False
    assert body["reasons"] == ["readiness check failed: RuntimeError"]
    # The listener survives a broken callback.
    async with client.get(f"{base}/healthz") as response:
        assert response.status == 200


async def test_metrics_exposes_the_registry(
    start_server: Start, client: aiohttp.ClientSession
) -> None:
    metrics = Metrics()
    metrics.events.labels(type="message_update").inc(3)
    metrics.snapshot_bytes.set(1234)
    _, base = await start_server(metrics=metrics)

    async with client.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()

    families = {family.name: family for family in text_string_to_metric_families(text)}
    events = families["sidecar_agentapi_events"]
    assert events.type == "counter"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in events.samples
        if s.name.endswith("_total")
    }
    assert samples == {("sidecar_agentapi_events_total", (("type", "message_update"),)): 3.0}
    assert [s.value for s in families["sidecar_snapshot_bytes"].samples] == [1234.0]
    # Only the given registry: nothing from prometheus-client's global one (whose GC
    # collector is the one Metrics does not register). The text format gives a counter's
    # or a histogram's _created samples a family of their own.
    served = {name.removesuffix("_created") for name in families}
    assert served == {family.name for family in metrics.registry.collect()}
    assert not any(name.startswith("python_gc_") for name in families)


async def test_metrics_reflect_changes_between_scrapes(
    start_server: Start, client: aiohttp.ClientSession
) -> None:
    metrics = Metrics()
    _, base = await start_server(metrics=metrics)

    async def connected() -> float:
        async with client.get(f"{base}/metrics") as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            if family.name == "sidecar_agentapi_connected":
                return family.samples[0].value
        raise AssertionError("sidecar_agentapi_connected missing")

    assert await connected() == 0.0
    metrics.agentapi_connected.set(1)
    assert await connected() == 1.0


async def test_unknown_path_is_404(start_server: Start, client: aiohttp.ClientSession) -> None:
    _, base = await start_server()

    async with client.get(f"{base}/debug") as response:
        assert response.status == 404


async def test_stop_closes_the_listener_and_is_idempotent(
    client: aiohttp.ClientSession,
) -> None:
    server = HealthServer(
        host="127.0.0.1", port=0, registry=Metrics().registry, readiness=lambda: READY
    )
    await server.stop()  # before start: nothing to do
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    async with client.get(f"{base}/healthz") as response:
        assert response.status == 200

    await server.stop()
    await server.stop()

    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get(f"{base}/healthz"):
            pass


async def test_start_twice_is_an_error(start_server: Start) -> None:
    server, _ = await start_server()

    with pytest.raises(RuntimeError, match="already started"):
        await server.start()


async def test_port_in_use_raises_oserror_and_leaves_nothing_running(
    start_server: Start,
) -> None:
    first, _ = await start_server()
    second = HealthServer(
        host="127.0.0.1", port=first.port, registry=Metrics().registry, readiness=lambda: READY
    )

    with pytest.raises(OSError):  # noqa: PT011 - EADDRINUSE's message varies by platform
        await second.start()
    assert second.port == first.port
    await second.stop()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("localhost:8080", ("localhost", 8080)),
        ("metrics.internal:1", ("metrics.internal", 1)),
        ("[::1]:9464", ("::1", 9464)),
        ("[::]:9464", ("::", 9464)),
        ("[fe80::1%eth0]:9464", ("fe80::1%eth0", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        (" 127.0.0.1:9464\n", ("127.0.0.1", 9464)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
    ],
)
def test_parse_http_addr_accepts(value: str, expected: tuple[str, int]) -> None:
    assert parse_http_addr(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty address"),
        ("   ", "empty address"),
        ("9464", "missing ':' before the port"),
        ("localhost", "missing ':' before the port"),
        ("::1:9464", "needs brackets"),
        ("[::1:9464", "missing ']'"),
        ("[::1]", "missing ':port'"),
        ("[::1]9464", "missing ':port'"),
        ("[not-v6]:9464", "is not an IPv6 address"),
        ("[127.0.0.1]:9464", "is not an IPv6 address"),
        ("127.0.0.1:", "port must be a number from 0 to 65535"),
        ("127.0.0.1:65536", "port must be a number from 0 to 65535"),
        ("127.0.0.1:http", "port must be a number from 0 to 65535"),
        ("127.0.0.1:+80", "port must be a number from 0 to 65535"),
        ("127.0.0.1:٩٤", "port must be a number from 0 to 65535"),
        ("bad host:80", "is not a valid host name"),
        ("http://127.0.0.1:80", "is a URL or path, not an address"),
        ("127.0.0.1:9464/metrics", "is a URL or path, not an address"),
    ],
)
def test_parse_http_addr_rejects_with_a_clear_message(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as excinfo:
        parse_http_addr(value)

    # Configuration errors say what is wrong without quoting what was set.
    if value.strip():
        assert repr(value) not in str(excinfo.value)

"""The HTTP session and the agent token, as every command builds them from Settings."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver
from yarl import URL

from sidecar.coder.client import origin
from sidecar.coder.proxy import ProxyURL
from sidecar.coder.token import TokenSource
from sidecar.log import register_secret
from sidecar.settings import Settings

log = structlog.get_logger(__name__)


def make_token(settings: Settings) -> TokenSource:
    if settings.coder_agent_token is not None:
        return TokenSource(value=settings.coder_agent_token.get_secret_value())
    return TokenSource(path=settings.coder_agent_token_file)


def make_session(
    settings: Settings | None, *, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """The one session for agentapi and Coder. Requests to Coder go through the proxy
    HTTPS_PROXY/HTTP_PROXY/NO_PROXY choose for it (logged once, here); nothing else is
    ever proxied. `settings` has no default, so that a command cannot lose its proxy by
    forgetting it; None (benchmarks on loopback) proxies nothing. `resolver` replaces the
    DNS resolver (tests that must not look names up)."""
    middlewares: tuple[aiohttp.ClientMiddlewareType, ...] = ()
    if settings is not None:
        proxy = _coder_proxy(settings)
        if proxy is not None:
            middlewares = (_through(proxy, settings.coder_agent_url),)
    # TLS verification stays on; SSL_CERT_FILE is honoured by OpenSSL's default paths.
    # trust_env stays off: aiohttp's own reading of the proxy variables differs from Go's
    # and would proxy agentapi too.
    if settings is not None:
        _warn_about_url(settings.coder_agent_url)
    # Answers are never unpacked: what a peer sends is read bounded, as sent.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=8, resolver=resolver),
        headers={"User-Agent": "coder-task-sidecar", "Accept-Encoding": "identity"},
        trust_env=False,
        middlewares=middlewares,
        auto_decompress=False,
    )


def url_problems(url: str) -> list[tuple[str, str]]:
    """What is worth a warning about CODER_AGENT_URL: (event, what to know)."""
    parts = urlsplit(url)
    problems = []
    if parts.path.strip("/"):
        problems.append(
            (
                "coder.url_path_ignored",
                f"the path {parts.path!r} is not used: the API is reached at "
                f"{origin(url)}/api/v2/..., as Coder's own agent reaches it",
            )
        )
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        problems.append(
            (
                "coder.insecure_url",
                "http:// to another host: the agent token travels in clear; use https://",
            )
        )
    return problems


def _warn_about_url(url: str) -> None:
    for event, note in url_problems(url):
        log.warning(event, url=origin(url), note=note)


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_proxy(settings: Settings) -> str | None:
    """How requests to Coder are routed, for a report: `http://proxy:3128 (from
    HTTPS_PROXY, with credentials)`, or `none: NO_PROXY matches coder.corp`; None when no
    proxy variable is set. Never includes credentials."""
    return settings.proxy.describe(settings.coder_agent_url)


def _coder_proxy(settings: Settings) -> ProxyURL | None:
    config = settings.proxy
    decision = config.decide(settings.coder_agent_url)
    if decision.proxy is not None:
        if decision.proxy.password:
            # aiohttp's error texts should never carry it; this makes sure no log line does.
            register_secret(decision.proxy.password)
        log.info(
            "coder.proxy",
            proxy=decision.proxy.address,
            source=decision.variable,
            credentials=decision.proxy.username is not None,
        )
    elif config.configured:
        # A proxy is set but not taken: the first question of whoever reads this log.
        log.info("coder.proxy", proxy=None, reason=decision.reason)
    return decision.proxy


def _through(proxy: ProxyURL, coder_url: str) -> aiohttp.ClientMiddlewareType:
    """Routes the requests to Coder's origin through `proxy`, leaving all others alone."""
    coder = URL(coder_url)
    origin = (coder.scheme, coder.host, coder.port)
    proxy_url = URL(proxy.address)
    authorization = proxy.authorization
    # An https request travels in a CONNECT tunnel: the CONNECT request carries the proxy
    # headers. A plain http request is sent to the proxy as it is, so it carries them.
    tunnel = coder.scheme == "https"
    proxy_headers = {hdrs.PROXY_AUTHORIZATION: authorization} if tunnel and authorization else None

    async def route(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if (request.url.scheme, request.url.host, request.url.port) == origin:
            request.update_proxy(proxy_url, None, proxy_headers)
            if authorization is not None and not tunnel:
                request.headers[hdrs.PROXY_AUTHORIZATION] = authorization
        return await handler(request)

    return route

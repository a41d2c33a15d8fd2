"""The HTTP session and the agent token, as every command builds them from Settings."""

from __future__ import annotations

import aiohttp

from sidecar.coder.token import TokenSource
from sidecar.config import Settings


def make_token(settings: Settings) -> TokenSource:
    if settings.coder_agent_token is not None:
        return TokenSource(value=settings.coder_agent_token.get_secret_value())
    return TokenSource(path=settings.coder_agent_token_file)


def make_session() -> aiohttp.ClientSession:
    # TLS verification stays on; SSL_CERT_FILE is honoured by OpenSSL's default paths.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=8),
        headers={"User-Agent": "coder-task-sidecar"},
        trust_env=False,
    )

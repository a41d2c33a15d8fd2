"""Shared fixtures: the fake agentapi and Coder servers, started on loopback ports.

`make_fake_agentapi(**kwargs)` / `make_fake_coder(**kwargs)` start as many fakes as a
test needs (keyword arguments go to the fake's constructor) and stop them all at
teardown; `fake_agentapi` / `fake_coder` are one started fake each. `busy_port` is a
loopback port something already listens on.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from typing import ParamSpec, Protocol, TypeVar
from uuid import UUID

import pytest
from aiohttp import web

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served, serve


class AgentapiFactory(Protocol):
    """Starts a FakeAgentapi; the keywords are its constructor's."""

    def __call__(
        self,
        *,
        agent_type: str = ...,
        transport: str = ...,
        status: str = ...,
        subscriber_buffer: int = ...,
        now: Callable[[], datetime] = ...,
        version: str = ...,
        message0: bool = ...,
        ready: bool = ...,
        allowed_hosts: Iterable[str] = ...,
        send_duration: float | None = ...,
        sse_write_timeout: float = ...,
    ) -> Awaitable[Served[FakeAgentapi]]: ...


class CoderFactory(Protocol):
    """Starts a FakeCoder; the keywords are its constructor's."""

    def __call__(
        self,
        *,
        token: str | None = ...,
        task_id: UUID | None = ...,
        app_slug: str = ...,
        endpoint_missing: bool = ...,
        version: str = ...,
        now: Callable[[], datetime] = ...,
    ) -> Awaitable[Served[FakeCoder]]: ...


class _Fake(Protocol):
    app: web.Application


P = ParamSpec("P")
F = TypeVar("F", bound=_Fake)


def _starter(
    stack: contextlib.AsyncExitStack, make: Callable[P, F]
) -> Callable[P, Awaitable[Served[F]]]:
    # Forwarding the constructor's own signature lets mypy check the factory protocols
    # above against the fakes' constructors.
    async def start(*args: P.args, **kwargs: P.kwargs) -> Served[F]:
        fake = make(*args, **kwargs)
        server = await stack.enter_async_context(serve(fake.app))
        return Served(fake, server)

    return start


@pytest.fixture
async def make_fake_agentapi() -> AsyncIterator[AgentapiFactory]:
    async with contextlib.AsyncExitStack() as stack:
        yield _starter(stack, FakeAgentapi)


@pytest.fixture
async def make_fake_coder() -> AsyncIterator[CoderFactory]:
    async with contextlib.AsyncExitStack() as stack:
        yield _starter(stack, FakeCoder)


@pytest.fixture
async def fake_agentapi(make_fake_agentapi: AgentapiFactory) -> Served[FakeAgentapi]:
    return await make_fake_agentapi()


@pytest.fixture
async def fake_coder(make_fake_coder: CoderFactory) -> Served[FakeCoder]:
    return await make_fake_coder()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]

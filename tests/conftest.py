"""Shared fixtures: the fake agentapi and Coder servers, started on loopback ports.

`make_fake_agentapi(**kwargs)` / `make_fake_coder(**kwargs)` start as many fakes as a
test needs (keyword arguments go to the fake's constructor) and stop them all at
teardown; `fake_agentapi` / `fake_coder` are one started fake each.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import pytest

from tests.fakes.agentapi import FakeAgentapi
from tests.fakes.coder import FakeCoder
from tests.fakes.server import Served, serve

AgentapiFactory: TypeAlias = Callable[..., Awaitable[Served[FakeAgentapi]]]
CoderFactory: TypeAlias = Callable[..., Awaitable[Served[FakeCoder]]]


@pytest.fixture
async def make_fake_agentapi() -> AsyncIterator[AgentapiFactory]:
    async with contextlib.AsyncExitStack() as stack:

        async def factory(**kwargs: Any) -> Served[FakeAgentapi]:
            fake = FakeAgentapi(**kwargs)
            server = await stack.enter_async_context(serve(fake.app))
            return Served(fake, server)

        yield factory


@pytest.fixture
async def make_fake_coder() -> AsyncIterator[CoderFactory]:
    async with contextlib.AsyncExitStack() as stack:

        async def factory(**kwargs: Any) -> Served[FakeCoder]:
            fake = FakeCoder(**kwargs)
            server = await stack.enter_async_context(serve(fake.app))
            return Served(fake, server)

        yield factory


@pytest.fixture
async def fake_agentapi(make_fake_agentapi: AgentapiFactory) -> Served[FakeAgentapi]:
    return await make_fake_agentapi()


@pytest.fixture
async def fake_coder(make_fake_coder: CoderFactory) -> Served[FakeCoder]:
    return await make_fake_coder()

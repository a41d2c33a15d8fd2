"""Narrow agentapi client tests: what is asked for and how answers are read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aioresponses import aioresponses

from sidecar.agentapi.client import AgentapiClient, AgentapiError
from sidecar.models import AgentStatus


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_agentapi_client(session: aiohttp.ClientSession) -> None:
    base = "http://localhost:3284"
    client = AgentapiClient(session=session, base_url=base)
    with aioresponses() as m:
        m.get(
            base + "/status",
            payload={"status": "running", "agent_type": "claude", "transport": "pty"},
        )
        m.get(
            base + "/messages",
            payload={
                "messages": [
                    {"id": 0, "content": "hi", "role": "user", "time": "2026-01-01T00:00:00Z"},
                    {"id": 1, "content": "x", "role": "tool", "time": "2026-01-01T00:00:00Z"},
                ]
            },
        )
        m.get(base + "/status", status=500)
        m.get(base + "/status", body=b"not json")
        m.get(base + "/events", status=404)
        assert await client.status() is AgentStatus.RUNNING
        good, bad = await client.messages()
        assert [msg.content for msg in good] == ["hi"]
        assert [b.reason for b in bad] == ["role"]
        with pytest.raises(AgentapiError, match="500"):
            await client.status()
        with pytest.raises(AgentapiError, match="json"):
            await client.status()
        with pytest.raises(AgentapiError) as info:
            async with client.events():
                pass
        assert info.value.status == 404


async def test_agentapi_unreachable(session: aiohttp.ClientSession) -> None:
    client = AgentapiClient(session=session, base_url="http://localhost:3284")
    with aioresponses() as m:
        m.get("http://localhost:3284/status", exception=aiohttp.ClientConnectionError("refused"))
        m.get("http://localhost:3284/events", exception=TimeoutError())
        with pytest.raises(AgentapiError, match="refused") as info:
            await client.status()
        assert info.value.status is None
        with pytest.raises(AgentapiError, match="timed out"):
            async with client.events():
                pass

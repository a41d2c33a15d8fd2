"""Reading the agentapi fake's SSE frames off a response, for the tests of the fakes."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from tests.fakes import openapi

__all__ = ["Stream", "parse_frame", "ticking_clock", "validate_events"]


class Stream:
    """Reads the fake's frames (`event: X` / `data: Y` / blank line) off a response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.raw = b""
        self._pending = b""

    async def frames(self, count: int, timeout: float = 5.0) -> list[bytes]:
        frames: list[bytes] = []
        async with asyncio.timeout(timeout):
            while len(frames) < count:
                if b"\n\n" in self._pending:
                    frame, self._pending = self._pending.split(b"\n\n", 1)
                    frames.append(frame)
                    continue
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError(f"stream ended after {len(frames)} of {count} frames")
                self.raw += chunk
                self._pending += chunk
        return frames

    async def events(self, count: int, timeout: float = 5.0) -> list[tuple[str, Any]]:
        return [parse_frame(f) for f in await self.frames(count, timeout)]

    async def rest(self, timeout: float = 5.0) -> bytes:
        """Everything until the server ends the response."""
        async with asyncio.timeout(timeout):
            tail = await self.response.content.read()
        self.raw += tail
        self._pending += tail
        return self._pending


def parse_frame(frame: bytes) -> tuple[str, Any]:
    lines = frame.split(b"\n")
    assert len(lines) == 2, frame
    assert lines[0].startswith(b"event: "), frame
    assert lines[1].startswith(b"data: "), frame
    return lines[0][7:].decode(), json.loads(lines[1][6:])


def validate_events(events: list[tuple[str, Any]], version: str = "0.12") -> None:
    if openapi.SPEC_AVAILABLE:
        for name, data in events:
            openapi.validate_sse_event(name, data, version=version)


def ticking_clock(
    start: datetime = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
) -> Callable[[], datetime]:
    """A `now` for the fakes that moves one second at every reading."""
    readings = itertools.count()
    return lambda: start + timedelta(seconds=next(readings))

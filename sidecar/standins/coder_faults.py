"""The Coder stand-in's fault script: what something in front of coderd (a proxy, a load
balancer, a login page) does to a request before coderd sees it.

A script of faults (`FakeCoder.fail_next`, `redirect_next`, `hang_next`, `close_next`,
`answer_next`) is consumed in order by the next requests whose path contains the given
text, before any validation (as a proxy in front of coderd would fail).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from aiohttp import web

from sidecar.standins.coder_rules import FaultKind, coder_error

__all__ = ["Answer", "Fault", "FaultScript", "apply_fault", "retry_after_text"]


@dataclass(frozen=True, slots=True)
class Answer:
    """Whatever something in front of coderd answers with: `status`, `content_type`,
    `headers`, and a body of `body` repeated `repeat` times (None: for ever), written as
    fast as the client reads it."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    repeat: int | None = 1


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    remaining: int
    path_contains: str
    status: int = 0
    retry_after: str | None = None
    location: str | None = None
    answer: Answer | None = None


class FaultScript:
    """The faults still to play, in order."""

    __slots__ = ("_faults",)

    def __init__(self) -> None:
        self._faults: collections.deque[Fault] = collections.deque()

    def append(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    @property
    def pending(self) -> int:
        return sum(f.remaining for f in self._faults)

    def take(self, path: str) -> Fault | None:
        """The first fault whose text is in `path`, one of its times used up."""
        for fault in self._faults:
            if fault.path_contains in path:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None


async def apply_fault(
    request: web.Request, fault: Fault, stopping: asyncio.Event
) -> web.StreamResponse:
    """Play `fault` on `request`; a held request ends when `stopping` is set (the server
    shuts down) or when its client gives up."""
    if fault.kind == "fail":
        response = coder_error(fault.status, "Injected failure.", "fault script")
        if fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        return response
    if fault.kind == "redirect":
        assert fault.location is not None
        return web.Response(status=fault.status, headers={"Location": fault.location})
    if fault.kind == "answer":
        assert fault.answer is not None
        return await _answer(request, fault.answer)
    if fault.kind == "hang":
        # Ends by cancellation when the client disconnects, or here on server stop.
        await stopping.wait()
    if request.transport is not None:
        request.transport.close()
    # aiohttp drops this response: the transport is already closed.
    return web.Response(status=500)


def retry_after_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


async def _answer(request: web.Request, answer: Answer) -> web.StreamResponse:
    headers = {"Content-Type": answer.content_type, **dict(answer.headers)}
    response = web.StreamResponse(status=answer.status, headers=headers)
    if answer.repeat is not None:
        response.content_length = len(answer.body) * answer.repeat
    await response.prepare(request)
    written = 0
    try:
        while answer.repeat is None or written < answer.repeat:
            await response.write(answer.body)
            written += 1
    except (ConnectionError, RuntimeError):
        pass  # the client stopped reading, as it should
    return response

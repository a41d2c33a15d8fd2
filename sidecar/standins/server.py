"""Serving the fake servers on loopback, plus the small helpers both fakes share.

`serve()` runs any aiohttp application on a free loopback port. The handle it yields can
stop the server (open connections are closed promptly, streams included) and start it
again on the *same* port, which is how tests simulate a restart of agentapi or Coder.
Nothing here depends on pytest: benchmarks and end-to-end tests use it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from aiohttp import web

__all__ = ["Notifier", "RunningServer", "Served", "rfc3339", "serve"]

# A handler still running when the server stops gets this long to finish before it is
# cancelled. The fakes end their own streams and held requests on shutdown, so this only
# bounds a misbehaving handler; it keeps stop() prompt rather than aiohttp's 60 s default.
_SHUTDOWN_GRACE = 0.25


class RunningServer:
    """A started aiohttp application bound to a loopback port."""

    __slots__ = ("_app", "_grace", "_host", "_port", "_runner")

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        shutdown_grace: float = _SHUTDOWN_GRACE,
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._grace = shutdown_grace
        self._runner: web.AppRunner | None = None

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the requested one until the first start)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. `http://127.0.0.1:41234`."""
        return f"http://{self._host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Bind and serve; after a stop() this binds the same port again."""
        if self._runner is not None:
            raise RuntimeError(f"server on {self.url} is already running")
        # handler_cancellation: a request whose client went away is cancelled, so a held
        # ("hang") request or an SSE stream ends when its client gives up, as in Go servers.
        runner = web.AppRunner(
            self._app,
            handler_cancellation=True,
            shutdown_timeout=self._grace,
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = _bound_port(runner, self._port)
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and close every open connection; idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RunningServer {self.url} {state}>"


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested


@contextlib.asynccontextmanager
async def serve(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    shutdown_grace: float = _SHUTDOWN_GRACE,
) -> AsyncIterator[RunningServer]:
    """Serve `app` on `host:port` (0 = a free port) until the block exits.
    `shutdown_grace`: how long stop() lets a handler run on before cancelling it."""
    server = RunningServer(app, host, port, shutdown_grace=shutdown_grace)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


F = TypeVar("F")


@dataclass(frozen=True, slots=True)
class Served(Generic[F]):
    """A fake together with the server it runs on."""

    fake: F
    server: RunningServer

    @property
    def url(self) -> str:
        return self.server.url


class Notifier:
    """Wakes waiters whenever the owner reports a change.

    `notify()` is synchronous so that sync mutators (called from tests on the loop's
    thread) can signal too; `wait_for()` re-checks its predicate after every change and
    never polls on a timer.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s; {describe()}")
            event = self._event
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)


def rfc3339(moment: datetime) -> str:
    """Format like Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped,
    no fraction at all when it is zero, `Z` for the zone."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def utc_now() -> datetime:
    return datetime.now(UTC)

"""`demo`: the real daemon against the loopback stand-ins of agentapi and Coder, with a
short scripted task, told as it happens.

The daemon is the one `run` starts (the same Settings, pipeline, spool and stop flush);
only its peers are stand-ins (sidecar.standins), which enforce what agentapi and coderd
enforce. The script: a question, an answer that streams, the agent turning idle, agentapi
restarting with no state file (as claude-code's agentapi does by default), a second
question, and a stop (SIGTERM to this process, as a workspace stop sends) while the answer
still streams. Then Coder's task log is read back over HTTP, as Coder's UI reads it, and
one `demo:` line sums up. Nothing leaves loopback; no variable is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import aiohttp

from sidecar.log import configure
from sidecar.narrate import Narrator, one_line
from sidecar.runtime.daemon import Daemon
from sidecar.settings import load_settings
from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import RunningServer, serve

__all__ = ["EXIT_INTERRUPTED", "run_demo"]

EXIT_INTERRUPTED: Final = 130
SLUG: Final = "claude-code"
_STREAM_STEP_S: Final = 0.5  # how often the agent's answer grows
_BEAT_S: Final = 1.0  # a pause between the scenes, for the reader
_WAIT_S: Final = 10.0  # bounds every wait of the script: the demo never hangs
_LOG_CHARS: Final = 100

FIRST_QUESTION: Final = "Add a --verbose flag to the CLI"
FIRST_ANSWER: Final = (
    "Reading sidecar/cli.py",
    "The parser is built in _parser(); the flag goes there.",
    "Added --verbose to the run command.",
    "It sets SIDECAR_LOG_LEVEL=debug for that run.",
    "Writing a test in tests/unit/test_cli.py",
    "Running the tests: 310 of 1772",
    "Running the tests: 1772 passed.",
    "Done: --verbose is in, with a test and a line in the README.",
)
SECOND_QUESTION: Final = "Now make --verbose also print the version at start"
SECOND_ANSWER: Final = (
    "Looking at where the daemon logs daemon.started",
    "Adding version=__version__ to that event when --verbose is on.",
    "Writing a test for it in tests/unit/test_cli.py",
    "The test passes; running the whole suite now",
    "Running the tests: 420 of 1773",
    "Running the tests: 900 of 1773",
)


async def run_demo(out: TextIO) -> int:
    """0 when the daemon stopped cleanly and Coder holds agentapi's newest words; 1
    otherwise; 130 when interrupted (Ctrl-C)."""
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coder-task-sidecar-demo-") as tmp:
        agentapi = FakeAgentapi.real()
        coder = FakeCoder(app_slug=SLUG)
        async with serve(agentapi.app) as agentapi_server, serve(coder.app) as coder_server:
            demo = _Demo(out, agentapi, agentapi_server, coder, coder_server, Path(tmp))
            return await demo.run(began)


class _Demo:
    def __init__(
        self,
        out: TextIO,
        agentapi: FakeAgentapi,
        agentapi_server: RunningServer,
        coder: FakeCoder,
        coder_server: RunningServer,
        home: Path,
    ) -> None:
        self.out = out
        self.agentapi = agentapi
        self.agentapi_server = agentapi_server
        self.coder = coder
        self.coder_server = coder_server
        self.home = home
        self.log = io.StringIO()  # the daemon's own JSON lines, shown if the demo fails
        self.narrator = Narrator(out, stored=self._stored, last_status=self._last_status)
        self.narrator.listeners.append(self._heard)
        self._loop = asyncio.get_running_loop()
        self._news = asyncio.Event()
        self.restart_kept = False

    # --- what Coder holds -----------------------------------------------------------

    def _stored(self) -> list[dict[str, Any]] | None:
        stored = self.coder.stored_snapshot()
        return None if stored is None else list(stored["messages"])

    def _last_status(self) -> str | None:
        return self.coder.app_statuses[-1].message if self.coder.app_statuses else None

    def _holds_newest(self) -> bool:
        stored = self._stored() or []
        return bool(stored) and stored[-1]["content"] == self.agentapi.messages[-1].content

    # --- waiting on the daemon's events ----------------------------------------------

    def _heard(self, _event: str) -> None:
        # The tap may run on a worker thread (a spool write): wake the script on its loop.
        self._loop.call_soon_threadsafe(self._news.set)

    async def _until_heard(self, event: str, count: int = 1) -> None:
        async with asyncio.timeout(_WAIT_S):
            while self.narrator.seen[event] < count:
                self._news.clear()
                await self._news.wait()

    # --- the run ----------------------------------------------------------------------

    async def run(self, began: float) -> int:
        self._introduce()
        configure("debug", "json", self.log, tap=self.narrator)
        settings = load_settings(self._env())
        daemon = Daemon(settings)
        running = asyncio.create_task(daemon.run())
        script = asyncio.create_task(self._script())
        await asyncio.wait((running, script), return_when=asyncio.FIRST_COMPLETED)
        if not script.done():
            # The daemon stopped first: Ctrl-C (or a signal from outside) ended the demo.
            script.cancel()
            await asyncio.gather(script, return_exceptions=True)
            code = await running
            self.narrator.say("demo", f"interrupted; the daemon exited {code}")
            return EXIT_INTERRUPTED
        failure = script.exception()
        if failure is not None:
            daemon.request_stop("demo_failed")
            await running
            return self._failed(f"the script failed: {failure!r}")
        code = await running
        if code != 0 or not self._holds_newest():
            return self._failed(f"the daemon exited {code}; Coder holds the newest: no")
        await self._print_task_log()
        self._summarize(time.monotonic() - began)
        return 0

    def _env(self) -> dict[str, str]:
        return {
            "CODER_AGENT_URL": self.coder_server.url,
            "CODER_AGENT_TOKEN": self.coder.token,
            "CODER_TASK_ID": str(self.coder.task_id),
            "CODER_MCP_APP_STATUS_SLUG": SLUG,
            "CODER_MCP_AI_AGENTAPI_URL": self.agentapi_server.url,
            "SIDECAR_STATE_DIR": str(self.home / "state"),
            "SIDECAR_SNAPSHOT_INTERVAL": "2",
            "SIDECAR_AGENTAPI_PROBE_INTERVAL": "1",
            "SIDECAR_SHUTDOWN_TIMEOUT": "5",
        }

    def _introduce(self) -> None:
        lines = (
            "coder-task-sidecar demo: the real daemon, its peers played by stand-ins",
            f"  agentapi  {self.agentapi_server.url}  (agentapi v0.12, terminal transport)",
            f"  Coder     {self.coder_server.url}  (coderd {self.coder.version})",
            f"  task {self.coder.task_id}, app {SLUG!r}; a streaming turn is posted at most "
            "every 2 s (SIDECAR_SNAPSHOT_INTERVAL=2)",
            "",
        )
        print("\n".join(lines), file=self.out, flush=True)

    # --- the script -------------------------------------------------------------------

    async def _script(self) -> None:
        a, say = self.agentapi, self.narrator.say
        await self._until_heard("agentapi.connected")
        say("agentapi", "shows the agent's welcome screen (message 0)")
        await asyncio.sleep(_BEAT_S)
        await self._turn(FIRST_QUESTION, FIRST_ANSWER)
        a.set_status("stable")
        say("agent", "finished its turn: waiting for the user")
        await self.coder.wait_for(self._holds_newest, _WAIT_S)
        await self.coder.wait_for(self._relayed("idle"), _WAIT_S)
        await asyncio.sleep(_BEAT_S)
        await self._restart()
        await asyncio.sleep(_BEAT_S)
        await self._turn(SECOND_QUESTION, SECOND_ANSWER, stop_midway=True)

    async def _turn(
        self, question: str, answer: Sequence[str], *, stop_midway: bool = False
    ) -> None:
        a, say = self.agentapi, self.narrator.say
        say("user", f"asks: {one_line(question)}")
        await a.begin_send(question)  # agentapi holds its lock while the terminal takes it
        say("agent", "answers, streaming")
        a.add_message("agent", answer[0])
        for count in range(2, len(answer) + 1):
            await asyncio.sleep(_STREAM_STEP_S)  # the pace of the scripted agent
            a.update_last("\n".join(answer[:count]))
        if stop_midway:
            say("demo", "the workspace stops: SIGTERM while the answer is still streaming")
            os.kill(os.getpid(), signal.SIGTERM)

    async def _restart(self) -> None:
        a, say = self.agentapi, self.narrator.say
        held = len(self._stored() or ())
        say("agentapi", "restarts, keeping no state file (claude-code's default)")
        skipped = self.narrator.seen["snapshot.skipped"]
        await self.agentapi_server.stop()
        a.restart()
        await self.agentapi_server.start()
        await self._until_heard("agentapi.connected", count=2)
        a.show_first_screen()
        say("agentapi", "holds message 0 alone again: the agent's welcome screen")
        # The sidecar weighs what agentapi holds now against what Coder has.
        await self._until_heard("snapshot.skipped", count=skipped + 1)
        self.restart_kept = len(self._stored() or ()) == held
        self.narrator.aside(
            f"Coder still holds the {held} messages from before the restart: a conversation "
            "that says less is never posted over it"
            if self.restart_kept
            else "Coder's copy changed after the restart"
        )

    def _relayed(self, state: str) -> Callable[[], bool]:
        return lambda: bool(self.coder.app_statuses) and self.coder.app_statuses[-1].state == state

    # --- the end ----------------------------------------------------------------------

    async def _print_task_log(self) -> None:
        url = f"{self.coder_server.url}/api/v2/tasks/me/{self.coder.task_id}/logs"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            body = await resp.json()
        print(file=self.out)
        print(f"Coder's task log (GET /api/v2/tasks/me/{self.coder.task_id}/logs):", file=self.out)
        for entry in body["logs"]:
            text = " ".join(entry["content"].split())
            if len(text) > _LOG_CHARS:
                text = text[: _LOG_CHARS - 1] + "…"
            print(f"  [{entry['type']:<6}] {text}", file=self.out)
        print(file=self.out, flush=True)

    def _summarize(self, wall: float) -> None:
        stored = self._stored() or []
        accepted = self.coder.accepted_snapshot_posts()
        last = accepted[-1]
        print(
            f"demo: {len(accepted)} snapshots posted (newest {len(stored)} messages, "
            f"{len(last.body):,} bytes), {len(self.coder.app_statuses)} statuses relayed, "
            f"restart {'kept the earlier conversation' if self.restart_kept else 'lost it'}, "
            f"final flush delivered agentapi's newest words; {wall:.1f} s",
            file=self.out,
            flush=True,
        )

    def _failed(self, why: str) -> int:
        print(f"demo: FAILED: {why}", file=self.out)
        print("the daemon's log, last lines:", file=self.out)
        for line in self.log.getvalue().splitlines()[-20:]:
            print(f"  {line}", file=self.out)
        with contextlib.suppress(OSError, ValueError):
            self.out.flush()
        return 1

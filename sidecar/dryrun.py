"""`run --dry-run`: the daemon against a real agentapi, with Coder replaced by a printer.

For a template author wiring the sidecar into a workspace without a Coder at hand: the
daemon mirrors agentapi as it always does, and each snapshot and status it would send is
printed (its size, its message ids, the status line) instead of sent. Nothing reaches
Coder, no token is needed, and nothing is kept in the state directory: a real daemon run
later must not take a printed snapshot for one Coder holds.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Final, TextIO
from uuid import UUID

from sidecar.coder.client import Result
from sidecar.coder.outcomes import Outcome
from sidecar.models import AppState

__all__ = ["DRY_RUN_TASK", "DryRunCoder"]

_PREVIEW_CHARS: Final = 60
# The task a dry run names when CODER_TASK_ID is unset (Coder sets it in a task's
# workspace; a template author trying the wiring has none).
DRY_RUN_TASK: Final = UUID(int=0)


class DryRunCoder:
    """What the pipeline needs of a Coder client: every call printed, and answered as
    Coder answers one it accepts."""

    __slots__ = ("_clock", "_out", "snapshots", "statuses")

    def __init__(self, out: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._clock = clock
        self.snapshots = 0
        self.statuses = 0

    async def post_log_snapshot(
        self, task_id: UUID, body: bytes, *, timeout: float | None = None
    ) -> Result:
        self.snapshots += 1
        messages = json.loads(body)["messages"]
        ids = [m["id"] for m in messages]
        newest = messages[-1] if messages else None
        preview = "" if newest is None else f"; newest ({newest['role']}): {_preview(newest)}"
        self._say(
            f"snapshot #{self.snapshots} would be posted for task {task_id}: "
            f"{len(messages)} messages (ids {_span(ids)}), {len(body):,} bytes{preview}"
        )
        return Result(Outcome.OK, 204, "", None, 0.0)

    async def patch_app_status(
        self, *, slug: str, state: AppState, message: str, uri: str, timeout: float | None = None
    ) -> Result:
        self.statuses += 1
        self._say(f"status would be relayed for app {slug!r}: {state} {json.dumps(message)}")
        return Result(Outcome.OK, 200, "", None, 0.0, body=b"{}")

    async def reload_token(self) -> bool:
        return False

    async def server_version(self) -> str | None:
        return "(dry run)"

    def _say(self, text: str) -> None:
        # A reader that went away ends the printing, never the daemon.
        with contextlib.suppress(OSError, ValueError):
            print(f"dry-run: {text}", file=self._out, flush=True)


def _span(ids: list[int]) -> str:
    if not ids:
        return "none"
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]}–{ids[-1]}"


def _preview(message: dict[str, str]) -> str:
    line = message["content"].strip().splitlines()[-1:] or [""]
    text = line[0]
    return json.dumps(text if len(text) <= _PREVIEW_CHARS else "…" + text[-_PREVIEW_CHARS:])

"""The demo's narrator: the daemon's log events told as sentences a person reads.

It hears every event through the log's tap (sidecar.log.configure) and prints one line
for each that shows the sidecar doing its job: a snapshot posted (how many messages, how
large, what Coder answered), a status relayed, agentapi lost and found, the stop and its
final flush. Warnings and errors are always told. What Coder holds is read from the
callables it is handed, so it needs no knowledge of where Coder runs.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TextIO

from sidecar.history import MARKER

__all__ = ["Narrator", "one_line"]

_WHO_WIDTH: Final = 8
_QUOTE_CHARS: Final = 72
# Fields every event carries, not worth repeating in a warning's sentence.
_NOISE: Final = frozenset(("event", "level", "timestamp", "hint"))


def one_line(text: str, limit: int = _QUOTE_CHARS) -> str:
    """`text` on one line, its end kept when it is long (a streaming answer's news is at
    its end), quoted."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = "…" + flat[-(limit - 1) :]
    return f"“{flat}”"


class Narrator:
    """`stored()`: the messages Coder holds for the task (None: nothing yet);
    `last_status()`: the message of the newest status Coder accepted."""

    def __init__(
        self,
        out: TextIO,
        *,
        stored: Callable[[], Sequence[Mapping[str, Any]] | None],
        last_status: Callable[[], str | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._stored = stored
        self._last_status = last_status
        self._clock = clock
        self._started = clock()
        self.seen: collections.Counter[str] = collections.Counter()
        self.listeners: list[Callable[[str], None]] = []

    def say(self, who: str, text: str) -> None:
        """One line of the story: when, who, what."""
        elapsed = self._clock() - self._started
        with contextlib.suppress(OSError, ValueError):  # a closed terminal ends the story
            print(f"[{elapsed:5.1f}s] {who:<{_WHO_WIDTH}} {text}", file=self._out, flush=True)

    def aside(self, text: str) -> None:
        """A line that explains the one before it."""
        with contextlib.suppress(OSError, ValueError):
            print(f"{'':>{_WHO_WIDTH + 9}}{text}", file=self._out, flush=True)

    def __call__(self, event: Mapping[str, Any]) -> None:
        """The log's tap: tell `event` if it is worth telling, then let listeners know."""
        name = str(event.get("event", ""))
        self.seen[name] += 1
        text = self._sentence(name, event)
        if text is not None:
            self.say("sidecar", text)
        for listener in self.listeners:
            listener(name)

    def _sentence(self, name: str, e: Mapping[str, Any]) -> str | None:
        if name == "daemon.started":
            return (
                f"started: watching agentapi at {e['agentapi']}, snapshots for task "
                f"{e['task']}, statuses for app {e['relay_slug']!r}"
            )
        if name == "agentapi.connected":
            return "connected to agentapi's event stream: mirroring the conversation"
        if name in ("agentapi.stream_ended", "agentapi.stream_broken"):
            return "agentapi's event stream ended: reconnecting"
        if name == "agentapi.unreachable":
            return (
                "agentapi does not answer: retrying; the agent's status is left as it was "
                "for the grace period (SIDECAR_RELAY_GRACE)"
            )
        if name == "snapshot.posted":
            which = "final snapshot" if self.seen["shutdown.requested"] else "snapshot"
            return (
                f"{which} posted: {self._describe_stored()}, {e['bytes']:,} bytes → "
                f"HTTP {e['status']} in {e['latency_ms']:.0f} ms"
            )
        if name == "relay.patched":
            message = self._last_status()
            said = f" {one_line(message)}" if message else ""
            return f"status relayed: {e['state']}{said} → HTTP {e['status']}"
        if name == "shutdown.requested":
            why = e.get("signal") or e.get("reason")
            return f"{why} received: stop reading agentapi, flush the final snapshot"
        if name == "shutdown.complete":
            return f"stopped: final snapshot {e['snapshot']}"
        level = e.get("level")
        if level in ("warning", "error", "critical"):
            fields = ", ".join(f"{k}={v}" for k, v in e.items() if k not in _NOISE)
            return f"{level}: {name}" + (f" ({fields})" if fields else "")
        return None

    def _describe_stored(self) -> str:
        messages = self._stored() or ()
        markers = sum(1 for m in messages if m.get("content") == MARKER)
        text = f"{len(messages)} message{'' if len(messages) == 1 else 's'}"
        if markers:
            text += " (the earlier conversation, a restart marker, then the new one)"
        return text

"""Incremental Server-Sent Events parser (WHATWG "event stream interpretation").

Pure: bytes in, frames out. It sits on the hot path of the /events reader, so the work
per chunk is a handful of C-level string operations (decode, replace, split) and the
Python loop runs once per *line*, never once per byte. A line that spans many chunks is
kept as a list of pieces and joined once, so a 1 MB `data:` line costs linear time.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser"]

_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched frame. `event` is "message" when the frame named no type."""

    event: str
    data: str


class SSEParser:
    """Feed raw chunks as they arrive, at any split point; get back complete frames.

    Fields other than `event` and `data` (`id`, `retry`, anything unknown) are ignored:
    agentapi sends no ids and the reconnect policy is ours, not the server's. An event
    left incomplete when the stream ends is never dispatched, as the standard requires.
    """

    __slots__ = ("_data", "_decoder", "_event", "_partial", "_skip_lf", "_started")

    def __init__(self) -> None:
        # The incremental decoder holds back a multi-byte character split across chunks;
        # "replace" keeps one bad byte from killing a stream that is otherwise fine.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # a BOM is only skipped at the very start of the stream
        self._skip_lf = False  # previous text ended in CR: a leading LF completes a CRLF
        self._partial: list[str] = []  # pieces of the current, unterminated line
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == _BOM:
                text = text[1:]
                if not text:
                    return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        if "\r" in text:
            # A trailing CR already ends its line; remember it so that the LF of a CRLF
            # split across chunks does not count as a second (blank) line.
            self._skip_lf = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            self._partial.append(text)
            return []
        lines = text.split("\n")
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = "".join(self._partial)
        tail = lines.pop()
        self._partial = [tail] if tail else []
        return self._process(lines)

    def _process(self, lines: list[str]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        data = self._data
        event = self._event
        for line in lines:
            if not line:
                if data:
                    out.append(SSEEvent(event or "message", "\n".join(data)))
                    data = []
                event = ""
                continue
            # Fast paths for the two lines agentapi actually sends.
            if line.startswith("data: "):
                data.append(line[6:])
                continue
            if line.startswith("event: "):
                event = line[7:]
                continue
            if line[0] == ":":
                continue
            field, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
        self._data = data
        self._event = event
        return out

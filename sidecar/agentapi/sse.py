"""Incremental Server-Sent Events parser (WHATWG "event stream interpretation").

Pure: bytes in, frames out. It sits on the hot path of the /events reader, so the work
per chunk is a handful of C-level string operations (decode, replace, split) and the
Python loop runs once per *line*, never once per byte. A line that spans many chunks is
kept as a list of pieces and joined once, so a 1 MB `data:` line costs linear time.

Memory is bounded whatever the stream does. A frame is charged the data lines it gathered
(each its length plus a fixed allowance for the object holding it) and the line being
read (whole or still pending across chunks); once that passes `max_frame` the frame is
dropped, `feed` raises `FrameTooLarge`, and the parser skips the rest of that frame and
goes on with the next one. Whether a frame is dropped does not depend on how the stream
was cut into chunks.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_MAX_FRAME", "FrameTooLarge", "SSEEvent", "SSEParser"]

_BOM = "\ufeff"

# A message of an agent that dumped a big file is real: 10 MB lines must keep working.
DEFAULT_MAX_FRAME: Final = 16 * 1024 * 1024
# Each data line is charged this much on top of its value's length: a str object and its
# list slot cost ~60 bytes, so a frame of a million empty `data:` lines is held to the cap.
_LINE_COST: Final = 64
_PREFIXED_LINE_COST: Final = _LINE_COST - len("data: ")
# Pieces of a pending line shorter than this are merged as they arrive, so a line that
# trickles in a byte per chunk does not cost an object per byte.
_SMALL_PIECE: Final = 4096


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched frame. `event` is "message" when the frame named no type."""

    event: str
    data: str


class FrameTooLarge(Exception):
    """A frame outgrew the cap and was dropped.

    `frames` are the complete frames the same chunk carried besides it (before and after
    the dropped one): they are valid and the caller should still handle them. The parser
    stays usable: it discards input up to the end of the dropped frame.
    """

    def __init__(self, frames: list[SSEEvent], limit: int) -> None:
        super().__init__(f"an SSE frame exceeded {limit} characters and was dropped")
        self.frames = frames
        self.limit = limit


class SSEParser:
    """Feed raw chunks as they arrive, at any split point; get back complete frames.

    Fields other than `event` and `data` (`id`, `retry`, anything unknown) are ignored:
    agentapi sends no ids and the reconnect policy is ours, not the server's. An event
    left incomplete when the stream ends is never dispatched, as the standard requires.
    """

    __slots__ = (
        "_data",
        "_decoder",
        "_discarding",
        "_dropped",
        "_event",
        "_max",
        "_midline",
        "_partial",
        "_pending",
        "_size",
        "_skip_lf",
        "_started",
    )

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError(f"max_frame must be positive, got {max_frame}")
        # The incremental decoder holds back a multi-byte character split across chunks;
        # "replace" keeps one bad byte from killing a stream that is otherwise fine.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # a BOM is only skipped at the very start of the stream
        self._skip_lf = False  # previous text ended in CR: a leading LF completes a CRLF
        self._partial: list[str] = []  # pieces of the current, unterminated line
        self._pending = 0  # characters in _partial
        self._event = ""
        self._data: list[str] = []
        self._size = 0  # what _data costs against the cap
        self._max = max_frame
        self._dropped = 0
        self._discarding = False  # inside a dropped frame: wait for its blank line
        self._midline = False  # while discarding: the last text did not end a line

    @property
    def max_frame(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """What the current frame holds, as counted against the cap (never above it)."""
        return self._pending + self._size

    @property
    def dropped(self) -> int:
        """Frames dropped for exceeding the cap so far."""
        return self._dropped

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The frames `chunk` completed. Raises FrameTooLarge when it dropped one."""
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
        if self._discarding:
            text = self._discard(text)
            if not text:
                return []
        dropped = self._dropped
        if "\n" not in text:
            self._append(text)
            frames: list[SSEEvent] = []
        else:
            frames = self._lines(text)
        if self._dropped != dropped:
            raise FrameTooLarge(frames, self._max)
        return frames

    def _append(self, text: str) -> None:
        parts = self._partial
        if parts and len(text) < _SMALL_PIECE and len(parts[-1]) < _SMALL_PIECE:
            parts[-1] += text
        else:
            parts.append(text)
        self._pending += len(text)
        if self._pending + self._size > self._max:
            self._drop_pending()

    def _lines(self, text: str) -> list[SSEEvent]:
        lines = text.split("\n")
        # The most this chunk can add to any frame: if even that fits, the cheap loop
        # (no accounting per line) does.
        fits = self._size + self._pending + len(text) + len(lines) * _LINE_COST <= self._max
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = "".join(self._partial)
        tail = lines.pop()
        # Let go of the pieces before processing: a 10 MB line is held twice already
        # (joined, and as the data value cut from it).
        self._partial = []
        self._pending = 0
        out = self._process(lines) if fits else self._process_counted(lines)
        if self._discarding:
            # The dropped frame did not end in this chunk: the tail is part of it.
            self._midline = bool(tail)
        elif tail:
            self._partial = [tail]
            self._pending = len(tail)
            if self._pending + self._size > self._max:
                self._drop_pending()
        return out

    def _process(self, lines: list[str]) -> list[SSEEvent]:
        """The hot path, for chunks that cannot overflow: the frame left open at the end
        is charged once, not line by line."""
        out: list[SSEEvent] = []
        data = self._data
        charged = len(data)
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
        if data is not self._data:
            self._size = 0
            charged = 0
        if len(data) > charged:
            fresh = data[charged:]
            self._size += sum(map(len, fresh)) + len(fresh) * _LINE_COST
        self._data = data
        self._event = event
        return out

    def _process_counted(self, lines: list[str]) -> list[SSEEvent]:
        """`_process` for a chunk that may overflow: every data line is charged as it
        comes, and a frame over the cap is dropped right there."""
        out: list[SSEEvent] = []
        data = self._data
        event = self._event
        size = self._size
        limit = self._max
        it = iter(lines)
        for line in it:
            if not line:
                if data:
                    out.append(SSEEvent(event or "message", "\n".join(data)))
                    data = []
                event = ""
                size = 0
                continue
            # Any line counts while it is read, whatever its field: the same frame is
            # dropped whether its long line came in one chunk or pending over many.
            if size + len(line) > limit:
                data, event, size = [], "", 0
                self._skip_frame(it)
                continue
            if line.startswith("data: "):
                size += len(line) + _PREFIXED_LINE_COST
                if size > limit:
                    data, event, size = [], "", 0
                    self._skip_frame(it)
                    continue
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
                size += len(value) + _LINE_COST
                if size > limit:
                    data, event, size = [], "", 0
                    self._skip_frame(it)
                    continue
                data.append(value)
            elif field == "event":
                event = value
        self._data = data
        self._event = event
        self._size = size
        return out

    def _skip_frame(self, lines: Iterator[str]) -> None:
        """Drop the frame being read: consume `lines` up to its blank line, or all of
        them and keep discarding in the next chunks."""
        self._dropped += 1
        self._discarding = True
        for line in lines:
            if not line:
                self._discarding = False
                return

    def _drop_pending(self) -> None:
        """The unterminated line pushed the frame over the cap: drop both."""
        self._dropped += 1
        self._partial = []
        self._pending = 0
        self._data = []
        self._event = ""
        self._size = 0
        self._discarding = True
        self._midline = True

    def _discard(self, text: str) -> str:
        """Skip `text` up to and including the blank line that ends the dropped frame;
        what follows it ("" while the frame goes on)."""
        if not self._midline and text[0] == "\n":
            self._discarding = False
            return text[1:]
        end = text.find("\n\n")
        if end < 0:
            self._midline = text[-1] != "\n"
            return ""
        self._discarding = False
        return text[end + 2 :]

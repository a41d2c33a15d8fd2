"""Short human summaries of terminal text, for the app-status message.

agentapi hands over messages as the agent's terminal showed them: colour and cursor
escapes, window-title sequences, boxes around the input prompt, spinner glyphs and prompt
markers. The Tasks UI shows one short line, so this module keeps only what a person
would read there and fits it into Coder's byte limit.

Pure and bounded: a summary looks at lines from one end and stops at the first one that
says something, and no single line is cleaned beyond `_SCAN_CHARS` characters.
"""

from __future__ import annotations

import re
from typing import Final

from sidecar.models import APP_STATUS_MESSAGE_MAX_BYTES

__all__ = [
    "ELLIPSIS",
    "clean_line",
    "fit_bytes",
    "is_meaningful",
    "summarize_first_line",
    "summarize_last_line",
    "summarize_text",
]

ELLIPSIS: Final = "…"
_ELLIPSIS_BYTES: Final = len(ELLIPSIS.encode())

# A summary is at most 160 bytes, so a few thousand characters of one line are plenty even
# when escape sequences take up most of them; the rest of a megabyte line is never read.
_SCAN_CHARS: Final = 4096

# ECMA-48 sequences. String controls (OSC: window title, hyperlinks; DCS, SOS, PM, APC)
# run to BEL or ST; an unterminated one swallows the rest of the line, as a terminal would.
_ESCAPES: Final = re.compile(
    "|".join(
        (
            r"\x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?",  # OSC
            r"\x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?",  # DCS, SOS, PM, APC
            r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]",  # CSI: colours, cursor moves, erases
            r"\x1b[ -/]*[0-~]",  # the rest: charsets, keypad modes, save/restore cursor
        )
    )
)
# C0 and C1 controls (tab and newline are handled before), invisible bidi overrides that
# could disguise the text, BOM/zero-width space, and lone surrogates that JSON can carry
# but UTF-8 cannot encode.
_CONTROLS: Final = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)
# Box drawing and block elements (input boxes, rules, progress bars) and braille patterns
# (the common spinners) carry no words anywhere in a line.
_DECORATION: Final = re.compile("[\u2500-\u259f\u2800-\u28ff]+")
# At the start of a line: spinner and bullet glyphs of agent TUIs, and prompt or list
# markers when a space follows them ("> fix it", "$ make", "- done", "# Summary").
_LEADING: Final = re.compile(
    r"\A(?:[·•∙⋅●○◯◉◎◐◑◒◓◴◵◶◷✢✳✶✻✽✺✦✧⏺⎿⏵⏸▶▸►❯›»]+\s*|[>$#%*+-]+(?:\s+|\Z))+"
)
_WORD_CHAR: Final = re.compile(r"[^\W_]")  # a letter or digit in any script
_LAST_WORD_CHAR: Final = re.compile(r"[^\W_](?=[\W_]*\Z)")  # \Z: the search's endpos
# The last line is usually near the end; growing chunks still cross a long blank run fast.
_BACKWARD_CHUNK: Final = 256
_BACKWARD_CHUNK_MAX: Final = 65_536
_SURROGATES: Final = re.compile("[\ud800-\udfff]")


def clean_line(line: str) -> str:
    """One terminal line as plain text: escapes, controls and decorations removed,
    leading prompt/spinner/bullet markers stripped, whitespace collapsed."""
    if "\r" in line:
        # A carriage return lets the terminal overwrite the line: what is left visible is
        # the last segment that wrote anything.
        segments = [s for s in line.split("\r") if s.strip()]
        line = segments[-1] if segments else ""
    line = line[:_SCAN_CHARS]
    if "\x1b" in line or "\x9b" in line:
        line = _ESCAPES.sub("", line)
    line = _CONTROLS.sub("", line.replace("\t", " "))
    line = _DECORATION.sub(" ", line)
    line = " ".join(line.split())
    return _LEADING.sub("", line, count=1).strip()


def is_meaningful(cleaned: str) -> bool:
    """Says something: at least one letter or digit, not just punctuation or emoji."""
    return _WORD_CHAR.search(cleaned) is not None


def fit_bytes(text: str, limit: int = APP_STATUS_MESSAGE_MAX_BYTES) -> str:
    """`text` if its UTF-8 encoding fits in `limit` bytes; otherwise its longest prefix
    that fits together with a trailing '…', cut on a code-point boundary. Lone surrogates
    become U+FFFD so the result always encodes. Below 3 bytes there is no room for the
    ellipsis and the bare prefix is returned."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if _SURROGATES.search(text) is not None:
        text = _SURROGATES.sub("\ufffd", text)
    if len(text) * 4 <= limit:  # no code point takes more than 4 bytes
        return text
    data = text.encode()
    if len(data) <= limit:
        return text
    if limit < _ELLIPSIS_BYTES:
        return data[:limit].decode(errors="ignore")
    # Cutting bytes may split the last code point; "ignore" drops only that partial tail,
    # since everything before it is valid UTF-8.
    head = data[: limit - _ELLIPSIS_BYTES].decode(errors="ignore").rstrip()
    return head + ELLIPSIS


# Cleaning only removes characters, so a line without a letter or digit never becomes
# meaningful: the summaries let the regex engine skip such lines (blank lines, rules,
# boxes) at C speed and clean only lines that may say something.


def summarize_first_line(text: str, limit: int = APP_STATUS_MESSAGE_MAX_BYTES) -> str:
    """The first meaningful line of `text`, cleaned and fitted; "" when there is none."""
    pos = 0
    while (found := _WORD_CHAR.search(text, pos)) is not None:
        start, stop = _line_around(text, found.start())
        line = clean_line(text[start : min(stop, start + _SCAN_CHARS)])
        if is_meaningful(line):
            return fit_bytes(line, limit)
        pos = stop + 1
    return ""


def summarize_last_line(text: str, limit: int = APP_STATUS_MESSAGE_MAX_BYTES) -> str:
    """The last meaningful line of `text`, cleaned and fitted; "" when there is none."""
    end = len(text)
    while (pos := _last_word_char(text, end)) >= 0:
        start, stop = _line_around(text, pos)
        line = clean_line(text[start : min(stop, start + _SCAN_CHARS)])
        if is_meaningful(line):
            return fit_bytes(line, limit)
        end = start
    return ""


def _line_around(text: str, pos: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, pos) + 1
    stop = text.find("\n", pos)
    return start, len(text) if stop < 0 else stop


def _last_word_char(text: str, end: int) -> int:
    """Index of the last letter or digit in text[:end], or -1."""
    chunk = _BACKWARD_CHUNK
    while end > 0:
        start = max(0, end - chunk)
        found = _LAST_WORD_CHAR.search(text, start, end)
        if found is not None:
            return found.start()
        end = start
        chunk = min(chunk * 2, _BACKWARD_CHUNK_MAX)
    return -1


def summarize_text(text: str, limit: int = APP_STATUS_MESSAGE_MAX_BYTES) -> str:
    """All meaningful lines of `text` joined by spaces, cleaned and fitted: for error
    messages, which may be wrapped at the terminal's width."""
    parts: list[str] = []
    size = 0
    pos = 0
    # Every character is at least one byte: once more characters than `limit` are
    # collected the result is cut anyway, so later lines are never looked at.
    while size <= limit and (found := _WORD_CHAR.search(text, pos)) is not None:
        start, stop = _line_around(text, found.start())
        line = clean_line(text[start : min(stop, start + _SCAN_CHARS)])
        if is_meaningful(line):
            parts.append(line)
            size += len(line) + 1
        pos = stop + 1
    return fit_bytes(" ".join(parts), limit)

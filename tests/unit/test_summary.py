"""Terminal text → one short line for the app-status message (sidecar.summary)."""

from __future__ import annotations

import os
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NamedTuple, TypeAlias

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sidecar
from sidecar.models import APP_STATUS_MESSAGE_MAX_BYTES
from sidecar.summary import (
    ELLIPSIS,
    clean_line,
    fit_bytes,
    is_meaningful,
    summarize_first_line,
    summarize_last_line,
    summarize_text,
)

LIMIT = APP_STATUS_MESSAGE_MAX_BYTES


def nbytes(text: str) -> int:
    return len(text.encode())


# How much work a summary takes, measured so that (unlike a duration) it comes out the
# same on any machine: the lines of sidecar code run catch Python-level scans, the peak
# of memory allocated catches whole-text copies (split, splitlines, slices) made in C.
_SIDECAR = str(Path(sidecar.__file__).parent) + os.sep
_Tracer: TypeAlias = Callable[[FrameType, str, object], "_Tracer | None"]


class Work(NamedTuple):
    steps: int  # lines of sidecar code run
    peak: int  # the most bytes it held allocated at once


def work(summarize: Callable[[str], str], text: str) -> tuple[str, Work]:
    """`summarize(text)`, and the work it took."""
    steps = 0

    def count(frame: FrameType, event: str, arg: object) -> _Tracer:
        nonlocal steps
        if event == "line":
            steps += 1
        return count

    def enter(frame: FrameType, event: str, arg: object) -> _Tracer | None:
        return count if frame.f_code.co_filename.startswith(_SIDECAR) else None

    tracing = tracemalloc.is_tracing()  # e.g. python -X tracemalloc: left running
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    previous = sys.gettrace()
    sys.settrace(enter)
    try:
        result = summarize(text)
    finally:
        sys.settrace(previous)
        _, peak = tracemalloc.get_traced_memory()
        if not tracing:
            tracemalloc.stop()
    return result, Work(steps, peak - before)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("plain words", "plain words", id="plain"),
        pytest.param("\x1b[31mError\x1b[0m: \x1b[1;4mfailed\x1b[m", "Error: failed", id="sgr"),
        pytest.param("\x1b[38;5;208morange\x1b[39m", "orange", id="sgr-256"),
        pytest.param("\x1b[38;2;255;0;0mred\x1b[0m", "red", id="sgr-truecolor"),
        pytest.param("\x1b[2K\x1b[1G\x1b[?25lDone\x1b[?25h", "Done", id="cursor-and-erase"),
        pytest.param("\x1b[10;5HAt\x1b[3Cspot\x1b[A", "Atspot", id="cursor-moves"),
        pytest.param("\x1b7saved\x1b8\x1b(B\x1b=", "saved", id="esc-save-charset-keypad"),
        pytest.param("\x1b]0;claude — repo\x07Ready", "Ready", id="osc-title-bel"),
        pytest.param("\x1b]2;title\x1b\\Ready", "Ready", id="osc-title-st"),
        pytest.param("\x1b]8;;https://x.test\x1b\\link\x1b]8;;\x1b\\ here", "link here", id="osc8"),
        pytest.param("before\x1b]0;never terminated", "before", id="osc-unterminated"),
        pytest.param("\x1bP+q544e\x1b\\text", "text", id="dcs"),
        pytest.param("\x9b31mC1 csi\x9b0m", "C1 csi", id="c1-csi"),
        pytest.param("╭──────────────╮", "", id="box-top"),
        pytest.param("│ > fix the bug          │", "fix the bug", id="box-with-prompt"),
        pytest.param("╰──────────────╯", "", id="box-bottom"),
        pytest.param("╭─ hello", "hello", id="box-corner-prefix"),
        pytest.param("████▌ 50%", "50%", id="block-progress"),
        pytest.param("⠋ Working", "Working", id="braille-spinner"),
        pytest.param("✻ Thinking…", "Thinking…", id="claude-spinner"),
        pytest.param("⏺ Fixed the parser", "Fixed the parser", id="claude-bullet"),
        pytest.param("  ⎿  Read 3 files", "Read 3 files", id="claude-tool-result"),
        pytest.param("> hello", "hello", id="prompt-gt"),
        pytest.param("❯ hello", "hello", id="prompt-chevron"),
        pytest.param(">>> print(1)", "print(1)", id="python-prompt"),
        pytest.param("$ make test", "make test", id="shell-prompt"),
        pytest.param("- done", "done", id="list-dash"),
        pytest.param("* done", "done", id="list-star"),
        pytest.param("# Summary", "Summary", id="heading"),
        pytest.param("-5 degrees", "-5 degrees", id="minus-kept"),
        pytest.param("#123 merged", "#123 merged", id="issue-ref-kept"),
        pytest.param("a > b > c", "a > b > c", id="inner-gt-kept"),
        pytest.param("50% done", "50% done", id="percent-kept"),
        pytest.param("progress 10%\rprogress 100%", "progress 100%", id="cr-overwrite"),
        pytest.param("windows line\r", "windows line", id="crlf-rest"),
        pytest.param("a\x00b\x07c\x7fd", "abcd", id="c0-del"),
        pytest.param("tab\tseparated", "tab separated", id="tab"),
        pytest.param("  many    spaces\u00a0here  ", "many spaces here", id="whitespace"),
        pytest.param("\u202eevil\u202c text", "evil text", id="bidi-override"),
        pytest.param("lone \ud800 surrogate", "lone surrogate", id="surrogate"),
        pytest.param("👨\u200d👩\u200d👧 family", "👨\u200d👩\u200d👧 family", id="zwj-kept"),
        pytest.param("日本語のテキスト", "日本語のテキスト", id="cjk"),
    ],
)
def test_clean_line(line: str, expected: str) -> None:
    assert clean_line(line) == expected


@pytest.mark.parametrize(
    ("text", "meaningful"),
    [
        ("", False),
        ("   ", False),
        ("----", False),
        ("...", False),
        ("🎉", False),
        ("___", False),
        ("ok", True),
        ("7", True),
        ("完了", True),
    ],
)
def test_is_meaningful(text: str, meaningful: bool) -> None:
    assert is_meaningful(text) is meaningful


CLAUDE_SCREEN = (
    "\x1b]0;✳ Claude Code\x07"
    "╭──────────────────────────────────────╮\n"
    "│ > \x1b[1mrefactor the config loader\x1b[0m │\n"
    "│   and add tests                      │\n"
    "╰──────────────────────────────────────╯\n"
    "\n"
    "⏺ I'll start by reading config.py.\n"
    "  ⎿  Read 120 lines\n"
    "\n"
    "⏺ \x1b[32mDone:\x1b[0m the loader is split in two and 14 tests pass.\n"
    "\n"
    "───────────────────────────────────────\n"
    "> \n"
    "───────────────────────────────────────\n"
)


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        pytest.param("", "", "", id="empty"),
        pytest.param("\n\n \n", "", "", id="blank"),
        pytest.param("───\n╭─╮\n│ │\n╰─╯", "", "", id="decoration-only"),
        pytest.param("one line", "one line", "one line", id="single"),
        pytest.param("first\nmiddle\nlast", "first", "last", id="three"),
        pytest.param("\n\n  first  \n\n", "first", "first", id="padded"),
        pytest.param("a\r\nb\r\n", "a", "b", id="crlf"),
        pytest.param(
            CLAUDE_SCREEN,
            "refactor the config loader",
            "Done: the loader is split in two and 14 tests pass.",
            id="claude-screen",
        ),
        pytest.param(
            "Fixed it.\n\n\x1b[2m───────\x1b[0m\n> \n\x1b[?25h",
            "Fixed it.",
            "Fixed it.",
            id="trailing-prompt-box",
        ),
    ],
)
def test_first_and_last_line(text: str, first: str, last: str) -> None:
    assert summarize_first_line(text) == first
    assert summarize_last_line(text) == last


def test_summarize_text_joins_wrapped_lines() -> None:
    text = "Error: could not reach\n  the model provider\n\n(retrying)"
    assert summarize_text(text) == "Error: could not reach the model provider (retrying)"


def test_summarize_text_stops_reading_once_full() -> None:
    def text(more_lines: int) -> str:
        return "word " * 50 + "\n" + "\x1b[31mmore\n" * more_lines

    result, cost = work(summarize_text, text(200_000))
    # Ten times fewer lines after the point where the summary is full: the same work,
    # and never a copy of the text.
    assert cost.steps == work(summarize_text, text(20_000))[1].steps
    assert cost.peak < len(text(200_000)) // 20
    assert result.startswith("word word")
    assert result.endswith(ELLIPSIS)
    assert nbytes(result) <= LIMIT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("a" * 160, "a" * 160, id="ascii-exactly-160"),
        pytest.param("a" * 161, "a" * 157 + ELLIPSIS, id="ascii-161"),
        pytest.param("a" * 157 + "€", "a" * 157 + "€", id="euro-ends-at-160"),
        pytest.param("a" * 158 + "€", "a" * 157 + ELLIPSIS, id="euro-crosses-160"),
        pytest.param("a" * 156 + "€€", "a" * 156 + ELLIPSIS, id="euro-split-at-157"),
        pytest.param("a" * 155 + "€€", "a" * 155 + ELLIPSIS, id="euro-straddles-cut"),
        pytest.param("a" * 154 + "€" + "bbbb", "a" * 154 + "€" + ELLIPSIS, id="euro-before-cut"),
        pytest.param("a" * 156 + "😀", "a" * 156 + "😀", id="emoji-ends-at-160"),
        pytest.param("a" * 157 + "😀", "a" * 157 + ELLIPSIS, id="emoji-crosses-160"),
        pytest.param("😀" * 41, "😀" * 39 + ELLIPSIS, id="emoji-only"),
        pytest.param("漢" * 53, "漢" * 53, id="cjk-159-bytes"),
        pytest.param("漢" * 60, "漢" * 52 + ELLIPSIS, id="cjk-180-bytes"),
        pytest.param("word " * 40, "word " * 31 + "wo" + ELLIPSIS, id="no-space-before-dots"),
        pytest.param("a" * 153 + "    bbbbbbbb", "a" * 153 + ELLIPSIS, id="trailing-space-trim"),
    ],
)
def test_fit_bytes_at_the_160_byte_boundary(text: str, expected: str) -> None:
    result = fit_bytes(text)
    assert result == expected
    assert nbytes(result) <= LIMIT


def test_fit_bytes_small_limits() -> None:
    assert fit_bytes("héllo", 0) == ""
    assert fit_bytes("héllo", 2) == "h"  # no room for the ellipsis; é would not fit
    assert fit_bytes("héllo", 3) == ELLIPSIS
    assert fit_bytes("héllo", 4) == "h" + ELLIPSIS
    assert fit_bytes("héllo", 6) == "héllo"
    with pytest.raises(ValueError, match="limit"):
        fit_bytes("x", -1)


def test_fit_bytes_replaces_lone_surrogates() -> None:
    result = fit_bytes("bad \udcff byte")
    assert result == "bad \ufffd byte"
    result.encode()  # must not raise


@given(text=st.text(), limit=st.integers(min_value=0, max_value=400))
def test_fit_bytes_properties(text: str, limit: int) -> None:
    result = fit_bytes(text, limit)
    encoded = result.encode()  # always valid UTF-8
    assert len(encoded) <= limit
    safe = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if len(safe.encode()) <= limit:
        assert result == safe
    else:
        head = result.removesuffix(ELLIPSIS) if limit >= 3 else result
        assert result.endswith(ELLIPSIS) or limit < 3
        assert safe.startswith(head)


@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=2000))
def test_summaries_are_short_and_plain(text: str) -> None:
    for summary in (summarize_first_line(text), summarize_last_line(text), summarize_text(text)):
        assert nbytes(summary) <= LIMIT
        assert "\n" not in summary
        assert "\x1b" not in summary
        assert summary == summary.strip()
        assert summary == "" or is_meaningful(summary)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x" * 2_000_000, id="one-2MB-line"),
        pytest.param("\x1b[31m" * 500_000 + "tail", id="escapes-only-line"),
        pytest.param("\n" * 2_000_000 + "end", id="2M-blank-lines"),
        pytest.param(("─" * 80 + "\n" + "╰" + "─" * 78 + "╯\n") * 10_000, id="rules-only"),
    ],
)
def test_very_long_lines_are_cut_quickly(text: str) -> None:
    first, first_cost = work(summarize_first_line, text)
    last, last_cost = work(summarize_last_line, text)
    for cost in (first_cost, last_cost):
        # Far below a step per line (up to 2,000,000 here) or per thousand characters:
        # such input is skipped by the regex engine. And no copy of a line or of the
        # text: a line is cleaned only up to a bounded prefix.
        assert cost.steps < len(text) // 1000
        assert cost.peak < len(text) // 20
    for summary in (first, last):
        assert nbytes(summary) <= LIMIT
    if text.startswith("x"):
        assert first == "x" * 157 + ELLIPSIS
        assert last == first
    if text.endswith("end"):
        assert first == last == "end"
    if text.startswith("─"):
        assert first == last == ""


def test_last_line_of_a_long_reply_reads_only_the_tail() -> None:
    def reply(lines: int) -> str:
        return "\n".join(f"line {i}" for i in range(lines)) + "\n\n> \n"

    last, last_cost = work(summarize_last_line, reply(200_000))
    first, first_cost = work(summarize_first_line, reply(200_000))
    assert last == "line 199999"
    assert first == "line 0"
    # A reply ten times shorter costs as many steps: only its end (or start) is read,
    # and nothing the size of the reply is built (as splitting it into lines would).
    assert work(summarize_last_line, reply(20_000))[1].steps == last_cost.steps
    assert work(summarize_first_line, reply(20_000))[1].steps == first_cost.steps
    assert max(last_cost.peak, first_cost.peak) < len(reply(200_000)) // 20

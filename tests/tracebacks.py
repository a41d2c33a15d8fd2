"""Whether a program's output holds a Python traceback, and which one."""

from __future__ import annotations

from typing import Final

# Enough of a traceback to tell which one it is without burying the assertion message.
_SHOWN_LINES: Final = 6
_SHOWN_CHARS: Final = 1500


def traceback_in(text: str) -> str | None:
    """The first lines of the first traceback in `text` (from the start of the line that
    holds it: a JSON log line carries it in a field), or None when there is none."""
    found = text.find("Traceback")
    if found < 0:
        return None
    start = text.rfind("\n", 0, found) + 1
    return "\n".join(text[start:].splitlines()[:_SHOWN_LINES])[:_SHOWN_CHARS]


def assert_no_traceback(text: str, context: str = "") -> None:
    found = traceback_in(text)
    where = f"{context}: " if context else ""
    assert found is None, f"{where}a traceback was printed:\n{found}"

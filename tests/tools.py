"""Where the tests find the programs they run.

Beside the interpreter running the tests first, then on PATH: `venv/bin/python -m pytest`
must find the venv's `coder-task-sidecar` and `hadolint` without an activated virtualenv.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def find_tool(name: str) -> str | None:
    # Not resolved: a venv's python is a symlink to the base interpreter, whose directory
    # does not hold the venv's scripts.
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def sidecar_command() -> list[str]:
    """The installed console script; `python -m sidecar` (the same program) without one."""
    exe = find_tool("coder-task-sidecar")
    return [exe] if exe is not None else [sys.executable, "-m", "sidecar"]

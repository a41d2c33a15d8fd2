"""The README's first two commands are the contract with a new user and with CI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_first_command_installs_and_runs() -> None:
    first = readme_commands()[0]
    assert "pip install ." in first
    assert first.rstrip().endswith("coder-task-sidecar run")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    second = readme_commands()[1]
    assert "pytest" in second
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert second in script


def test_readme_documents_every_variable() -> None:
    from sidecar.settings import Settings

    text = (ROOT / "README.md").read_text()
    internal = {"XDG_STATE_HOME", "HOME", "NOTIFY_SOCKET", "WATCHDOG_USEC"}
    for name in Settings.model_fields:
        variable = name.upper()
        if variable not in internal:
            assert f"`{variable}`" in text, variable


def test_ci_script_is_a_single_command() -> None:
    lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "set -euo pipefail"
    assert shlex.split(lines[-1])[0] == "python3"

"""The README's first two commands are the contract with a new user and with CI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sidecar.variables import INTERNAL, VARIABLES, Count, Seconds, field_name

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_first_command_installs_and_shows_it_working() -> None:
    # The demo needs no variable and no Coder: the one command a newcomer can run as is.
    assert readme_commands()[0].strip() == "python3 -m pip install . && coder-task-sidecar demo"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    second = readme_commands()[1]
    assert "pytest" in second
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert second in script


def test_readme_documents_every_variable() -> None:
    text = (ROOT / "README.md").read_text()
    for var in VARIABLES:
        if var.name not in INTERNAL:
            assert f"`{var.name}`" in text, var.name


def variable_rows() -> dict[str, str]:
    """The README's configuration table: each row by the variables it names."""
    text = (ROOT / "README.md").read_text()
    table = text.split("| variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, str] = {}
    for row in table.strip().splitlines()[2:]:
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1]):
            rows[name] = row
    return rows


@pytest.mark.parametrize("var", [v for v in VARIABLES if isinstance(v, Seconds)], ids=str)
def test_readme_shows_each_durations_default_and_bounds(var: Seconds) -> None:
    assert f"`{var.default:g}` (s), {var.low:g}–{var.high:g}" in variable_rows()[var.name]


@pytest.mark.parametrize("var", [v for v in VARIABLES if isinstance(v, Count)], ids=str)
def test_readme_shows_each_counts_default(var: Count) -> None:
    row = variable_rows()[var.name]
    assert f"`{var.default}`" in row
    assert str(var.low) in row


def test_settings_read_exactly_the_table() -> None:
    from sidecar.settings import Settings

    assert set(Settings.model_fields) == {field_name(var) for var in VARIABLES}


def test_ci_script_is_a_single_command() -> None:
    lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "set -euo pipefail"
    assert shlex.split(lines[-1])[0] == "python3"

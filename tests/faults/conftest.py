"""Fixtures for the fault suite, and the `chaos` marker's default exclusion.

The chaos run (tests/faults/test_chaos.py) is long and randomized: it runs only when
asked for with `-m chaos`. A run without any `-m` deselects it here; its report is
printed in the terminal summary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served
from tests.e2e.conftest import start_sidecar, workspace  # noqa: F401 (shared with the e2e tests)
from tests.faults.chaos import REPORT_KEY, ChaosReport
from tests.faults.rig import Rig


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("markexpr"):
        return  # an explicit -m decides
    chaos = [item for item in items if item.get_closest_marker("chaos") is not None]
    if chaos:
        config.hook.pytest_deselected(items=chaos)
        items[:] = [item for item in items if item.get_closest_marker("chaos") is None]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REPORT_KEY] = ChaosReport()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    report = terminalreporter.config.stash.get(REPORT_KEY, None)
    if report is not None and report.runs:
        terminalreporter.section("chaos")
        for line in report.lines():
            terminalreporter.write_line(line)


@pytest.fixture
async def rig(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], fake_coder: Served[FakeCoder]
) -> AsyncIterator[Rig]:
    """A workspace on the two fakes; sidecars started in it are killed at teardown."""
    rig = Rig(tmp_path, fake_agentapi, fake_coder)
    try:
        yield rig
    finally:
        await rig.close()

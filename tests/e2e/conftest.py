from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served
from tests.e2e.harness import SidecarProcess
from tests.e2e.workspace import Workspace


class SidecarFactory(Protocol):
    """Starts `coder-task-sidecar <args>` with exactly `env` as its environment."""

    def __call__(
        self, env: Mapping[str, str], args: Sequence[str] = ...
    ) -> Awaitable[SidecarProcess]: ...


@pytest.fixture
async def start_sidecar() -> AsyncIterator[SidecarFactory]:
    """Start real sidecar processes; any still running at teardown is killed."""
    procs: list[SidecarProcess] = []

    async def factory(env: Mapping[str, str], args: Sequence[str] = ("run",)) -> SidecarProcess:
        proc = SidecarProcess(env, args)
        procs.append(proc)
        return await proc.start()

    yield factory
    for proc in procs:
        await proc.kill()


@pytest.fixture
def workspace(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], fake_coder: Served[FakeCoder]
) -> Workspace:
    """The two fakes (the `fake_agentapi` and `fake_coder` fixtures), with the sidecar's
    home, state directory and token file under `tmp_path`."""
    return Workspace(tmp_path, fake_agentapi, fake_coder)

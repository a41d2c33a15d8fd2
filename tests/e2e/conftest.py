from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Protocol

import pytest

from tests.e2e.harness import SidecarProcess


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

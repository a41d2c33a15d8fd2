from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeAlias

import pytest

from tests.e2e.harness import SidecarProcess

SidecarFactory: TypeAlias = Callable[..., Awaitable[SidecarProcess]]


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

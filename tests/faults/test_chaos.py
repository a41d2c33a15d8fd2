"""The chaos run (`-m chaos`; excluded from the default run by tests/faults/conftest.py).

CHAOS_SEED (default 20250101) and CHAOS_RUNS (default 20) choose the seeds; each seed is
one test, so a failing seed can be re-run alone (`-k seed-20250107`). The terminal summary
reports how many runs ended with the ground truth stored, crashes and poisoned snapshots.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.chaos import REPORT_KEY, run_chaos
from tests.faults.rig import Rig

pytestmark = pytest.mark.chaos

BASE_SEED = int(os.environ.get("CHAOS_SEED", "20250101"))
RUNS = int(os.environ.get("CHAOS_RUNS", "20"))
SEEDS = [BASE_SEED + i for i in range(RUNS)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
async def test_chaos(seed: int, rig: Rig, request: pytest.FixtureRequest) -> None:
    result = await run_chaos(rig, seed)
    request.config.stash[REPORT_KEY].runs.append(result)
    assert result.truth_stored, result.problem
    assert result.crashes == 0, result.problem
    assert result.poisoned == 0, "an accepted snapshot fails the logs read-back"

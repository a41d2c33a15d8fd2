"""Mutation testing of the pure and policy modules, with one score per module.

    python3 scripts/mutate.py                       # every module of [tool.mutmut] only_mutate
    python3 scripts/mutate.py snapshot relay.policy # only these (or sidecar/snapshot.py, ...)

mutmut (the `test` extra) is configured in pyproject.toml under [tool.mutmut]: the modules
to mutate (`only_mutate`) and the unit tests that exercise them. This script starts from a
fresh `mutants/` (mutmut's working copy and cache; `--incremental` keeps it), runs
`mutmut run` restricted to the named modules, then reads `mutmut results` and prints a
table per module. A surviving mutant is either killed by a sharper test or recorded as
equivalent in bench/RESULTS.md; `mutmut show NAME` prints its diff.

Runs at nice 10 or lower priority (the machine is shared) and uses no network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

ROOT: Final = Path(__file__).resolve().parent.parent
MUTANTS: Final = ROOT / "mutants"
LOG: Final = MUTANTS / "mutate.log"
NICENESS: Final = 10

# mutmut's status words (`mutmut results`), grouped into the table's columns.
KILLED: Final = frozenset({"killed", "caught by type check"})
SURVIVED: Final = frozenset({"survived"})
NO_TESTS: Final = frozenset({"no tests"})
TIMEOUT: Final = frozenset({"timeout"})
SUSPICIOUS: Final = frozenset({"suspicious", "segfault"})
NOT_RUN: Final = frozenset({"not checked", "skipped", "check was interrupted by user"})


@dataclass
class Tally:
    """The mutants of one module by status, and the names of those not killed."""

    counts: Counter[str] = field(default_factory=Counter)
    survivors: list[str] = field(default_factory=list)

    def count(self, statuses: frozenset[str]) -> int:
        return sum(self.counts[s] for s in statuses)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def score(self) -> float | None:
        """Killed (a timeout is a detection too) per mutant run, in percent."""
        ran = self.total - self.count(NOT_RUN)
        if ran == 0:
            return None
        return 100.0 * (self.count(KILLED) + self.count(TIMEOUT)) / ran


def module_of(path: str) -> str:
    """`sidecar/relay/policy.py` -> `sidecar.relay.policy`."""
    return path.removesuffix(".py").replace("/", ".")


def configured_modules(pyproject: Path) -> list[str]:
    """The modules [tool.mutmut] only_mutate names, as dotted module names."""
    with pyproject.open("rb") as f:
        config = tomllib.load(f)
    paths = config.get("tool", {}).get("mutmut", {}).get("only_mutate", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths) or not paths:
        raise SystemExit(f"{pyproject}: [tool.mutmut] only_mutate must list the module files")
    for path in paths:
        if not path.endswith(".py") or any(c in path for c in "*?["):
            raise SystemExit(f"{pyproject}: only_mutate entry {path!r} is not one module file")
    return [module_of(p) for p in paths]


def select(modules: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The configured modules named in `wanted` ("snapshot", "relay.policy",
    "sidecar.relay.policy" or "sidecar/relay/policy.py"); all of them when none is."""
    if not wanted:
        return list(modules)
    chosen: list[str] = []
    for name in wanted:
        dotted = module_of(name) if name.endswith(".py") else name
        matches = [m for m in modules if m == dotted or m.endswith("." + dotted)]
        if len(matches) != 1:
            problem = "is ambiguous" if matches else "is not configured"
            raise SystemExit(f"module {name!r} {problem}; choose from: {', '.join(modules)}")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def mutmut_command() -> list[str]:
    """The mutmut console script of this interpreter (`python -m mutmut` re-imports its
    own __main__, which mutmut warns against)."""
    beside = Path(sys.executable).with_name("mutmut")
    found = str(beside) if beside.exists() else shutil.which("mutmut")
    if found is None:
        raise SystemExit("mutmut is not installed: python3 -m pip install -e '.[test]'")
    return [found]


def mutmut(*args: str, output: IO[str] | int | None = None) -> subprocess.CompletedProcess[str]:
    """Run mutmut in the project root; `output` takes its stdout and stderr (None: the
    terminal's, PIPE: captured)."""
    # The command is this interpreter's mutmut and fixed words or configured module names.
    return subprocess.run(  # noqa: S603
        [*mutmut_command(), *args],
        cwd=ROOT,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        text=True,
        check=False,
    )


def run_mutmut(modules: Sequence[str], everything: bool, jobs: int, verbose: bool) -> None:
    """`mutmut run` over `modules` (all configured ones when `everything`)."""
    args = ["run", "--max-children", str(jobs)]
    if not everything:
        # mutmut matches mutant names (module.function__mutmut_N) against these globs.
        args += [f"{m}.*" for m in modules]
    if verbose:
        code = mutmut(*args).returncode
    else:
        MUTANTS.mkdir(exist_ok=True)
        with LOG.open("w") as log:
            code = mutmut(*args, output=log).returncode
    if code != 0:
        where = "" if verbose else f"; its output is in {LOG.relative_to(ROOT)}"
        raise SystemExit(f"mutmut run failed with exit code {code}{where}")


def read_results(modules: Sequence[str]) -> dict[str, Tally]:
    """Every mutant of `modules` by status, from `mutmut results --all true`."""
    done = mutmut("results", "--all", "true", output=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"mutmut results failed:\n{done.stdout}")
    output = done.stdout
    tallies = {m: Tally() for m in modules}
    # Longest first, so that a module never claims the mutants of one nested below it.
    by_length = sorted(modules, key=len, reverse=True)
    for line in output.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        module = next((m for m in by_length if name.startswith(m + ".")), None)
        if module is None:
            continue
        tally = tallies[module]
        tally.counts[status] += 1
        if status not in KILLED | TIMEOUT:
            tally.survivors.append(f"{name}  ({status})")
    return tallies


def table(tallies: dict[str, Tally]) -> str:
    """The per-module table, Markdown, with a total row."""
    header = "| module | mutants | killed | survived | no tests | timeout/suspicious | score |"
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    overall = Tally()
    for module, tally in tallies.items():
        overall.counts.update(tally.counts)
        rows.append(_row(module, tally))
    if len(tallies) > 1:
        rows.append(_row("**total**", overall))
    return "\n".join(rows)


def _row(name: str, tally: Tally) -> str:
    score = "n/a" if tally.score is None else f"{tally.score:.1f} %"
    return (
        f"| {name} | {tally.total} | {tally.count(KILLED)} | {tally.count(SURVIVED)} "
        f"| {tally.count(NO_TESTS)} | {tally.count(TIMEOUT)}/{tally.count(SUSPICIOUS)} "
        f"| {score} |"
    )


def lower_priority() -> None:
    """Nice 10 at least: mutants keep every core busy on a machine others share."""
    current = os.nice(0)
    if current < NICENESS:
        os.nice(NICENESS - current)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all configured)")
    parser.add_argument(
        "-j", "--jobs", type=int, default=os.cpu_count() or 2, help="mutants run at once"
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="keep mutants/ from the last run: mutmut re-tests only the mutants of changed"
        " functions, or every mutant of the modules named",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show mutmut's own output")
    parser.add_argument(
        "--fail-under", type=float, metavar="PCT", help="exit 1 when a module scores below PCT"
    )
    args = parser.parse_args(argv)

    configured = configured_modules(ROOT / "pyproject.toml")
    modules = select(configured, args.modules)
    lower_priority()
    started = time.monotonic()
    if not args.incremental and MUTANTS.exists():
        shutil.rmtree(MUTANTS)
    run_mutmut(modules, everything=modules == configured, jobs=args.jobs, verbose=args.verbose)
    tallies = read_results(modules)
    elapsed = time.monotonic() - started

    print(table(tallies))
    print()
    print("score = (killed + timeout) / mutants run; `no tests`: no selected test calls it")
    for module, tally in tallies.items():
        if tally.survivors:
            print(f"\n{module}: not killed ({len(tally.survivors)}; `mutmut show NAME`)")
            for survivor in tally.survivors:
                print(f"  {survivor}")
    print(f"\nwall time {elapsed:.0f} s")

    if args.fail_under is not None:
        low = [m for m, t in tallies.items() if t.score is not None and t.score < args.fail_under]
        if low:
            print(f"below {args.fail_under} %: {', '.join(low)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The systemd unit: its keys, and `systemd-analyze verify` and `security` on it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.tools import find_tool

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "coder-task-sidecar.service"
UNIT_NAME = UNIT.name
# The spec's default SIDECAR_SHUTDOWN_TIMEOUT; the unit's stop timeout must exceed it.
SHUTDOWN_TIMEOUT_DEFAULT = 10.0
TOOL_TIMEOUT = 30

SYSTEMD_ANALYZE = find_tool("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)

UnitFile = dict[str, dict[str, list[str]]]


# --- systemd unit -------------------------------------------------------------------


def parse_unit(text: str) -> UnitFile:
    """systemd's syntax, not INI's: keys repeat (values accumulate), '#'/';' comments,
    backslash continuation lines."""
    sections: UnitFile = {}
    current: dict[str, list[str]] | None = None
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        current[key.strip()].append(value.strip())
    return sections


def parse_timespan(value: str) -> float:
    """Seconds in a systemd time span such as "30", "30s", "1min 30s", "2m"."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, f"not a time span: {value!r}"
    assert "".join(n + u for n, u in parts) == value.replace(" ", ""), value
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.fixture(scope="module")
def unit() -> UnitFile:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def single(unit: UnitFile, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times: {values}"
    return values[0]


def test_unit_lifecycle_keys(unit: UnitFile) -> None:
    assert single(unit, "Service", "Type") == "notify"
    assert single(unit, "Service", "NotifyAccess") == "main"
    assert single(unit, "Service", "Restart") == "on-failure"
    assert "2" in single(unit, "Service", "RestartPreventExitStatus").split()
    assert parse_timespan(single(unit, "Service", "WatchdogSec")) == 30
    assert parse_timespan(single(unit, "Service", "TimeoutStopSec")) > SHUTDOWN_TIMEOUT_DEFAULT
    # The daemon handles SIGTERM; another stop signal would skip the final flush.
    assert unit["Service"].get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]


def test_unit_exec_and_environment(unit: UnitFile) -> None:
    argv = shlex.split(single(unit, "Service", "ExecStart"))
    assert argv[0].startswith("/"), "verify and the manager need an absolute first word"
    assert argv[-2:] == ["coder-task-sidecar", "run"]
    env_files = unit["Service"]["EnvironmentFile"]
    assert "-/etc/coder-task-sidecar/env" in env_files
    assert all(path.startswith("-") for path in env_files), "a missing env file must not fail"
    assert single(unit, "Service", "StateDirectory") == "coder-task-sidecar"
    assert "SIDECAR_STATE_DIR=%S/coder-task-sidecar" in unit["Service"]["Environment"]


def test_unit_is_usable_as_a_user_unit(unit: UnitFile) -> None:
    # A user manager refuses User=/Group= naming someone else; they belong in a
    # system-unit drop-in instead.
    assert "User" not in unit["Service"]
    assert "Group" not in unit["Service"]
    wanted_by = " ".join(unit["Install"]["WantedBy"]).split()
    assert "default.target" in wanted_by
    assert "multi-user.target" in wanted_by


EXPECTED_HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    # read-only, not yes/tmpfs: the token file and agentapi's state file live in $HOME.
    "ProtectHome": "read-only",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize(("key", "value"), sorted(EXPECTED_HARDENING.items()))
def test_unit_hardening(unit: UnitFile, key: str, value: str) -> None:
    assert single(unit, "Service", key) == value


def run_tool(
    argv: list[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", **(env or {})},
    )


def verify(unit_text: str, workdir: Path, *, user: bool) -> list[str]:
    """Problems `systemd-analyze verify` reports about our unit ([] when clean).

    verify exits 0 on unknown keys and unparsable values and only prints a warning,
    so the output is what counts. The unit is verified as shipped (its ExecStart goes
    through /usr/bin/env, which exists), from a copy so the name is exactly ours.
    """
    assert SYSTEMD_ANALYZE is not None
    unit_dir = workdir / ("user" if user else "system")
    unit_dir.mkdir(parents=True)
    path = unit_dir / UNIT_NAME
    path.write_text(unit_text, encoding="utf-8")
    argv = [SYSTEMD_ANALYZE]
    env: dict[str, str] = {}
    if user:
        # A user manager instance needs a runtime dir; a scratch HOME keeps the
        # invoking user's own units out of the picture.
        runtime = workdir / "runtime"
        runtime.mkdir(mode=0o700)
        env = {"XDG_RUNTIME_DIR": str(runtime), "HOME": str(workdir / "home")}
        argv.append("--user")
    result = run_tool([*argv, "verify", str(path)], env)
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if UNIT_NAME in line or str(path) in line
    ]
    if result.returncode != 0:
        ours.append(f"exit status {result.returncode}: {result.stderr.strip()}")
    return ours


@needs_systemd_analyze
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_verify_is_clean(tmp_path: Path, user: bool) -> None:
    assert verify(UNIT.read_text(encoding="utf-8"), tmp_path, user=user) == []


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (("[Service]\n", "[Service]\nNotAKey=1\n"), "Unknown key"),
        (("Type=notify", "Type=notifyy"), "Failed to parse service type"),
        (("ExecStart=/usr/bin/env ", "ExecStart=/nonexistent/bin/"), "not executable"),
    ],
    ids=["unknown-key", "bad-value", "missing-binary"],
)
def test_verify_check_catches_broken_units(
    tmp_path: Path, mutation: tuple[str, str], expected: str
) -> None:
    # Guards the guard: a broken unit must make verify() report something.
    text = UNIT.read_text(encoding="utf-8")
    old, new = mutation
    # Anchored at a line start so a mention in a comment is never the one changed.
    assert "\n" + old in text
    problems = verify(text.replace("\n" + old, "\n" + new, 1), tmp_path, user=False)
    assert any(expected in problem for problem in problems), problems


@needs_systemd_analyze
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    path = tmp_path / UNIT_NAME
    shutil.copyfile(UNIT, path)
    assert SYSTEMD_ANALYZE is not None
    # --threshold is on systemd's 0-100 scale; 30 is an "OK" rating of 3.0 (the unit
    # scores 1.9 on systemd 252). Regressions in hardening push it above.
    result = run_tool(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=30", "--no-pager", str(path)]
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr

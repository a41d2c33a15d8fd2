"""What the package's modules may import, read from their source with `ast`.

The stand-ins of agentapi and Coder (`sidecar/standins/`) ship in the package for the
`demo` command, but the daemon must never reach them: only the stand-ins themselves and
`sidecar/demo.py` may import `sidecar.standins`. And nothing in the package imports the
test suite, which is not installed.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest

PACKAGE: Final = Path(__file__).resolve().parents[2] / "sidecar"
STANDINS: Final = "sidecar.standins"
# The modules allowed to import the stand-ins, besides the stand-ins themselves.
STANDIN_USERS: Final = frozenset({"sidecar.demo"})
DYNAMIC_IMPORTS: Final = frozenset({"import_module", "__import__"})


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = PACKAGE.parent) -> Iterator[str]:
    """Every module `path` (under `root`) imports: `import a.b`, `from a import b` (a and
    a.b, since b may be a module), relative imports resolved, and string literals given to
    `importlib.import_module` or `__import__`."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in DYNAMIC_IMPORTS and isinstance(first, ast.Constant):
                yield str(first.value)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


SOURCES: Final = sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_sources() -> None:
    names = {module_name(p) for p in SOURCES}
    assert {"sidecar.cli", "sidecar.standins.agentapi", "sidecar.standins.coder"} <= names


def offenders(package: str, exempt: Callable[[str], bool]) -> dict[str, list[str]]:
    """Each module (not `exempt`) that imports `package` or a module in it, with those."""
    found: dict[str, list[str]] = {}
    for path in SOURCES:
        module = module_name(path)
        names = sorted({name for name in imported(path) if within(name, package)})
        if names and not exempt(module):
            found[module] = names
    return found


def test_nothing_in_the_package_imports_the_tests() -> None:
    assert offenders("tests", lambda _module: False) == {}


def test_only_the_demo_imports_the_standins() -> None:
    def exempt(module: str) -> bool:
        return within(module, STANDINS) or module in STANDIN_USERS

    assert offenders(STANDINS, exempt) == {}


@pytest.mark.parametrize(
    ("source", "where", "expected"),
    [
        ("import sidecar.standins.coder", "sidecar/cli.py", "sidecar.standins.coder"),
        ("from sidecar import standins", "sidecar/cli.py", "sidecar.standins"),
        ("from .standins import agentapi", "sidecar/cli.py", "sidecar.standins.agentapi"),
        ("from ..standins.coder import X", "sidecar/runtime/x.py", "sidecar.standins.coder"),
        ("from . import standins", "sidecar/__init__.py", "sidecar.standins"),
        ("importlib.import_module('sidecar.standins')", "sidecar/cli.py", "sidecar.standins"),
        ("__import__('tests.fakes.clock')", "sidecar/cli.py", "tests.fakes.clock"),
        ("from tests.fakes import clock", "sidecar/cli.py", "tests.fakes.clock"),
    ],
)
def test_every_spelling_of_an_import_is_seen(
    tmp_path: Path, source: str, where: str, expected: str
) -> None:
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source + "\n", encoding="utf-8")
    assert expected in set(imported(path, tmp_path))

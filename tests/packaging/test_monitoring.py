"""monitoring/: the alerting rules and their promtool unit tests (which must fail when a
rule is broken), the Grafana dashboard's shape, and every metric either one queries
against what a real daemon's /metrics exposes."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served
from tests.e2e.harness import SidecarProcess, stored_contents
from tests.e2e.workspace import Workspace
from tests.tools import find_tool

ROOT: Final = Path(__file__).resolve().parents[2]
MONITORING: Final = ROOT / "monitoring"
ALERTS: Final = MONITORING / "alerts.yml"
ALERT_TESTS: Final = MONITORING / "alerts.test.yml"
DASHBOARD: Final = MONITORING / "dashboard.json"
TOOL_TIMEOUT: Final = 60

PROMTOOL: Final = find_tool("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian, Ubuntu: the prometheus package)"
)

ALERT_NAMES: Final = frozenset(
    {
        "SidecarSnapshotPendingTooLong",
        "SidecarSnapshotDeliveriesFailing",
        "SidecarNoTasksApi",
        "SidecarAgentapiUnreachable",
        "SidecarRestartLoop",
    }
)
SEVERITIES: Final = frozenset({"info", "warning", "critical"})
# A metric name in PromQL: not part of a longer identifier (a label, a function), and not
# inside a string (a label value).
METRIC_NAME: Final = re.compile(r"(?<![A-Za-z0-9_:])(?:sidecar|process)_[A-Za-z0-9_:]*")
PROMQL_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
# What a family of each type lets PromQL select (text format 0.0.4, as prometheus-client
# writes it: a counter `x` is exposed as `x_total`, a histogram as its three series).
SELECTABLE: Final = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "gauge": ("",),
    "untyped": ("",),
}
# Grafana's variables, as they would be expanded for a query with everything selected.
GRAFANA_VARIABLES: Final = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*"}


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT
    )


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    assert len(groups) == 1, "one rule group"
    found: list[dict[str, Any]] = groups[0]["rules"]
    return found


def rule(alert: str) -> dict[str, Any]:
    return next(r for r in rules() if r["alert"] == alert)


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(PROMQL_STRING.sub('""', expr)))


def selectable_names(exposition: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SELECTABLE.get(family.type, ("",)))
    return names


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panel_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def variable_queries() -> list[str]:
    return [v["definition"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]


def dashboard_expressions() -> list[str]:
    return [target["expr"] for _, target in panel_targets()] + variable_queries()


def expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


# --- the rules ------------------------------------------------------------------------------


def test_rules_are_the_five_alerts_each_labelled_and_explained() -> None:
    found = rules()
    assert {r["alert"] for r in found} == ALERT_NAMES
    assert len(found) == len(ALERT_NAMES)
    for r in found:
        name = r["alert"]
        assert r["labels"]["severity"] in SEVERITIES, name
        for annotation in ("summary", "description", "runbook"):
            assert r["annotations"][annotation].strip(), f"{name}: no {annotation}"
        assert "monitoring/README.md" in r["annotations"]["runbook"], name
        if "for" in r:
            assert re.fullmatch(r"\d+[smh]", r["for"]), f"{name}: for {r['for']!r}"
        assert metric_names(r["expr"]), f"{name} queries no sidecar or process metric"


def test_the_readme_explains_every_alert() -> None:
    text = (MONITORING / "README.md").read_text(encoding="utf-8")
    for name in ALERT_NAMES:
        assert f"### {name}\n" in text, name


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


@needs_promtool
def test_the_rules_pass_their_unit_tests() -> None:
    result = run_promtool("test", "rules", str(ALERT_TESTS), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = load_yaml(ALERT_TESTS)
    assert tests["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
            for alert in check["exp_alerts"]:
                # The exact annotations, so a template that renders wrong fails.
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}
    assert firing == ALERT_NAMES
    assert quiet == ALERT_NAMES


# Each broken in a way its unit tests must notice: a threshold or guard changed so a target
# that must stay quiet fires or one that must fire stays quiet, or a filter removed.
TARGETED: Final = [
    ("SidecarSnapshotPendingTooLong", "> 300", "> 30"),
    ("SidecarSnapshotDeliveriesFailing", ") > 0.5", ") > 0.05"),
    ("SidecarSnapshotDeliveriesFailing", ") > 0.5", ") > 0.9"),
    ("SidecarSnapshotDeliveriesFailing", ">= 3", ">= 1"),
    ("SidecarSnapshotDeliveriesFailing", 'result!~"ok|no_route"', 'result!="ok"'),
    ("SidecarNoTasksApi", "== 0", "== 1"),
    ("SidecarAgentapiUnreachable", "== 0", "== 1"),
    ("SidecarRestartLoop", ">= 3", ">= 1"),
    (
        "SidecarRestartLoop",
        "\nand on (job, instance)\n  max_over_time(sidecar_build_info[30m])",
        "",
    ),
]


def mutations() -> Iterator[Any]:
    for alert, old, new in TARGETED:
        yield pytest.param(alert, ("expr", old, new), id=f"{alert}: {old.strip()!r}")
    for r in rules():
        first = sorted(metric_names(r["expr"]))[0]
        yield pytest.param(
            r["alert"], ("expr", first, first + "_renamed"), id=f"{r['alert']}: renamed"
        )
        if "for" in r:
            yield pytest.param(r["alert"], ("for", None, None), id=f"{r['alert']}: no for")


@needs_promtool
@pytest.mark.parametrize(("alert", "change"), list(mutations()))
def test_a_broken_rule_fails_its_unit_tests(
    alert: str, change: tuple[str, str | None, str | None], tmp_path: Path
) -> None:
    document = load_yaml(ALERTS)
    broken = copy.deepcopy(document)
    target = next(r for r in broken["groups"][0]["rules"] if r["alert"] == alert)
    field, old, new = change
    if field == "for":
        del target["for"]
    else:
        assert old is not None
        assert new is not None
        assert old in target["expr"], f"{alert}: {old!r} not in its expression"
        target["expr"] = target["expr"].replace(old, new)
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(broken, sort_keys=False), "utf-8")
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text("utf-8"), "utf-8")

    checked = run_promtool("check", "rules", ALERTS.name, cwd=tmp_path)
    assert checked.returncode == 0, "the mutant must still be a valid rule: " + checked.stdout
    tested = run_promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    output = tested.stdout + tested.stderr
    assert tested.returncode != 0, f"{alert} broken, and its tests still pass:\n{output}"
    assert f"alertname: {alert}," in output, output


@needs_promtool
def test_an_unbroken_copy_passes_where_the_mutants_fail(tmp_path: Path) -> None:
    # The mutants' failures come from the change, not from the copy being rewritten.
    document = load_yaml(ALERTS)
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(document, sort_keys=False), "utf-8")
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text("utf-8"), "utf-8")
    tested = run_promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# --- the dashboard --------------------------------------------------------------------------


def test_dashboard_variables() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "instance"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["definition"] == variable["query"]["query"]
        assert variable["includeAll"] is True
    assert '{job=~"$job"}' in variables["instance"]["definition"]


def test_dashboard_panels_have_unique_ids_and_targets() -> None:
    panels = dashboard()["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel.get("targets"), f"{title!r} has no target"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{title!r}: refIds repeat"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{title!r}: empty query"
            # The variables narrow every query to the selected sidecars.
            assert '$job"' in target["expr"], f"{title!r}: not filtered by $job"
            assert '$instance"' in target["expr"], f"{title!r}: not filtered by $instance"
        assert panel["description"].strip(), f"{title!r} has no description"


def test_dashboard_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']!r} overlaps another panel"
        taken |= cells


def test_dashboard_covers_what_an_operator_needs() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_expressions()))
    for name in (
        "sidecar_snapshot_posts_total",
        "sidecar_snapshot_skipped_total",
        "sidecar_snapshot_bytes",
        "sidecar_snapshot_post_duration_seconds_bucket",
        "sidecar_snapshot_pending_age_seconds",
        "sidecar_relay_state",
        "sidecar_relay_patches_total",
        "sidecar_agentapi_connected",
    ):
        assert name in used, name


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses rule expressions: each query becomes a recording rule.
    records = [
        {"record": f"dashboard:query_{i}", "expr": expand(expr)}
        for i, expr in enumerate(dashboard_expressions())
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = run_promtool("check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- every queried metric exists --------------------------------------------------------------


def test_names_are_read_from_promql_and_mapped_from_families() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(sidecar_a_seconds_bucket{x="sidecar_n\\"o"}'
        "[5m]))) / on (instance) process_start_time_seconds and sidecar_b_total"
    )
    assert metric_names(expr) == {
        "sidecar_a_seconds_bucket",
        "process_start_time_seconds",
        "sidecar_b_total",
    }
    exposition = (
        "# HELP sidecar_b thing\n# TYPE sidecar_b counter\n"  # no sample yet: labelled
        "# HELP sidecar_a_seconds h\n# TYPE sidecar_a_seconds histogram\n"
        'sidecar_a_seconds_bucket{le="+Inf"} 0.0\n'
        "sidecar_a_seconds_count 0.0\nsidecar_a_seconds_sum 0.0\n"
        "# HELP sidecar_g g\n# TYPE sidecar_g gauge\nsidecar_g 1.0\n"
    )
    names = selectable_names(exposition)
    assert {"sidecar_b_total", "sidecar_a_seconds_bucket", "sidecar_g"} <= names
    assert {"sidecar_a_seconds_count", "sidecar_a_seconds_sum"} <= names
    assert "sidecar_b" not in names
    assert "sidecar_a_seconds" not in names


async def test_every_queried_metric_is_exposed_by_the_daemon(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], fake_coder: Served[FakeCoder]
) -> None:
    queried: dict[str, set[str]] = {}
    for r in rules():
        for name in metric_names(r["expr"]):
            queried.setdefault(name, set()).add(f"alert {r['alert']}")
    for panel, target in panel_targets():
        for name in metric_names(target["expr"]):
            queried.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for query in variable_queries():
        for name in metric_names(query):
            queried.setdefault(name, set()).add("a dashboard variable")

    fake_agentapi.fake.add_message("user", "hi")
    env = Workspace(tmp_path, fake_agentapi, fake_coder).env(
        SIDECAR_HTTP_ADDR="127.0.0.1:0", CODER_MCP_APP_STATUS_SLUG="claude-code"
    )
    proc = await SidecarProcess(env).start()
    try:
        listening = await proc.wait_log("health.listening")
        await fake_coder.fake.wait_for(lambda: stored_contents(fake_coder.fake) == ["hi"], 10)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{listening['port']}/metrics") as response,
        ):
            assert response.status == 200
            exposition = await response.text()
        assert await proc.stop() == 0
    finally:
        await proc.kill()

    exposed = selectable_names(exposition)
    missing = {name: sorted(users) for name, users in queried.items() if name not in exposed}
    assert not missing, f"queried but not exposed: {missing}"

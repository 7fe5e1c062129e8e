"""The fleet's alert rules (deploy/prometheus) and Grafana dashboard (deploy/grafana): the
rules pass promtool's checks and their unit tests, and every series the rules, their tests
and the dashboard read is one the daemon really exports, with the labels it really has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon.actions.context import Context
from daemon.config import load_config
from daemon.errors import OperationError
from daemon.events import ConfigReload, OperationFailed, OperationFinished
from daemon.observe.metrics import Metrics
from daemon.observe.overview import take_overview
from tests.unit.test_metrics import drill, plant

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "volkeep-rules.yml"
RULE_TESTS = RULES_DIR / "volkeep-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "volkeep-fleet.json"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

# Series the rules and the dashboard read that volkeep does not export, with their labels:
# Prometheus's own per target, node_exporter's textfile collector's, the rules' alerts.
EXTERNAL = {
    "up": {"job", "instance"},
    "node_textfile_mtime_seconds": {"job", "instance", "file"},
    "ALERTS": {"alertname", "alertstate", "host", "policy", "volume", "storage", "instance"},
}
SELECTOR = re.compile(
    r"\b(?P<name>volkeep_[a-z_]+|" + "|".join(EXTERNAL) + r")\b(?:\s*\{(?P<matchers>[^}]*)\})?"
)
MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!=|!~|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\((?P<labels>[^)]*)\)")

Exported = dict[str, list[dict[str, str]]]  # each metric's samples' labels, by sample name


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """What a daemon exports once it has seen every kind of series: backups, drills and
    prunes that succeeded and failed, schedules, a refused reload."""
    root = tmp_path_factory.mktemp("exported")
    config = root / "volkeep.yaml"
    config.write_text(
        f"""
version: 1
daemon: {{host: testhost}}
storage: {{local: {{type: local, path: {root / "local"}}}}}
policies:
  app:
    volumes: [app_db, app_files]
    storage: local
    schedule: "0 3 * * *"
    drill: {{schedule: "@every 6h"}}
"""
    )
    ctx = Context(load_config(config), root / "state")
    [local] = ctx.repositories(ctx.policy("app"))
    key = plant(local, "app_db", NOW - timedelta(hours=1), 1000)
    drill(local, key, passed=True, finished=NOW - timedelta(minutes=30))
    with pytest.raises(OperationError), ctx.history.operation("backup", "app", "app_files"):
        raise OperationError("no such volume")
    with pytest.raises(OperationError), ctx.history.operation("drill", "app", "app_db"):
        raise OperationError("the engine went away")
    with ctx.history.operation("prune", "app", "app_db"):
        pass
    with pytest.raises(OperationError), ctx.history.operation("prune", "app", "app_files"):
        raise OperationError("the storage refused a deletion")
    metrics = Metrics(ctx.host)
    metrics.update(take_overview(ctx, NOW))
    metrics(OperationFinished(1, "backup", "app", "app_db", seconds=42.0))
    metrics(OperationFailed(2, "drill", "app", "app_db", seconds=2.0, error="engine down"))
    metrics(ConfigReload(("line 3: unknown key",)))
    found: Exported = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def label_names(exported: Exported, name: str) -> set[str]:
    if name in EXTERNAL:
        return EXTERNAL[name]
    return {label for labels in exported[name] for label in labels}


def has_series(exported: Exported, name: str, label: str, value: str) -> bool:
    """Whether volkeep exports a series of `name` with `label` = `value` (an external
    series: whether its label can have any value)."""
    return name in EXTERNAL or any(labels.get(label) == value for labels in exported[name])


def check_query(exported: Exported, query: str) -> list[str]:
    """Given a PromQL query, return what in it names a series or a label volkeep does not
    export (empty if nothing does); it must read at least one series."""
    problems = []
    names = []
    for selector in SELECTOR.finditer(query):
        name = selector["name"]
        if name not in EXTERNAL and name not in exported:
            problems.append(f"{name}: no such metric")
            continue
        names.append(name)
        for matcher in MATCHER.finditer(selector["matchers"] or ""):
            label, value = matcher["label"], matcher["value"]
            if label not in label_names(exported, name):
                problems.append(f"{name}: no label {label}")
            elif matcher["op"] == "=" and not has_series(exported, name, label, value):
                problems.append(f'{name}: no series with {label}="{value}"')
    if not names:
        problems.append(f"reads no series: {query}")
    known = set().union(*(label_names(exported, name) for name in names))
    for grouping in GROUPING.finditer(query):
        for label in filter(None, (word.strip() for word in grouping["labels"].split(","))):
            if label not in known:
                problems.append(f"groups by {label}, which none of {sorted(set(names))} has")
    return problems


def rule_expressions() -> Iterator[tuple[str, str]]:
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: apt-get install prometheus (Debian)"
    for command in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        result = subprocess.run(
            [promtool, *command], cwd=RULES_DIR, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    alerts = {alert for alert, _ in rule_expressions()}
    assert alerts == {
        "VolkeepBackupOverdue",
        "VolkeepBackupNeverSucceeded",
        "VolkeepDrillOverdue",
        "VolkeepDrillFailed",
        "VolkeepArchivesGoneWithoutPrune",
        "VolkeepDaemonDown",
        "VolkeepConfigReloadFailed",
    }
    for alert in alerts:
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == alert}
        assert outcomes == {True, False}, alert


def test_the_rules_read_only_series_and_labels_the_daemon_exports(exported: Exported) -> None:
    problems = {alert: check_query(exported, expr) for alert, expr in rule_expressions()}
    assert {alert: found for alert, found in problems.items() if found} == {}


def test_the_rule_tests_feed_series_labelled_as_the_daemon_labels_them(
    exported: Exported,
) -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    for series in (series["series"] for test in tests for series in test["input_series"]):
        selector = SELECTOR.fullmatch(series)
        assert selector is not None, series
        name = selector["name"]
        labels = {matcher["label"] for matcher in MATCHER.finditer(selector["matchers"])}
        if name in EXTERNAL:
            assert labels <= EXTERNAL[name], series
            continue
        assert any(labels == set(real) for real in exported[name]), (series, exported[name])


def dashboard_queries(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in document["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]["query"]


def test_the_dashboard_is_grafana_json_reading_only_what_the_daemon_exports(
    exported: Exported,
) -> None:
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"] == "volkeep-fleet" and document["title"] == "volkeep fleet"
    panels = document["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert all({"x", "y", "w", "h"} <= set(panel["gridPos"]) for panel in panels)
    # every panel reads the Prometheus the operator picks at import
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    assert all(panel["datasource"] == datasource for panel in panels)
    [picker] = [v for v in document["templating"]["list"] if v["type"] == "datasource"]
    assert (picker["name"], picker["query"]) == ("datasource", "prometheus")
    problems = {where: check_query(exported, query) for where, query in dashboard_queries(document)}
    assert {where: found for where, found in problems.items() if found} == {}
    # what the issue asks it to show, per host and volume
    queried = " ".join(query for _, query in dashboard_queries(document))
    for metric in (
        "volkeep_newest_archive_timestamp_seconds",
        "volkeep_drill_passed",
        "volkeep_restore_seconds",
        "volkeep_newest_archive_bytes",
    ):
        assert re.search(rf"by \(host, policy, volume\) \({metric}\b", queried), metric


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ('volkeep_archive{host="web-1"}', "volkeep_archive: no such metric"),
        ('volkeep_archives{hostname="web-1"}', "volkeep_archives: no label hostname"),
        (
            'volkeep_last_success_timestamp_seconds{operation="restore"}',
            'no series with operation="restore"',
        ),
        ("max by (instance) (volkeep_drill_passed)", "groups by instance"),
        ("vector(1)", "reads no series"),
    ],
)
def test_the_check_catches_a_misspelt_query(exported: Exported, query: str, says: str) -> None:
    assert any(says in problem for problem in check_query(exported, query))

"""The monitoring files against the real promtool (Debian's ``prometheus`` package).

- conf/prometheus-alerts.yml passes ``promtool check rules`` and the unit tests in
  tests/data/alerts-test.yml;
- the exposition of a registry holding every metric of mailmapd/metrics.py passes
  ``promtool check metrics`` with no lint at all;
- every PromQL expression of conf/grafana-dashboard.json parses, and uses only series and labels
  that registry exposes; docs/metrics.md names every series and every alert.

A missing promtool is a failure, never a skip: scripts/test installs it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mailmapd.metrics import CounterChild, HistogramChild, LoopCounter, LoopHistogram, Metrics, StateCollector

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "conf" / "prometheus-alerts.yml"
ALERT_TESTS = ROOT / "tests" / "data" / "alerts-test.yml"
DASHBOARD = ROOT / "conf" / "grafana-dashboard.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

ALERT_NAMES = {
    "MailmapdDown",
    "MailmapdBackendDown",
    "MailmapdTempFailures",
    "MailmapdSlowLookups",
    "MailmapdMalformedRequests",
    "MailmapdConnectionsRefused",
}

# One value per label name used in metrics.py. A new label name must be added here, and its
# values documented in docs/metrics.md.
SAMPLE_LABELS = {
    "protocol": "socketmap",
    "map": "mailboxes",
    "result": "temp",
    "source": "stale",
    "reason": "timeout",
    "trigger": "reload",
    "version": "0.1.0",
}

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}

# Grafana's variables, replaced by values that make the expressions plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*", "$map": ".*"}

METRIC_NAME = re.compile(r"\bmailmapd_[a-zA-Z0-9_]*[a-zA-Z0-9]\b")
SELECTOR = re.compile(r"\b(mailmapd_\w+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (scripts/test installs it)")
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def touch(metric: Counter | Gauge | Histogram | LoopCounter | LoopHistogram) -> None:
    """Give the metric one sample, with a sample value for each of its labels."""
    names = list(metric.labelnames if isinstance(metric, LoopCounter | LoopHistogram) else metric._labelnames)
    unknown = [name for name in names if name not in SAMPLE_LABELS]
    if unknown:
        pytest.fail(f"label {unknown} of {metric}: add a sample value to SAMPLE_LABELS and document it")
    child: Any
    if isinstance(metric, LoopCounter | LoopHistogram):
        child = metric.labels(*(SAMPLE_LABELS[name] for name in names))
    else:
        child = metric.labels(**{name: SAMPLE_LABELS[name] for name in names}) if names else metric
    if isinstance(child, Counter | CounterChild):
        child.inc()
    elif isinstance(child, Histogram | HistogramChild):
        child.observe(0.0003)
    else:
        child.set(1)


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry with every metric of Metrics and StateCollector, each touched once."""
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    registry.register(StateCollector(lambda: 5))
    for field in dataclasses.fields(metrics):
        touch(getattr(metrics, field.name))
    return registry


def exposed_labels(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Every exposed series name (``_total``, ``_bucket``... as scraped) with its label names."""
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def documented_names(registry: CollectorRegistry) -> set[str]:
    """The name an operator queries for each family: counters with ``_total``."""
    return {f"{f.name}_total" if f.type == "counter" else f.name for f in registry.collect()}


def alert_blocks() -> dict[str, str]:
    """Each alerting rule's text, by alert name."""
    parts = re.split(r"^\s*- alert:\s*", ALERTS.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]
    return {part.split(maxsplit=1)[0]: part for part in parts}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, and the query of every template variable."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            title = node.get("title", where)
            for target in node.get("targets", []):
                yield f"{title} {target['refId']}", target["expr"]
            for key, value in node.items():
                if key != "targets":
                    yield from walk(value, title)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, where)

    yield from walk(dashboard["panels"], "panels")
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"${variable['name']}", variable["definition"]


def groupings(expr: str) -> Iterator[tuple[set[str], str]]:
    """(labels, the expression they group) for each ``by (...)``/``without (...)``.

    In the prefix form ``sum by (map) (EXPR)`` that is EXPR; otherwise the whole expression.
    """
    for match in GROUPING.finditer(expr):
        labels = {label.strip() for label in match.group(1).split(",") if label.strip()}
        rest = expr[match.end() :].lstrip()
        inner = expr
        if rest.startswith("("):
            depth = 0
            for i, char in enumerate(rest):
                depth += {"(": 1, ")": -1}.get(char, 0)
                if depth == 0:
                    inner = rest[: i + 1]
                    break
        yield labels, inner


def plain_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


# --- (a) alerting rules


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_alert_rules_are_the_documented_set_and_tell_the_operator_what_to_do() -> None:
    blocks = alert_blocks()
    assert set(blocks) == ALERT_NAMES
    for name, text in blocks.items():
        assert re.search(r"^\s+severity: (critical|warning)$", text, re.MULTILINE), name
        for needle in ("summary:", "description:", "journalctl -u mailmapd", "docs/operations.md", "defer"):
            assert needle in text, f"{name}: no {needle!r}"


def test_alert_rules_unit_tests() -> None:
    tests = ALERT_TESTS.read_text(encoding="utf-8")
    for name in ("MailmapdBackendDown", "MailmapdTempFailures"):
        assert f"alertname: {name}" in tests
    result = promtool("test", "rules", str(ALERT_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- (b) the exposition


def test_every_metric_is_exposed(registry: CollectorRegistry) -> None:
    for family in registry.collect():
        assert family.samples, f"{family.name} exposes no sample"
    series = exposed_labels(registry)
    assert series["mailmapd_cache_entries"] == set()
    assert {"mailmapd_lookups_total", "mailmapd_lookup_seconds_bucket", "mailmapd_backend_up"} <= set(series)


def test_exposition_passes_promtool_check_metrics(registry: CollectorRegistry) -> None:
    exposition = generate_latest(registry).decode()
    result = promtool("check", "metrics", stdin=exposition)
    # The whole output: any lint at all (naming, help text, units) fails this test.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- (c) the dashboard


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["map"]["definition"] == "label_values(mailmapd_lookups_total, map)"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_uses_only_exposed_series_and_labels(registry: CollectorRegistry) -> None:
    series = exposed_labels(registry)
    queries = list(dashboard_queries())
    assert len(queries) > 20
    for where, expr in queries:
        names = set(METRIC_NAME.findall(expr))
        assert names, f"{where}: no mailmapd series in {expr!r}"
        assert names <= set(series), f"{where}: {sorted(names - set(series))} not exposed"
        for name, matchers in SELECTOR.findall(expr):
            unknown = set(MATCHER_LABEL.findall(matchers)) - series[name] - TARGET_LABELS
            assert not unknown, f"{where}: {name} has no label {sorted(unknown)}"
        for labels, inner in groupings(expr):
            known = TARGET_LABELS.union(*(series[name] for name in METRIC_NAME.findall(inner)))
            assert labels <= known, f"{where}: no label {sorted(labels - known)} in {inner!r}"


def test_dashboard_covers_every_series(registry: CollectorRegistry) -> None:
    used = "\n".join(expr for _, expr in dashboard_queries())
    missing = {name for name in documented_names(registry) if not re.search(rf"\b{name}(_bucket)?\b", used)}
    assert not missing, f"not on the dashboard: {sorted(missing)}"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(q for q in dashboard_queries() if not q[0].startswith("$")):
        rules += [f"      - record: dashboard:expr_{i}", f"        expr: {json.dumps(plain_promql(expr))}"]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("\n".join(rules) + "\n", encoding="utf-8")
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the documentation


def test_metrics_doc_names_every_series_and_alert(registry: CollectorRegistry) -> None:
    doc = METRICS_DOC.read_text(encoding="utf-8")
    missing = {name for name in documented_names(registry) | ALERT_NAMES if f"`{name}`" not in doc}
    assert not missing, f"not in docs/metrics.md: {sorted(missing)}"

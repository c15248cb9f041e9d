"""The PromQL extraction helper, and every shipped expression checked by promtool and
against the worker's metric names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import promql
import pytest
import yaml
from prometheus_client import CollectorRegistry

from erc_stream.escalations.metrics import EscalationMetrics
from erc_stream.metrics import WorkerMetrics

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="PROMTOOL MISSING: PromQL syntax NOT checked. Install it: `apt-get install -y prometheus` (make sysdeps).",
)


def _exposed_metric_names() -> set[str]:
    """Sample names the worker and the escalations app expose, derived from their metrics modules."""
    names: set[str] = set()
    families = [*WorkerMetrics(CollectorRegistry()).registry.collect()]
    families += EscalationMetrics(CollectorRegistry()).registry.collect()
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def _dashboard() -> dict:
    return json.loads(promql.DASHBOARD_PATH.read_text())


def _all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_all_panels(p.get("panels", [])))
    return out


def test_substitute_replaces_every_variable_form() -> None:
    expr = (
        'rate(x{namespace=~"$namespace", instance=~"${instance}", pod=~"[[instance]]"}[$__rate_interval])'
        " + y[$__range_s] + z[${__interval}]"
    )
    got = promql.substitute(expr, variables={"instance": "w0:9400"})
    assert got == 'rate(x{namespace=~".*", instance=~"w0:9400", pod=~"w0:9400"}[1m]) + y[3600] + z[30s]'


def test_substitute_rejects_an_unknown_variable() -> None:
    with pytest.raises(ValueError, match=r"unknown Grafana variable \$cluster"):
        promql.substitute('up{cluster="$cluster"}')


def test_finds_every_panel_query_variable_and_annotation() -> None:
    dashboard = _dashboard()
    found = dict(promql.dashboard_exprs())
    expected_targets = [(p, t) for p in _all_panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    # Every non-row panel has at least one query, and each one is found.
    for panel in _all_panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel.get("targets"), f"panel {panel['title']!r} has no query"
    assert len(expected_targets) == 37
    for panel, target in expected_targets:
        name = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
        assert found[name] == promql.substitute(target["expr"])
    assert found["variable namespace"] == "erc_partitions_assigned"
    assert found["variable instance"] == 'erc_partitions_assigned{namespace=~".*"}'
    assert "annotation 'Model reloads'" in found
    assert len(found) == len(expected_targets) + 1 + 2
    for name, expr in found.items():
        assert "$" not in expr and "[[" not in expr, f"{name}: unsubstituted variable in {expr!r}"


def test_finds_every_rule() -> None:
    doc = yaml.safe_load(promql.RULES_PATH.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    found = promql.rules_exprs()
    assert len(found) == len(rules) == 16
    assert len({name for name, _ in found}) == len(found), "rule names must be unique"
    alerts = sorted({n.split()[1] for n, _ in found if n.startswith("alert ")})
    assert alerts == [
        "ErcConsumerLagGrowing",
        "ErcDeadLetterRateHigh",
        "ErcEscalationsLagging",
        "ErcLatencySLOBurn",
        "ErcModelReloadFailures",
        "ErcNoEventsWhileTurnsArrive",
        "ErcWorkerDown",
    ]
    assert [e for _, e in found] == [r["expr"].strip() for r in rules]


def test_variable_overrides_reach_every_dashboard_query() -> None:
    exprs = promql.dashboard_exprs(
        variables={"namespace": "", "instance": "127.0.0.1:9400"}, intervals={"__rate_interval": "2m"}
    )
    for name, expr in exprs:
        if name.startswith("variable"):
            continue
        if "erc_escalations_" not in expr:  # the escalations app's pods are not workers: namespace only
            assert 'instance=~"127.0.0.1:9400"' in expr, name
        assert 'namespace=~""' in expr, name


def test_every_dashboard_selector_filters_by_namespace_and_instance() -> None:
    dashboard = _dashboard()
    raw = [t["expr"] for p in _all_panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    raw += [a["expr"] for a in dashboard["annotations"]["list"] if a.get("expr")]
    for expr in raw:
        selectors = re.findall(r"\berc_\w+(\{[^}]*\})?", expr)
        assert selectors, expr
        # $instance lists workers; the escalations row (erc_escalations_*) filters by namespace only.
        per_instance = "erc_escalations_" not in expr
        for matchers in selectors:
            assert 'namespace=~"$namespace"' in matchers, f"selector without the namespace filter in {expr!r}"
            assert not per_instance or 'instance=~"$instance"' in matchers, (
                f"selector without the dashboard filters in {expr!r}"
            )


def test_dashboard_covers_what_a_support_lead_watches() -> None:
    dashboard = _dashboard()
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace", "instance"}
    exprs = " ".join(e for _, e in promql.dashboard_exprs())
    for needle in [
        "sum by (emotion) (rate(erc_events_emitted_total",
        "sum(erc_consumer_lag",
        "sum by (topic, partition) (erc_consumer_lag",
        "histogram_quantile(0.5, sum by (le) (rate(erc_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(erc_end_to_end_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(erc_end_to_end_latency_seconds_bucket",
        "sum(rate(erc_batch_size_sum",
        "histogram_quantile(0.95, sum by (le) (rate(erc_batch_size_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(erc_inference_seconds_bucket",
        "sum by (reason) (rate(erc_dead_letters_total",
        "erc_model_info",
        "sum by (result) (increase(erc_model_reloads_total",
        "erc_active_conversations",
        "erc_in_flight_turns",
        "erc_partitions_assigned",
        "sum by (rule, severity) (rate(erc_escalations_opened_total",
        "sum by (rule, severity) (erc_escalations_open",
        "histogram_quantile(0.95, sum by (le) (rate(erc_escalations_processing_lag_seconds_bucket",
        "sum(erc_escalations_consumer_lag",
    ]:
        assert needle in exprs, f"dashboard lacks {needle!r}"
    mix = next(p for p in _all_panels(dashboard["panels"]) if p["title"] == "Emotion mix")
    assert mix["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "percent"
    for panel in _all_panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    ids = [p["id"] for p in _all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_metric_name_is_one_the_worker_exposes_or_a_recording_rule() -> None:
    exposed = _exposed_metric_names()
    recorded = {n.split()[1] for n, _ in promql.rules_exprs() if n.startswith("record ")}
    used: set[str] = set()
    for name, expr in promql.all_exprs():
        for metric in promql.metric_names(expr):
            assert metric in exposed or metric in recorded, f"{name}: {metric} is neither exposed nor recorded"
            used.add(metric)
    # Sanity of the check itself: the names the worker really has are recognised.
    assert {"erc_turns_consumed_total", "erc_end_to_end_latency_seconds_bucket", "erc_model_info"} <= used
    assert promql.metric_names('sum by (erc_fake) (rate(erc_x_total{le="erc_y"}[5m]))') == {"erc_x_total"}


def test_latency_slo_bucket_exists() -> None:
    from erc_stream.metrics import LATENCY_BUCKETS_S

    text = promql.RULES_PATH.read_text()
    bounds = set(re.findall(r'erc_end_to_end_latency_seconds_bucket\{le="([0-9.]+)"\}', text))
    assert bounds == {"2.5"}
    assert 2.5 in LATENCY_BUCKETS_S


@needs_promtool
def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    exprs = promql.all_exprs()
    rules = [{"record": f"erc_check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "exprs.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "all-shipped-promql", "rules": rules}]}))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


@needs_promtool
def test_promtool_check_catches_a_broken_expression(tmp_path: Path) -> None:
    path = tmp_path / "bad.rules.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "x:y", "expr": "sum(rate(erc_x[5m])"}]}]})
    )
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0

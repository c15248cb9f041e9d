"""deploy/prometheus/rules.yaml checked and unit-tested by the real promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules.test.yaml"
CHART_RULES = ROOT / "deploy" / "helm" / "erc-stream" / "files" / "rules.yaml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="PROMTOOL MISSING: alert rules NOT tested. Install it: `apt-get install -y prometheus` (make sysdeps).",
)

ALERTS = {
    "ErcConsumerLagGrowing",
    "ErcNoEventsWhileTurnsArrive",
    "ErcDeadLetterRateHigh",
    "ErcModelReloadFailures",
    "ErcWorkerDown",
    "ErcLatencySLOBurn",
    "ErcEscalationsLagging",
}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_chart_copy_is_identical() -> None:
    assert CHART_RULES.read_bytes() == RULES.read_bytes(), (
        "deploy/helm/erc-stream/files/rules.yaml differs from deploy/prometheus/rules.yaml: "
        "cp deploy/prometheus/rules.yaml deploy/helm/erc-stream/files/rules.yaml"
    )


def test_alerts_have_severity_summary_and_description() -> None:
    alerts = [r for r in _rules() if "alert" in r]
    assert {a["alert"] for a in alerts} == ALERTS
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == ALERTS
    assert quiet == ALERTS
    # Both burn-rate severities are exercised.
    burn = [
        alert["exp_labels"]["severity"]
        for case in tests
        for check in case.get("alert_rule_test", [])
        if check["alertname"] == "ErcLatencySLOBurn"
        for alert in check.get("exp_alerts") or []
    ]
    assert {"critical", "warning"} <= set(burn)


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = _promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    proc = _promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_unit_tests_catch_a_weakened_alert(tmp_path: Path) -> None:
    """The unit tests are not vacuous: raising the dead-letter threshold makes them fail."""
    text = RULES.read_text()
    assert ") > 0.05" in text
    (tmp_path / "rules.yaml").write_text(text.replace(") > 0.05", ") > 0.15"))
    (tmp_path / "rules.test.yaml").write_text(RULES_TEST.read_text())
    proc = _promtool("test", "rules", "rules.test.yaml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "ErcDeadLetterRateHigh" in proc.stdout + proc.stderr

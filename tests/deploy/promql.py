"""Every PromQL expression the project ships, ready to run against a real Prometheus.

Sources: the Grafana dashboard (panel targets, including panels nested in rows,
annotation queries and template-variable queries) and the Prometheus rules file
(recording and alerting rules). Grafana variables are replaced by concrete values
so that each expression can be sent as-is to ``/api/v1/query``:

- ``$namespace``, ``$instance`` (also ``${name}``, ``${name:regex}`` and ``[[name]]``)
  from ``variables`` (default ``.*``, which is what "All" means in the dashboard);
- ``$__rate_interval``, ``$__interval``, ``$__range`` and friends from ``intervals``.

A template-variable query ``label_values(<selector>, <label>)`` becomes ``<selector>``;
``query_result(<expr>)`` becomes ``<expr>``. Anything left with a ``$`` is an error, so
a new variable cannot slip through unsubstituted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DASHBOARD_PATH",
    "RULES_PATH",
    "DEFAULT_VARIABLES",
    "DEFAULT_INTERVALS",
    "dashboard_exprs",
    "rules_exprs",
    "all_exprs",
    "substitute",
    "metric_names",
]

_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_PATH = _ROOT / "deploy" / "grafana" / "erc-stream.json"
RULES_PATH = _ROOT / "deploy" / "prometheus" / "rules.yaml"

DEFAULT_VARIABLES: Mapping[str, str] = {"namespace": ".*", "instance": ".*"}
DEFAULT_INTERVALS: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "30000",
}

# ${name}, ${name:format}, [[name]], $name -- longest names first so $__range_s beats $__range.
_VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES_RE = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>\w+)\s*\)\s*$", re.S)
_QUERY_RESULT_RE = re.compile(r"^\s*query_result\(\s*(?P<expr>.+)\)\s*$", re.S)


def substitute(
    expr: str,
    variables: Mapping[str, str] | None = None,
    intervals: Mapping[str, str] | None = None,
) -> str:
    """Replace Grafana variables in ``expr``; raise ValueError naming any unknown one."""
    values = {**DEFAULT_VARIABLES, **(variables or {}), **DEFAULT_INTERVALS, **(intervals or {})}

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise ValueError(
                f"unknown Grafana variable ${name} in {expr!r}: add it to the dashboard's templating "
                "and to DEFAULT_VARIABLES in tests/deploy/promql.py"
            )
        return values[name]

    return _VAR_RE.sub(repl, expr)


def _variable_query_expr(query: Any) -> str | None:
    """PromQL behind a Grafana template-variable query, or None for non-PromQL ones."""
    text = query.get("query") if isinstance(query, dict) else query
    if not isinstance(text, str) or not text.strip():
        return None
    if m := _LABEL_VALUES_RE.match(text):
        return m.group("selector")
    if m := _QUERY_RESULT_RE.match(text):
        return m.group("expr")
    if text.strip().startswith(("label_names(", "metrics(")):
        raise ValueError(f"variable query {text!r} is not backed by a PromQL expression; extend promql.py")
    if text.strip().startswith("label_values("):
        raise ValueError(f"label_values without a selector ({text!r}) scans every series; give it a metric")
    return text


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))


def dashboard_exprs(
    path: Path = DASHBOARD_PATH,
    variables: Mapping[str, str] | None = None,
    intervals: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """(name, expr) for every PromQL query of the dashboard, variables substituted."""
    dashboard = json.loads(Path(path).read_text())
    out: list[tuple[str, str]] = []
    for panel in _walk_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                name = f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}"
                out.append((name, substitute(target["expr"], variables, intervals)))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            out.append((f"annotation {annotation.get('name')!r}", substitute(annotation["expr"], variables, intervals)))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        expr = _variable_query_expr(variable.get("query"))
        if expr is not None:
            out.append((f"variable {variable['name']}", substitute(expr, variables, intervals)))
    return out


def rules_exprs(path: Path = RULES_PATH) -> list[tuple[str, str]]:
    """(name, expr) for every recording and alerting rule; names are unique."""
    doc = yaml.safe_load(Path(path).read_text())
    out: list[tuple[str, str]] = []
    for group in doc["groups"]:
        for index, rule in enumerate(group["rules"]):
            if "record" in rule:
                name = f"record {rule['record']}"
            else:
                severity = rule.get("labels", {}).get("severity", "")
                name = f"alert {rule['alert']} [{severity}] ({group['name']}#{index})"
            out.append((name, rule["expr"].strip()))
    return out


def all_exprs(
    variables: Mapping[str, str] | None = None,
    intervals: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Dashboard then rules expressions, as (name, expr) pairs."""
    return [
        *((f"dashboard {n}", e) for n, e in dashboard_exprs(variables=variables, intervals=intervals)),
        *((f"rules {n}", e) for n, e in rules_exprs()),
    ]


_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """Metric-looking names in ``expr`` that start with ``erc_`` or contain a ``:`` (recording rules).

    String literals and label lists of by/without/on/ignoring are removed first, so label
    names and values do not count.
    """
    stripped = _GROUPING_RE.sub(" ", _STRING_RE.sub('""', expr))
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", "[]", stripped)  # range selectors
    return {n for n in _NAME_RE.findall(stripped) if n.startswith("erc_") or ":" in n}

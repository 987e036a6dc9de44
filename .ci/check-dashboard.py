#!/usr/bin/env python3
"""Checks the Grafana dashboard (deploy/grafana/gpuslice-dashboard.json) against the
metrics the node agent exports, so that it cannot drift from them silently.

The metric names come from the tables of docs/metrics.md (every row whose first cell is a
`gpuslice_...` name), not from a list of this check's own: that page is the exporter's
documented contract, changed with the exporter (crates/gpuslice-agent/src/metrics.rs).
A metric renamed or dropped there and in its docs fails this check wherever the
dashboard still asks for it.

Checked:
  * the file is valid JSON, a dashboard with panels;
  * every panel and query uses the `${datasource}` variable, a Prometheus data source
    variable, and the variables instance, gpu_uuid, namespace and slice exist;
  * every PromQL expression (panel queries and the variables' label_values queries) names
    only documented metrics, and at least one.

Run from anywhere: python3 .ci/check-dashboard.py [DASHBOARD] [METRICS_DOC]
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/gpuslice-dashboard.json"
METRICS_DOC = ROOT / "docs/metrics.md"

# PromQL words that are not metric names when they stand alone: operators, modifiers and
# the aggregations (written `sum by (x) (...)`, so not always followed by a parenthesis).
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "start", "end",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
REQUIRED_VARIABLES = {"datasource", "instance", "gpu_uuid", "namespace", "slice"}


def documented_metrics(doc_text):
    """The metric names of the doc's tables: rows like | `gpuslice_x_bytes` | ... |."""
    names = set()
    for line in doc_text.splitlines():
        m = re.match(r"^\|\s*`(gpuslice_[a-z0-9_]+)`\s*\|", line)
        if m:
            names.add(m.group(1))
    return names


def metric_names(expr):
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges, grouping label lists, functions, keywords and numbers are taken
    out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", text
    )
    names = []
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)", text):
        word = m.group(1)
        after = text[m.end():].lstrip()
        if after.startswith("(") or word.lower() in KEYWORDS:
            continue
        names.append(word)
    return names


def variable_expr(query):
    """The PromQL of a variable's query: label_values(EXPR, label) -> EXPR,
    query_result(EXPR) -> EXPR; None for a query without one (label_names())."""
    query = query.strip()
    m = re.match(r"^label_values\((.*),\s*[A-Za-z_]\w*\s*\)$", query, re.S)
    if m:
        return m.group(1)
    m = re.match(r"^query_result\((.*)\)$", query, re.S)
    if m:
        return m.group(1)
    if re.match(r"^label_values\(\s*[A-Za-z_]\w*\s*\)$", query) or query.startswith("label_names("):
        return None
    return query


def panels_of(items):
    for p in items:
        yield p
        yield from panels_of(p.get("panels", []))


def check(dashboard, known):
    problems = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    for name in sorted(REQUIRED_VARIABLES - set(variables)):
        problems.append(f"no template variable ${name}")
    ds = variables.get("datasource")
    if ds and (ds.get("type") != "datasource" or ds.get("query") != "prometheus"):
        problems.append("$datasource is not a Prometheus data source variable")

    exprs = []  # (where, PromQL)
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        if v.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"variable ${name} does not use ${{datasource}}")
        query = v.get("query")
        query = query.get("query", "") if isinstance(query, dict) else (query or "")
        expr = variable_expr(query)
        if expr is not None:
            exprs.append((f"variable ${name}", expr))

    panels = list(panels_of(dashboard.get("panels", [])))
    if not any(p.get("targets") for p in panels):
        problems.append("the dashboard has no panel with a query")
    for p in panels:
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('title')!r}"
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where} does not use ${{datasource}}")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid", "${datasource}") != "${datasource}":
                problems.append(f"{where}, query {t.get('refId')} does not use ${{datasource}}")
            exprs.append((f"{where}, query {t.get('refId')}", t.get("expr", "")))

    for where, expr in exprs:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: names no metric: {expr}")
        for name in names:
            if name not in known:
                problems.append(f"{where}: {name} is not a metric of docs/metrics.md: {expr}")
    return problems, len(exprs)


def self_test():
    """The parsing this check relies on, on expressions whose answer is known."""
    cases = {
        'rate(gpuslice_a_total{x=~"$x", y="a b"}[$__rate_interval])': ["gpuslice_a_total"],
        "sum by (instance, gpu_uuid) (gpuslice_b_bytes) / on(instance) group_left(slice) gpuslice_c_bytes": [
            "gpuslice_b_bytes", "gpuslice_c_bytes"],
        "count(gpuslice_d == 1) or vector(0)": ["gpuslice_d"],
        "node_memory_MemTotal_bytes offset 5m > 1e3": ["node_memory_MemTotal_bytes"],
        "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))": ["x_bucket"],
    }
    for expr, want in cases.items():
        got = metric_names(expr)
        assert got == want, f"metric_names({expr!r}) = {got}, not {want}"
    assert variable_expr('label_values(gpuslice_e{a="b"}, slice)') == 'gpuslice_e{a="b"}'
    assert variable_expr("label_values(slice)") is None
    assert documented_metrics("| `gpuslice_f_bytes` | gauge |\n| `other` |\n") == {"gpuslice_f_bytes"}
    bad = {"templating": {"list": []}, "panels": [
        {"type": "timeseries", "title": "t", "datasource": {"uid": "x"},
         "targets": [{"refId": "A", "expr": "up"}]}]}
    problems, _ = check(bad, {"gpuslice_f_bytes"})
    assert any("up is not a metric" in p for p in problems), problems
    assert any("does not use ${datasource}" in p for p in problems), problems
    assert any("no template variable $slice" in p for p in problems), problems


def main():
    dashboard_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DASHBOARD
    doc_path = Path(sys.argv[2]) if len(sys.argv) > 2 else METRICS_DOC
    self_test()
    known = documented_metrics(doc_path.read_text())
    if not known:
        sys.exit(f"{doc_path}: no metric table rows found")
    try:
        dashboard = json.loads(dashboard_path.read_text())
    except json.JSONDecodeError as e:
        sys.exit(f"{dashboard_path}: not valid JSON: {e}")
    problems, count = check(dashboard, known)
    if problems:
        sys.exit("\n".join(f"{dashboard_path}: {p}" for p in problems))
    print(f"{dashboard_path.relative_to(ROOT) if dashboard_path.is_relative_to(ROOT) else dashboard_path}: "
          f"{count} PromQL expressions, every metric documented in {doc_path.name} ({len(known)} metrics)")


if __name__ == "__main__":
    main()

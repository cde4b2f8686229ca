"""The Grafana dashboard (charts/conveyor/dashboards/conveyor.json) shows only what the code exports:
every metric named in a panel's PromQL is registered by the operator's `Metrics` or the inference
server's `Telemetry`, and every topic the operator's users asked for has its panel."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conveyor.operator.kubernetes.metrics import Metrics
from conveyor.trainer.serve.telemetry import Telemetry

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "conveyor" / "dashboards" / "conveyor.json"

# The series names each metric type exposes (the text format: counters gain _total, histograms are
# buckets, sum and count).
SERIES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# What may stand before "(" in PromQL: aggregations and the functions this dashboard may use.
CALLS = {
    "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "group", "stddev",
    "rate", "irate", "increase", "delta", "deriv", "histogram_quantile", "clamp_min", "clamp_max",
    "abs", "ceil", "floor", "round", "vector", "scalar", "time", "label_replace", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "last_over_time", "absent",
}
KEYWORDS = {"bool", "and", "or", "unless", "offset"}
# Topic (a panel's title starts with it) -> metrics its queries must read.
TOPICS = {
    "Pipelines by phase": {"conveyor_pipelines"},
    "Trials by state": {"conveyor_trials"},
    "Stage durations": {"conveyor_stage_duration_seconds_bucket"},
    "Reconcile latency": {"conveyor_reconcile_seconds_bucket"},
    "Training throughput": {"conveyor_training_samples_per_second"},
    "Inference requests": {"conveyor_inference_requests_total"},
    "Inference latency": {"conveyor_inference_request_duration_seconds_bucket"},
    "Batch size": {"conveyor_inference_batch_size_sum", "conveyor_inference_batch_size_count"},
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery windows
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group()
        if expr[match.end() :].lstrip().startswith("("):
            assert word in CALLS, f"{word}( is not a PromQL function this test knows: {expr}"
        elif word not in KEYWORDS:
            names.add(word)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("conveyor_pipelines", {"conveyor_pipelines"}),
        ('sum by (phase) (conveyor_pipelines{phase="Tuning"})', {"conveyor_pipelines"}),
        (
            "histogram_quantile(0.9, sum by (le, stage) (increase(x_bucket[6h])))",
            {"x_bucket"},
        ),
        ("sum(rate(a_sum[$__rate_interval])) / sum(rate(a_count[5m]))", {"a_sum", "a_count"}),
        ("a_total / on (job) group_left (pod) b > bool 3", {"a_total", "b"}),
        ('sum without (instance) (c{code=~"5.."}) or vector(0)', {"c"}),
        ("max(up) offset 5m", {"up"}),
    ],
)
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def families(*registries: CollectorRegistry) -> dict[str, set[str]]:
    """Each registered metric family and the series names it exposes."""
    return {f.name: {f.name + suffix for suffix in SERIES[f.type]} for r in registries for f in r.collect()}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found += [panel, *panel.get("panels", [])]  # collapsed rows hold their panels
    return [p for p in found if p.get("type") != "row"]


def queried_metrics() -> dict[str, set[str]]:
    """Each panel's title and the metrics its queries read."""
    dashboard = json.loads(DASHBOARD.read_text())
    read = {}
    for panel in panels(dashboard):
        assert panel["targets"], panel["title"]
        read[panel["title"]] = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
    return read


def test_every_query_names_a_metric_the_code_exports() -> None:
    known = set().union(*families(Metrics().registry, Telemetry("model").registry).values())
    assert {"conveyor_inference_requests_total", "conveyor_reconcile_seconds_bucket"} <= known
    for title, names in queried_metrics().items():
        assert names, title
        assert names <= known, (title, sorted(names - known))


def test_every_exported_metric_has_a_panel() -> None:
    queried = set().union(*queried_metrics().values())
    exported = families(Metrics().registry, Telemetry("model").registry)
    assert sorted(name for name, series in exported.items() if not series & queried) == []


def test_every_topic_has_a_panel() -> None:
    queried = queried_metrics()
    for topic, metrics in TOPICS.items():
        matching = [names for title, names in queried.items() if title.startswith(topic)]
        assert matching, f"no panel for {topic!r}"
        assert metrics <= set().union(*matching), (topic, sorted(metrics - set().union(*matching)))


def test_panels_use_the_datasource_variable_and_unique_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"].strip("${}") in variables, panel["title"]

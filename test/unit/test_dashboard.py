"""docs/monitoring/grafana-drift.json: every series it plots exists, and it plots all of drift's.

drift's names come from a scrape of a real ``DriftMetrics``; SGLang's from the
text of its metrics_collector.py (importing it takes most of a minute); the
gateway's from the files of the installed smg package.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from drift_sgl.scheduler.counters import MuxCounters
from drift_sgl.scheduler.metrics import DriftMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "monitoring" / "grafana-drift.json"
_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def _panels() -> list[dict]:
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels += [panel, *panel.get("panels", [])]  # a collapsed row holds its panels
    return panels


def _exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p.get("targets", []) if "expr" in t]


def _referenced(prefix: str) -> set[str]:
    pattern = re.compile(rf"\b{prefix}[a-z_]+")
    return {name for expr in _exprs() for name in pattern.findall(expr)}


def _base(name: str) -> str:
    for part in _HISTOGRAM_PARTS:
        if name.endswith(part):
            return name[: -len(part)]
    return name


def _drift_samples() -> set[str]:
    """Names of the samples a DriftMetrics exports once each method has run."""
    registry = CollectorRegistry()
    metrics = DriftMetrics({"model_name": "m"}, registry)
    metrics.publish_counters(MuxCounters(decode_steps=1))
    metrics.step(decode_share=0.5, prefill_layers=2, planner_s=1e-5)
    metrics.decode_step(predicted_s=0.01, measured_s=0.012)
    metrics.gang_merged(requests=2, seconds=0.1)
    metrics.first_token("interactive", True)
    lines = generate_latest(registry).decode().splitlines()
    names = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in lines if line[:1] not in ("", "#")}
    return {name for name in names if not name.endswith("_created")}


def _package_dir(name: str) -> Path | None:
    """A package's directory, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def test_drift_series_in_the_dashboard_exist():
    unknown = _referenced("drift:") - _drift_samples()
    assert not unknown, f"not exported by DriftMetrics: {sorted(unknown)}"


def test_every_drift_series_is_plotted():
    exported = {_base(name) for name in _drift_samples()}
    assert {f"drift:{counter}_total" for counter in MuxCounters.__dataclass_fields__} <= exported
    unplotted = exported - {_base(name) for name in _referenced("drift:")}
    assert not unplotted, f"in no panel: {sorted(unplotted)}"


def test_sglang_series_in_the_dashboard_exist():
    sglang = _package_dir("sglang")
    assert sglang is not None
    text = (sglang / "srt" / "observability" / "metrics_collector.py").read_text()
    names = _referenced("sglang:")
    assert names
    unknown = {n for n in names if f'"{_base(n).removesuffix("_total")}"' not in text}
    assert not unknown, f"not defined in sglang's metrics_collector.py: {sorted(unknown)}"


def test_gateway_series_in_the_dashboard_exist():
    smg = _package_dir("smg")
    if smg is None:
        pytest.skip("smg (the gateway) is not installed")
    names = _referenced("smg_")
    assert names
    blobs = [f.read_bytes() for f in smg.rglob("*") if f.suffix in (".py", ".so")]
    # The extension's strings run together: a name ends where [a-z_] stops.
    found = {n for n in names for b in blobs if re.search(rf"{n}(?![a-z_])".encode(), b)}
    unknown = names - found
    assert not unknown, f"not in the smg package: {sorted(unknown)}"


def test_panel_ids_are_unique_and_laid_out():
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    places = [tuple(p["gridPos"][k] for k in "xywh") for p in panels]
    assert len(places) == len(set(places))
    assert all(x + w <= 24 for x, _, w, _ in places)


def test_dashboard_settings():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39
    assert dashboard["refresh"] == "10s"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    query = variables["model_name"]["query"]["query"]
    assert query == "label_values(sglang:num_running_reqs, model_name)"

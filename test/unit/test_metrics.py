"""drift_sgl.scheduler.metrics: drift's series, on a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from drift_sgl.scheduler.counters import MuxCounters
from drift_sgl.scheduler.metrics import DriftMetrics

LABELS = {"model_name": "tiny"}


def _scrape(registry) -> str:
    return generate_latest(registry).decode()


def test_counters_are_published_by_what_they_gained():
    registry = CollectorRegistry()
    metrics = DriftMetrics(LABELS, registry)
    counters = MuxCounters(decode_steps=3, shed_requests=1)
    metrics.publish_counters(counters)
    counters.decode_steps = 5
    metrics.publish_counters(counters)
    metrics.publish_counters(counters)
    text = _scrape(registry)
    assert 'drift:decode_steps_total{model_name="tiny"} 5.0' in text
    assert 'drift:shed_requests_total{model_name="tiny"} 1.0' in text
    assert 'drift:stalls_total{model_name="tiny"} 0.0' in text


def test_step_gang_decode_and_ttft_series():
    registry = CollectorRegistry()
    metrics = DriftMetrics(LABELS, registry)
    metrics.step(decode_share=0.25, prefill_layers=4, planner_s=3e-5)
    metrics.step(decode_share=1.0, prefill_layers=0, planner_s=2e-5)
    metrics.decode_step(predicted_s=0.010, measured_s=0.012)
    metrics.decode_step(predicted_s=None, measured_s=0.011)
    metrics.gang_merged(requests=3, seconds=0.2)
    metrics.first_token("interactive", True)
    metrics.first_token(None, None)
    metrics.first_token("interactive", False)
    text = _scrape(registry)
    assert 'drift:decode_share{model_name="tiny"} 1.0' in text
    assert 'drift:prefill_layers_per_step_count{model_name="tiny"} 1.0' in text
    assert 'drift:planner_decision_seconds_count{model_name="tiny"} 2.0' in text
    assert 'drift:decode_step_seconds_count{model_name="tiny"} 2.0' in text
    assert 'drift:decode_step_predicted_seconds_count{model_name="tiny"} 1.0' in text
    assert 'drift:gang_requests_sum{model_name="tiny"} 3.0' in text
    for met in ("yes", "no"):
        series = f'met="{met}",model_name="tiny",slo_class="interactive"'
        assert f"drift:ttft_slo_requests_total{{{series}}} 1.0" in text
    assert 'met="none",model_name="tiny",slo_class="default"' in text

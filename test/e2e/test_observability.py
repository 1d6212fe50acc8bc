"""What operators see of the shared drift server: /metrics and the start-up log."""

from __future__ import annotations

import re
from dataclasses import fields

from drift_sgl.scheduler.counters import MuxCounters
from e2e.client import generate_ids, get

#: Series every drift server with --enable-metrics exports, besides the counters.
DRIFT_SERIES = (
    "drift:decode_share",
    "drift:prefill_layers_per_step_bucket",
    "drift:gang_requests_bucket",
    "drift:gang_duration_seconds_bucket",
    "drift:planner_decision_seconds_bucket",
    "drift:decode_step_seconds_bucket",
    "drift:decode_step_predicted_seconds_bucket",
    "drift:ttft_slo_requests_total",
)


def _scrape(server) -> str:
    resp = get(server, "/metrics")
    assert resp.status_code == 200, resp.text
    return resp.text


def test_metrics_has_every_drift_series_beside_sglangs(drift_server):
    generate_ids(drift_server, "Metrics need some traffic first", 8)
    text = _scrape(drift_server)
    assert "sglang:num_running_reqs" in text  # SGLang's own series are still there
    names = {spec.name for spec in fields(MuxCounters)}
    missing = [f"drift:{name}_total" for name in names if f"drift:{name}_total" not in text]
    missing += [series for series in DRIFT_SERIES if series not in text]
    assert not missing, missing


def test_metrics_follow_the_loop(drift_server):
    def decode_steps() -> float:
        match = re.search(r"^drift:decode_steps_total\{[^}]*\} (\S+)$", _scrape(drift_server), re.M)
        assert match, "drift:decode_steps_total not found"
        return float(match.group(1))

    before = decode_steps()
    generate_ids(drift_server, "Eight more decode steps, at least", 8)
    assert decode_steps() >= before + 7


def test_the_start_up_log_says_what_runs_in_one_line(drift_server):
    log = drift_server.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if "drift: serving with partition backend" in line]
    assert len(lines) == 1, lines
    assert "policy slo (targets TTFT none, TPOT 1 ms; 2 SLO classes; overload shed)" in lines[0]
    assert "latency model: no --drift-profile: quick CPU calibration" in lines[0]
    assert "LatencyModel(" not in log  # no repr of the whole model


def test_sglangs_cpu_import_noise_stays_out_of_the_log(drift_server):
    log = drift_server.log_path.read_text(errors="replace")
    # (the CPU-mode line names the filters themselves, so look for the warnings)
    assert "UserWarning: Only CUDA" not in log
    assert "UserWarning: Triton is not supported" not in log
    noise = [line for line in log.splitlines() if "Ignore import error when loading" in line]
    assert not noise, noise[:3]  # every such line of the tiny model's run has a CPU cause

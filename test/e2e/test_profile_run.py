"""`profile run` on the tiny model: interrupted, resumed, fitted, then loaded by a server."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from drift_sgl.latency import LatencyModel, read_samples
from drift_sgl.latency.identity import read_hf_config
from drift_sgl.latency.roofline import memory_info
from drift_sgl.tools.server_process import python_module_command
from e2e.client import get
from e2e.profiling import CPU_MAX_MEAN_ERROR, CPU_MAX_P95_ERROR, INTERRUPT_AFTER_SAMPLES
from e2e.servers import drift_server_process, serve

pytestmark = pytest.mark.slow

LLAMA_8B = Path(__file__).resolve().parents[2] / "bench" / "models" / "llama-3.1-8b"


def test_an_interrupted_run_keeps_its_samples_and_resumes(tiny_profile):
    assert tiny_profile.interrupted_rc == 130, tiny_profile.interrupted_log[-2000:]
    assert "samples taken so far are kept" in tiny_profile.interrupted_log
    assert "resuming:" in tiny_profile.resumed_log
    samples = read_samples(tiny_profile.samples)
    assert len(samples) > INTERRUPT_AFTER_SAMPLES
    repeated = [k for k, n in Counter(s.extra["point"] for s in samples).items() if n > 1]
    assert not repeated, repeated


def test_the_run_covers_both_phases_all_shares_and_co_runs(tiny_profile):
    samples = read_samples(tiny_profile.samples)
    groups = {(s.phase, s.sm, s.co_run) for s in samples}
    assert {("prefill", 1, False), ("decode", 1, False)} <= groups
    assert any(co_run for _, _, co_run in groups), groups
    assert all(s.extra["cost_s"] > 0 for s in samples)


def test_the_profile_is_measured_fitted_and_bounded(tiny_profile, tiny_model_dir):
    profile = LatencyModel.load(tiny_profile.path)
    assert profile.estimated is False and profile.source == "measured"
    assert profile.model.num_layers == 6 and profile.model.hidden_size == 64
    # The served model's weights and KV bytes per token, which size the simulator's KV pool.
    expected = memory_info(read_hf_config(tiny_model_dir), profile.model.dtype)
    assert {key: profile.info.get(key) for key in expected} == expected
    assert expected["weight_bytes"] > 0 and expected["kv_bytes_per_token"] > 0
    assert profile.device.kind == "cpu"
    for phase in ("prefill", "decode"):
        assert profile.errors[phase]["p95_ape"] <= CPU_MAX_P95_ERROR
        assert profile.errors[phase]["mean_ape"] <= CPU_MAX_MEAN_ERROR, profile.errors
    assert "held-out error" in tiny_profile.resumed_log or "in-sample" in tiny_profile.resumed_log
    # More work never predicts less time; more threads never predict more.
    assert profile.prefill_ms(512, 0, 1) > profile.prefill_ms(64, 0, 1)
    assert profile.prefill_ms(512, 0, 2) <= profile.prefill_ms(512, 0, 1)
    assert profile.decode_ms(8, 800, 1, worst_case=True) >= profile.decode_ms(8, 800, 1)


@pytest.fixture(scope="module")
def profiled_server(tiny_model_dir, server_logs_dir, tiny_profile):
    server = drift_server_process(
        tiny_model_dir,
        server_logs_dir / "drift-profiled.log",
        "--max-total-tokens", "4096",
        "--drift-profile", str(tiny_profile.path),
    )  # fmt: skip
    yield from serve(server)


def test_the_server_loads_the_profile(profiled_server, tiny_profile):
    states = get(profiled_server, "/server_info").json()["internal_states"]
    latency = states[0]["drift"]["latency_model"]
    assert latency["profile"] == str(tiny_profile.path)
    assert latency["source"] == "measured" and latency["estimated"] is False
    log = profiled_server.log_path.read_text(errors="replace")
    assert f"latency profile {tiny_profile.path}: measured" in log  # the launcher's check
    assert f"latency model: --drift-profile {tiny_profile.path}" in log  # the scheduler


def test_a_profile_of_another_model_is_refused_before_start(
    tiny_model_dir, tmp_path, server_logs_dir
):
    estimate = tmp_path / "llama-8b-h100.json"
    subprocess.run(
        python_module_command(
            "drift_sgl.profile", "estimate", "--model-path", str(LLAMA_8B), "--gpu", "h100",
            "--out", str(estimate),
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert json.loads(estimate.read_text())["estimated"] is True
    result = subprocess.run(
        python_module_command(
            "drift_sgl.launch_server", "--model-path", str(tiny_model_dir), "--device", "cpu",
            "--drift-profile", str(estimate),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "drift-sgl: error: --drift-profile:" in result.stderr
    assert "num_layers: profile has 32, server has 6" in result.stderr
    assert "--drift-profile-allow-mismatch" in result.stderr

"""The real-server benchmarks (bench/multiturn.py, goodput.py, calibrate.py) on CPU servers.

Each runs as a user runs it (a subprocess, JSON on stdout) against real drift
and SGLang servers on the tiny model, on a few sessions of the tiny trace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drift_sgl.loadgen.report import REPORT_KEYS
from drift_sgl.sim.trace import first_sessions, read_trace
from drift_sgl.tools.server_process import ServerProcess

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TRACE = REPO / "bench" / "traces" / "cpu-tiny.jsonl"
SESSIONS = 4


def bench(script: str, *args: str, timeout: float = 600) -> dict:
    """Run a bench script; return its JSON report (stdout), failing with its stderr."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def multiturn(server: ServerProcess, *args: str) -> dict:
    return bench(
        "multiturn.py",
        "--url", server.url,
        "--api-key", server.api_key,
        "--trace", str(TRACE),
        "--sessions", str(SESSIONS),
        "--ttft-slo-ms", "5000",
        "--tpot-slo-ms", "1000",
        "--quiet",
        "--per-turn",
        *args,
    )  # fmt: skip


def expected_turns() -> int:
    return len(first_sessions(read_trace(TRACE), SESSIONS))


@pytest.mark.parametrize("client", ["openai", "frontend"])
def test_multiturn_replays_every_turn_against_drift(drift_server, client):
    report = multiturn(drift_server, "--client", client)
    assert set(REPORT_KEYS) <= set(report)
    assert report["requests"] == expected_turns() and report["failed_requests"] == 0
    assert report["short_outputs"] == 0  # ignore_eos honoured: lengths follow the trace
    rows = report["turns"]
    assert all(row["output_tokens"] == row["expected_output_tokens"] for row in rows)
    # Later turns resend the history, and the server's radix cache serves it.
    later = [row for row in rows if row["turn"] > 0]
    assert later and all(row["cached_tokens"] > 0 for row in later)
    assert report["prefix_hit_rate"] > 0.3
    assert 0 < report["ttft_p50_ms"] <= report["ttft_p99_ms"]
    assert report["throughput_tok_s"] > 0 and report["goodput_rps"] > 0


def test_multiturn_reports_the_same_keys_for_sglang(sglang_server):
    report = multiturn(sglang_server, "--rate", "4", "--window-s", "1")
    assert set(REPORT_KEYS) <= set(report)
    assert report["failed_requests"] == 0 and report["requests"] == expected_turns()
    assert report["rate_sessions_per_s"] == 4.0


def test_multiturn_rejects_bad_input_with_one_line(drift_server, tmp_path):
    bad_trace = tmp_path / "bad.jsonl"
    bad_trace.write_text('{"session": "a", "turn": 0}\n')
    for args, message in (
        (["--trace", str(bad_trace)], "missing key(s)"),
        (["--trace", str(TRACE), "--rate", "0"], "--rate must be > 0"),
    ):
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / "multiturn.py"), "--url", drift_server.url,
             "--ttft-slo-ms", "1", "--tpot-slo-ms", "1", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_goodput_cpu_tiny_config_compares_every_system(tmp_path):
    """bench/configs/cpu-tiny.yaml as shipped, with a shorter search (--set)."""
    out = tmp_path / "goodput"
    report = bench(
        "goodput.py", "bench/configs/cpu-tiny.yaml",
        "--out", str(out),
        "--sessions", "4",
        "--set", "window_s=4",
        "--set", "max_doublings=1",
        "--set", "bisect_steps=0",
        "--set", "saturation_rate=8",
        timeout=1500,
    )  # fmt: skip
    systems = report["systems"]
    names = ["drift", "drift-layer-budget", "sglang-default", "sglang-chunked"]
    assert list(systems) == names
    for name, system in systems.items():
        assert "error" not in system, f"{name}: {system.get('error')}"
        for run in [system["at_goodput"], system["saturation"], *system["runs"]]:
            assert set(REPORT_KEYS) <= set(run), name
            assert run["failed_requests"] == 0, (name, run["errors"])
        assert system["search"] and system["max_session_rate"] >= 0
    pairs = {f"{a}_vs_{b}" for i, a in enumerate(names) for b in names[i + 1 :]}
    assert set(report["comparison"]) == pairs
    ratio = report["comparison"]["drift_vs_sglang-default"]["saturation_throughput_ratio"]
    assert ratio is not None and ratio > 0
    assert (out / "goodput.json").exists() and (out / "goodput.png").stat().st_size > 10_000


def test_calibrate_compares_simulated_and_measured(tiny_profile, tiny_model_dir, tmp_path):
    report = bench(
        "calibrate.py",
        "--profile", str(tiny_profile.path),
        "--trace", str(TRACE),
        "--sessions", str(SESSIONS),
        "--rate", "2",
        "--window-s", "2",
        "--ttft-slo-ms", "2000",
        "--tpot-slo-ms", "200",
        "--kv-capacity-tokens", "8192",
        "--model-path", str(tiny_model_dir),
        "--server-args", "--device cpu --skip-server-warmup",
        "--log", str(tmp_path / "server.log"),
        "--quiet",
    )  # fmt: skip
    # The same workload on both sides: the same requests.
    assert report["requests"]["predicted"] == report["requests"]["measured"]
    assert report["measured_failures"] == 0
    for key in ("goodput_rps", "ttft_p99_ms", "tpot_p99_ms"):
        row = report["figures"][key]
        assert row["predicted"] > 0 and row["measured"] > 0, (key, row)
        assert isinstance(row["relative_error"], float)

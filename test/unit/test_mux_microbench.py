"""bench/gpu/mux_microbench.py without a GPU: the --smoke run end to end, the exit without
CUDA, and the pieces whose logic does not need a GPU (chunk search, headline choice, the
co-run bookkeeping of the concurrent path)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu" / "mux_microbench.py"
SECTIONS = {"benchmark", "mode", "options", "environment", "model", "probe", "solo", "corun",
            "chunked", "headline", "errors", "wall_s", "plot"}  # fmt: skip


def _run(*args: str, cuda: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), env.get("PYTHONPATH")]))
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # torch sees no CUDA device, on a GPU machine too
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def bench_module():
    yield load_script(SCRIPT, "mux_microbench")
    sys.modules.pop("mux_microbench", None)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("mux-smoke")
    started = time.monotonic()
    proc = _run("--smoke", "--out", str(out))
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SimpleNamespace(
        out=out,
        proc=proc,
        elapsed=elapsed,
        result=json.loads((out / "mux_microbench.json").read_text()),
    )


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_smoke_is_fast_and_prints_one_summary_line(smoke):
    assert smoke.elapsed < 60
    lines = smoke.proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mux_microbench [smoke, CPU]")
    assert "ratio" in lines[0]
    assert "solo-prefill" in smoke.proc.stderr and "chunked" in smoke.proc.stderr


def test_smoke_json_has_every_section_with_numbers(smoke):
    r = smoke.result
    assert set(r) == SECTIONS
    assert r["mode"] == "smoke" and r["errors"] == {}
    assert r["probe"] == {"skipped": "no GPU"}
    partition = r["environment"]["partition"]
    assert partition["concurrent"] is False and len(partition["splits"]) >= 3
    assert r["model"]["hidden"] == 64 and r["options"]["smoke"] is True

    prefill, decode = r["solo"]["prefill"], r["solo"]["decode"]
    assert prefill and decode
    assert all(_positive(row["median_ms"]) and _positive(row["tokens_per_s"]) for row in prefill)
    assert all(_positive(row["median_ms"]) for row in decode)
    # Every split with prefill units and every prefill size; every split with decode units.
    assert len(prefill) == 3 * len(r["options"]["prefill_tokens"])
    assert {row["batch"] for row in decode} == {*r["options"]["decode_batches"], 4}

    assert r["corun"]
    for row in r["corun"]:
        for key in (
            "decode_corun_ms",
            "decode_slowdown",
            "prefill_corun_ms",
            "prefill_tokens_per_s",
        ):
            assert _positive(row[key]), (key, row)
        assert row["decode_steps"] > 0 and row["prefill_blocks"] > 0
        # Taking turns, a decode step waits for a whole prefill block.
        assert row["decode_corun_ms"] >= row["prefill_corun_ms"]

    chunked = r["chunked"]
    assert chunked["tpot_source"] == "derived (smoke)" and _positive(chunked["tpot_ms"])
    assert chunked["best_chunk"] > 0 and chunked["best_chunk"] % r["options"]["chunk_granule"] == 0
    assert _positive(chunked["decode_only_ms"]) and chunked["trials"]

    head = r["headline"]
    assert _positive(head["ratio_mux_over_chunked"])
    assert _positive(head["mux"]["tokens_per_s"]) and _positive(head["chunked"]["tokens_per_s"])
    assert head["mux"]["decode_step_ms"] <= head["tpot_ms"]
    assert head["chunked"]["step_ms"] <= head["tpot_ms"]
    assert head["mux"]["split_index"] in {1, 2}  # a mixed split of the fake table


def test_smoke_writes_samples_a_profile_is_fitted_from(smoke, tmp_path):
    from drift_sgl.latency import LatencyModel, read_samples
    from drift_sgl.profile.cli import main as profile_main

    r, path = smoke.result, smoke.out / "samples.jsonl"
    samples = read_samples(path)
    solo = r["solo"]
    assert len(samples) == len(solo["prefill"]) + len(solo["decode"])
    assert not any(s.co_run for s in samples)  # taking turns is no co-run
    # Decode at more than one context, so the fit can tell batch from KV.
    contexts = {s.kv_tokens // s.batch_size for s in samples if s.phase == "decode"}
    assert contexts == {r["options"]["context"], *r["options"]["decode_contexts"]}
    # A block of prefill layers is scaled to the whole model.
    block = solo["prefill"][0]
    full = next(s for s in samples if s.phase == "prefill")
    assert full.latency_ms == pytest.approx(
        block["median_ms"] * r["model"]["model_layers"] / r["options"]["prefill_layers"]
    )
    out = tmp_path / "profile.json"
    profile_main(["fit", "--samples", str(path), "--out", str(out), "--force"])
    profile = LatencyModel.load(out)
    assert profile.device.name == "cpu (mux_microbench smoke)" and profile.model.num_layers == 2
    assert profile.decode_ms(4, 4 * 64, 4) > 0


def test_green_context_co_runs_become_co_run_samples(bench_module):
    result = {
        "mode": "green-ctx",
        "environment": {"partition": {"total_units": 132}},
        "model": {"model_layers": 32},
        "options": {"prefill_layers": 4, "context": 2048},
        "solo": {"prefill": [], "decode": []},
        "corun": [
            {
                "prefill_sms": 100,
                "decode_sms": 32,
                "batch": 8,
                "prefill_tokens": 512,
                "prefill_corun_ms": 5.0,
                "decode_corun_ms": 9.0,
            }
        ],
    }
    rows = bench_module.profile_samples(result, "NVIDIA H200", {"architecture": "x"})
    prefill, decode = rows
    assert (prefill["phase"], prefill["sm"], prefill["co_run"]) == ("prefill", 100, True)
    assert prefill["latency_ms"] == 40.0 and prefill["new_tokens"] == 512
    assert (decode["phase"], decode["sm"], decode["kv_tokens"]) == ("decode", 32, 8 * 2048)
    assert decode["latency_ms"] == 9.0 and decode["device"] == "NVIDIA H200"
    # Taking turns (time-mux) is not a co-run.
    assert bench_module.profile_samples({**result, "mode": "time-mux"}, "g", {}) == []


def test_smoke_png(smoke):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert smoke.result["plot"] is None
        return
    png = smoke.out / smoke.result["plot"]
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_cuda_and_without_smoke_exits_2(tmp_path):
    proc = _run("--out", str(tmp_path))
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--smoke" in proc.stderr
    assert not (tmp_path / "mux_microbench.json").exists()


def test_search_chunk_doubles_then_bisects(bench_module):
    calls = []

    def step_ms(chunk):
        calls.append(chunk)
        return 10.0 + 0.01 * chunk

    found = bench_module.search_chunk(step_ms, tpot=20.0, granule=64, max_chunk=16384)
    assert found["best_chunk"] == 960  # 10 + 9.6 <= 20 < 10 + 10.24
    assert found["capped"] is False
    assert found["tokens_per_s"] == pytest.approx(960 / 19.6 * 1e3, rel=1e-3)
    assert calls[:5] == [64, 128, 256, 512, 1024] and all(c % 64 == 0 for c in calls)
    assert [t["chunk"] for t in found["trials"]] == sorted(set(calls))


def test_search_chunk_edges(bench_module):
    never = bench_module.search_chunk(lambda c: 100.0, tpot=50.0, granule=64, max_chunk=4096)
    assert never["best_chunk"] == 0 and never["tokens_per_s"] == 0.0 and not never["capped"]
    always = bench_module.search_chunk(lambda c: 1.0, tpot=50.0, granule=64, max_chunk=4096)
    assert always["best_chunk"] == 4096 and always["capped"] is True


def _corun_row(split, batch, decode_ms, rate):
    return {"split_index": split, "prefill_sms": 132 - 16 * split, "decode_sms": 16 * split,
            "batch": batch, "prefill_tokens": 2048, "decode_corun_ms": decode_ms,
            "prefill_cycle_ms": 7.0, "prefill_tokens_per_s": rate}  # fmt: skip


def test_headline_takes_the_fastest_split_within_tpot(bench_module):
    bench = SimpleNamespace(opts=SimpleNamespace(headline_batch=64, context=2048))
    rows = [
        _corun_row(1, 64, 60.0, 900.0),  # fastest prefill, but decode misses the target
        _corun_row(2, 64, 40.0, 600.0),
        _corun_row(3, 64, 20.0, 300.0),
        _corun_row(4, 32, 10.0, 5000.0),  # another batch
        _corun_row(5, 64, None, 8000.0),  # no decode step measured
    ]
    chunked = {"tpot_ms": 50.0, "tpot_source": "--tpot-ms", "tokens_per_s": 200.0,
               "best_chunk": 512, "step_ms": 45.0}  # fmt: skip
    head = bench_module.headline(bench, rows, chunked)
    assert head["mux"]["split_index"] == 2 and head["mux"]["split"] == "100:32"
    assert head["mux"]["tokens_per_s"] == 600.0 and head["mux"]["candidates_meeting_tpot"] == 2
    assert head["ratio_mux_over_chunked"] == 3.0 and head["chunked"]["chunk"] == 512
    nothing = bench_module.headline(bench, rows, {**chunked, "tokens_per_s": 0.0})
    assert nothing["ratio_mux_over_chunked"] is None


def test_concurrent_corun_keeps_runs_inside_the_other_phases_window(bench_module, tmp_path):
    """The green-context co-run path on CPU streams: the launch interleaving and the window
    filter (the phases run one after the other here, which the bookkeeping must not mind)."""
    opts = replace(bench_module.parse_options(["--smoke", "--out", str(tmp_path)]), corun_ms=40.0)
    backend, _ = bench_module.open_backend(opts)
    bench = bench_module.Bench(opts, 2, backend, True, None, bench_module.Clock(False), torch.cpu)
    order = []

    def phase(name, seconds):
        return lambda: (order.append(name), time.sleep(seconds))

    steps, blocks, cycles = bench_module.corun(
        bench, backend.pair(1), phase("p", 0.004), phase("d", 0.001), 4.0, 1.0
    )
    assert order[0] == "d" and order.count("d") > 3 * order.count("p") > 0
    assert len(steps) >= 5 and len(blocks) >= 2 and cycles == blocks
    assert all(0.9 <= t < 50 for t in steps) and all(3.9 <= t < 100 for t in blocks)


@pytest.mark.gpu
def test_small_run_on_a_gpu(tmp_path):
    """On a GPU with green contexts: every stage runs on real partitions (small sizes)."""
    small = "--prefill-tokens 512 --decode-batches 8 --headline-batch 8 --decode-layers 4"
    small += " --warmup 1 --repeats 3 --corun-ms 50"
    proc = _run("--out", str(tmp_path), *small.split(), cuda=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads((tmp_path / "mux_microbench.json").read_text())
    assert r["mode"] == "green-ctx" and r["errors"] == {}
    assert r["environment"]["sm_count"] == r["environment"]["partition"]["total_units"]
    assert r["corun"] and all(row["decode_steps"] > 0 for row in r["corun"])
    assert "skipped" in r["probe"] or r["probe"]["all_ok"] is True

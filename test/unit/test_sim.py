"""The discrete-event simulator (drift_sgl.sim): accounting, caching, policies, CLI."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from drift_sgl.latency.model import ContentionGuard, LatencyModel
from drift_sgl.partition.base import SmSplit
from drift_sgl.partition.sm_layout import SmGranularity, granularity_for, planned_split_table
from drift_sgl.policy import MuxState, SloPlanner
from drift_sgl.rate_search import find_goodput
from drift_sgl.sim import cli
from drift_sgl.sim.cache import CapacityError, RadixCache
from drift_sgl.sim.driver import simulate
from drift_sgl.sim.engine import DecodeBatch, Request, RequestRecord
from drift_sgl.sim.metrics import summarize
from drift_sgl.sim.policies.mux import drift_splits, family_granularity, pdmux_splits
from drift_sgl.sim.trace import Turn, write_trace

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "bench" / "profiles" / "llama-3.1-8b-h100.estimate.json"
TTFT, TPOT = 2000.0, 50.0


@pytest.fixture(scope="module")
def latency():
    return LatencyModel.load(PROFILE)


def chat(
    sessions=12,
    turns=3,
    new=300,
    out=40,
    think=0.5,
    gap=0.2,
    prefix=None,
    prefix_tokens=0,
    name="s",
):
    """A synthetic trace: ``sessions`` sessions of ``turns`` turns, outputs varying 1..out."""
    rows = []
    for i in range(sessions):
        for k in range(turns):
            rows.append(
                Turn(
                    session=f"{name}{i}",
                    turn=k,
                    delay_s=i * gap if k == 0 else think,
                    new_input_tokens=new + 37 * ((i + k) % 5),
                    output_tokens=1 + (7 * i + 13 * k) % out,
                    shared_prefix_id=prefix,
                    shared_prefix_tokens=prefix_tokens if prefix else 0,
                )
            )
    return rows


def run(latency, turns, policy, ttft=TTFT, tpot=TPOT, **kwargs):
    config, _ = cli.make_config(policy, latency, ttft, tpot, **kwargs)
    return simulate(turns, config, latency)


CASES = [
    ("drift", {}),
    ("drift", {"mux_loop": "async"}),
    ("pdmux", {}),
    ("pdmux", {"mux_loop": "async"}),
    ("sglang", {}),
    ("chunked", {}),
    ("disagg", {"gpus": 2}),
    ("drift", {"gpus": 2}),
]


# ------------------------------------------------------------ accounting


@pytest.mark.parametrize(("policy", "kwargs"), CASES)
def test_every_request_completes_once_with_exact_tokens(latency, policy, kwargs):
    turns = chat(prefix="sys", prefix_tokens=500)
    result = run(latency, turns, policy, **kwargs)
    rids = [r.rid for r in result.records]
    assert len(rids) == len(set(rids)) == len(turns)
    assert set(rids) == {f"{t.session}#{t.turn}" for t in turns}
    assert not result.stopped_early
    assert result.tokens_generated == sum(t.output_tokens for t in turns)
    for record in result.records:
        assert record.first_token_ms > record.arrival_ms
        assert record.last_token_ms >= record.first_token_ms
        assert record.decode_tokens == record.output_tokens - 1
    assert max(result.max_kv_used) <= result.kv_capacity_tokens


def test_later_turns_arrive_after_the_previous_answer_plus_think_time(latency):
    turns = chat(sessions=3, turns=4, think=0.7)
    by_rid = {r.rid: r for r in run(latency, turns, "drift").records}
    for t in turns:
        if t.turn:
            before = by_rid[f"{t.session}#{t.turn - 1}"]
            assert by_rid[f"{t.session}#{t.turn}"].arrival_ms == pytest.approx(
                before.last_token_ms + 700
            )


# ---------------------------------------------------------- prefix cache


@pytest.mark.parametrize("policy", ["drift", "sglang", "chunked"])
def test_a_long_session_hits_its_own_history(latency, policy):
    turns = chat(sessions=1, turns=30, new=50, out=20, think=0.1)
    records = run(latency, turns, policy).records
    assert summarize(records, TTFT, TPOT, 1).prefix_hit_rate > 0.9


def test_disaggregation_splits_the_prefix_cache(latency):
    shared = chat(sessions=40, turns=1, new=100, prefix="tools", prefix_tokens=4000)
    hit = {
        policy: summarize(run(latency, shared, policy, **kw).records, TTFT, TPOT, 1)
        for policy, kw in (("sglang", {}), ("disagg", {"gpus": 4}))
    }
    assert hit["disagg"].prefix_hit_rate < hit["sglang"].prefix_hit_rate
    # One long session: disagg re-prefills every earlier output.
    long = chat(sessions=1, turns=20, new=50, out=400, think=0.1)
    colocated = summarize(run(latency, long, "sglang").records, TTFT, TPOT, 1)
    split = summarize(run(latency, long, "disagg", gpus=2).records, TTFT, TPOT, 2)
    assert split.prefix_hit_rate < colocated.prefix_hit_rate - 0.05
    assert split.prefix_hit_rate > 0.5  # the inputs still hit the prefill instance


@pytest.mark.parametrize("policy", ["drift", "pdmux", "sglang", "chunked", "disagg"])
def test_a_small_kv_pool_evicts_but_serves_everyone(latency, policy):
    turns = chat(sessions=16, turns=4, new=400, out=60, gap=0.05)
    gpus = 2 if policy == "disagg" else 1
    need = max(
        sum(t.new_input_tokens + t.output_tokens for t in turns if t.session == s)
        for s in {t.session for t in turns}
    )
    result = run(latency, turns, policy, kv_capacity_tokens=need + 500, gpus=gpus)
    assert len(result.records) == len(turns)
    assert result.evicted_tokens > 0
    assert max(result.max_kv_used) <= need + 500


def test_kv_capacity_below_one_request_is_an_error(latency):
    with pytest.raises(cli.SimError, match="KV capacity"):
        run(latency, chat(sessions=1, turns=1, new=900), "sglang", kv_capacity_tokens=500)


def test_radix_cache_lru_locks_and_capacity():
    cache = RadixCache(100)
    a = [("shared", 30), ("a:i0", 10)]
    b = [("shared", 30), ("b:i0", 10)]
    assert cache.reserve(40)
    nodes_a = cache.commit([], a, 40)
    assert cache.match(b)[1] == 30 and cache.used == 40
    path, _ = cache.match(b, touch=True)
    cache.lock(path)
    assert cache.reserve(10)
    nodes_b = path + cache.commit(path, b[1:], 10)
    cache.unlock(nodes_a)  # a done; b still holds shared + b:i0
    assert cache.available == 100 - 50 + 10  # only a:i0 is evictable
    assert not cache.reserve(61)
    assert cache.reserve(60)  # evicts a:i0, keeps the locked path
    assert cache.match(a)[1] == 30 and cache.evicted_tokens == 10
    assert cache.used == 100 == cache.max_used
    cache.release(60)
    cache.unlock(nodes_b)
    assert cache.reserve(100)  # everything unlocked can go
    assert cache.tree_tokens == 0
    with pytest.raises(CapacityError):
        cache.unlock(nodes_b)


# ------------------------------------------------------------- policies


def test_split_tables(latency):
    assert pdmux_splits(132, "NVIDIA H100 80GB HBM3") == (
        SmSplit(132, 0),
        *(SmSplit(p, 132 - p) for p in (112, 104, 96, 88, 80, 72)),
        SmSplit(0, 132),
    )
    # drift plans over the table its server builds (--drift-splits auto), not its own.
    table = drift_splits(latency.device)
    assert table == planned_split_table(132, SmGranularity(8, 8))
    assert table[0] == SmSplit(132, 0) and table[-1] == SmSplit(0, 132)
    assert [s.decode_units for s in table[1:-1]] == [16, 32, 48, 64, 80, 96]


@pytest.mark.parametrize(
    ("name", "capability"),
    [
        ("NVIDIA H100 80GB HBM3", 9),
        ("NVIDIA H200", 9),
        ("NVIDIA B200", 10),
        ("NVIDIA A100-SXM4-80GB", 8),
        ("NVIDIA L40S", 8),
        ("NVIDIA A10G", 8),
    ],
)
def test_the_simulator_splits_a_gpu_as_its_server_would(name, capability):
    assert family_granularity(name) == granularity_for(capability, 0)


@pytest.mark.parametrize(("batch", "kv"), [(1, 100), (64, 200_000), (400, 440_000)])
def test_with_nothing_to_prefill_or_admit_decode_keeps_the_whole_device(latency, batch, kv):
    """The planner's early answer (before its split search) on the simulator's table."""
    splits = drift_splits(latency.device)
    state = MuxState(
        decode_batch_size=batch,
        prefill_new_tokens=0,
        prefill_layers_left=0,
        num_layers=32,
        splits=splits,
        now_ms=5.0,
        decode_kv_tokens=kv,
        decode_tpot_ms=TPOT,
        kv_free_tokens=1000,
    )
    decision = SloPlanner(latency, overload="serve").decide(state)
    assert (decision.split_index, decision.prefill_layers) == (len(splits) - 1, 0)
    assert decision.admit == () and not decision.preempt


def bursty(bursts=4, size=8, new=8000, every=3.0, short=60):
    """Bursts of long prompts over a stream of short chats (moderate load on average)."""
    rows = [
        Turn(f"long{j}-{i}", 0, every * j + 0.5, new + i, 20)
        for j in range(bursts)
        for i in range(size)
    ]
    rows += [Turn(f"short{i}", 0, i * 0.2, 200 + i, 30) for i in range(short)]
    return rows


@pytest.mark.parametrize("mux_loop", ["sync", "async"])
def test_drift_keeps_tpot_where_prefill_first_does_not(latency, mux_loop):
    turns = bursty()  # prefill-first stalls decoding requests for a whole burst
    drift = summarize(
        run(latency, turns, "drift", ttft=20_000, mux_loop=mux_loop).records, 20_000, TPOT, 1
    )
    sglang = summarize(run(latency, turns, "sglang", ttft=20_000).records, 20_000, TPOT, 1)
    assert drift.tpot_p99_ms <= TPOT < sglang.tpot_p99_ms


def typical_slowdown(latency, decode, prefill):
    """``latency`` whose typical co-run slowdown is ``decode`` / ``prefill`` everywhere."""
    guard = latency.guard
    expected = {"decode": {1: {0: decode}}, "prefill": {1: {0: prefill}}}
    return dataclasses.replace(
        latency, guard=ContentionGuard(guard.ratios, guard.default, expected)
    )


@pytest.mark.parametrize("mux_loop", ["sync", "async"])
def test_the_simulator_charges_the_typical_co_run_slowdown_not_the_worst(latency, mux_loop):
    turns = bursty(bursts=2, size=4, short=30)

    def tbt_p50(model):
        result = run(model, turns, "drift", ttft=20_000, mux_loop=mux_loop)
        return summarize(result.records, 20_000, TPOT, 1).tbt_p50_ms

    # The planner plans with the same worst case in all three; only the charge differs.
    free = tbt_p50(typical_slowdown(latency, 1.0, 1.0))
    slow = tbt_p50(typical_slowdown(latency, 1.5, 1.0))
    assert slow > 1.2 * free
    assert typical_slowdown(latency, 1.5, 1.0).decode_ms(8, 8000, 66, worst_case=True) == (
        latency.decode_ms(8, 8000, 66, worst_case=True)
    )


def test_a_requests_gaps_come_from_the_steps_it_took_part_in():
    batch = DecodeBatch()
    req = Request("r", "s", 0, (("s:i0", 10),), ("s:o0", 5), 10, 5, 0.0, 100.0, None)
    batch.step(5.0)  # before it joins: not one of its gaps
    req.first_token_ms = 10.0
    batch.join(req)
    done = [r for end in (20.0, 30.0, 100.0, 110.0) for r in batch.step(end)]
    assert done == [req] and req.last_token_ms == 110.0
    assert batch.gaps_ms(req) == [10.0, 10.0, 70.0, 10.0]
    # One 70 ms stall in four gaps: the P99 sees it, the mean (25 ms) does not.
    assert req.tbt_p99_ms == pytest.approx(10.0 + 60.0 * 0.97)


def record(ttft_ms, first_ms, last_ms, tokens, tbt_p99_ms):
    return RequestRecord("r", 0.0, ttft_ms, last_ms, 10, 0, tokens, tokens - 1, "x", tbt_p99_ms)


def test_a_good_request_meets_ttft_and_its_p99_gap_not_just_its_mean():
    stalled = record(100.0, 100.0, 500.0, 11, tbt_p99_ms=300.0)  # mean TPOT 40 ms
    steady = record(100.0, 100.0, 500.0, 11, tbt_p99_ms=45.0)
    one_token = record(100.0, 100.0, 100.0, 1, tbt_p99_ms=None)
    s = summarize([stalled, steady, one_token], ttft_slo_ms=200, tpot_slo_ms=50, gpus=1)
    assert s.good_requests == 2 and s.slo_attainment == pytest.approx(2 / 3)
    assert s.tbt_attainment == pytest.approx(2 / 3)
    assert s.tpot_attainment == 1.0 and s.mean_tpot_slo_attainment == 1.0
    assert s.tbt_p99_ms > 250 and s.tpot_p99_ms == pytest.approx(40.0)


def test_prefill_first_stalls_streams_that_its_mean_tpot_hides(latency):
    turns = bursty()
    sglang = summarize(run(latency, turns, "sglang", ttft=20_000).records, 20_000, TPOT, 1)
    drift = summarize(run(latency, turns, "drift", ttft=20_000).records, 20_000, TPOT, 1)
    # A burst's prefill steps stall every running stream: the P99 gap sees it.
    assert sglang.tbt_p99_ms > 2 * sglang.tpot_p99_ms
    assert sglang.tbt_attainment < sglang.tpot_attainment
    assert drift.tbt_p99_ms < sglang.tbt_p99_ms
    assert drift.slo_attainment > sglang.slo_attainment


# ---------------------------------------------------------------- CLI


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "trace.jsonl"
    write_trace(path, chat(sessions=10, turns=3, prefix="sys", prefix_tokens=800, gap=0.5))
    return path


def args(trace, *extra):
    return [
        "--profile",
        str(PROFILE),
        "--trace",
        str(trace),
        "--ttft-slo-ms",
        "300",
        "--tpot-slo-ms",
        "30",
        *extra,
    ]


def test_same_inputs_give_identical_json(trace_file):
    parser = cli.build_parser()
    argv = args(trace_file, "--policy", "drift", "--rate", "3", "--seed", "5")
    first, second = (cli.run(parser.parse_args(argv)) for _ in range(2))
    assert json.dumps(first) == json.dumps(second)
    third = cli.run(parser.parse_args([*argv[:-1], "6"]))
    assert json.dumps(third) != json.dumps(first)


def test_find_goodput_brackets_the_bound(trace_file, capsys):
    argv = args(trace_file, "--policy", "sglang", "--find-goodput", "--attainment", "0.9")
    result = cli.run(cli.build_parser().parse_args(argv))
    rate, search = result["rate_sessions_per_s"], result["search"]
    assert result["goodput_found"] and result["slo_attainment"] >= 0.9
    assert result["goodput_rps"] > 0 and len(search) >= 8
    higher = [s for s in search if s["rate"] > rate]
    assert higher, "the search never tried a rate above the goodput"
    nearest = min(higher, key=lambda s: s["rate"])
    assert nearest["slo_attainment"] < 0.9 or nearest.get("stopped_early")
    assert all(s["slo_attainment"] < 0.9 or s.get("stopped_early") for s in higher)


def test_find_goodput_search_logic():
    def evaluate(rate):
        return {"slo_attainment": 1.0 if rate <= 3.3 else 0.5}

    best, search = find_goodput(evaluate, 0.9, 1.0, bisect_steps=8)
    assert best is not None and 3.2 < [s["rate"] for s in search][-1] <= 4
    passing = max(s["rate"] for s in search if s["slo_attainment"] >= 0.9)
    assert 3.29 < passing <= 3.3
    assert find_goodput(lambda r: {"slo_attainment": 0.0}, 0.9, 1.0)[0] is None


KEYS = (
    "policy",
    "gpus",
    "rate_sessions_per_s",
    "requests",
    "goodput_rps",
    "goodput_rps_per_gpu",
    "slo_attainment",
    "ttft_attainment",
    "tbt_attainment",
    "tpot_attainment",
    "mean_tpot_slo_attainment",
    "throughput_tok_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tbt_p50_ms",
    "tbt_p99_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "prefix_hit_rate",
    "sim_duration_s",
    "kv_capacity_tokens",
    "assumptions",
)


def test_cli_subprocess_rate_and_json(trace_file, tmp_path):
    out = tmp_path / "out.json"
    argv = args(trace_file, "--policy", "chunked", "--rate", "2", "--json", str(out))
    proc = subprocess.run(
        [sys.executable, "-m", "drift_sgl.sim", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result
    for key in KEYS:
        assert key in result
    assert result["rate_sessions_per_s"] == 2 and result["requests"] == 30
    assert result["assumptions"]["kv_capacity"]["source"] == "derived"
    assert math.isclose(result["goodput_rps_per_gpu"], result["goodput_rps"])


def test_cli_bad_trace_exits_2_in_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"session": "a", "turn": 0}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "drift_sgl.sim", *args(bad, "--policy", "drift")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "bad.jsonl:1" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policy", "drift", "--rate", "0"], "--rate must be > 0"),
        (["--policy", "drift", "--rate", "-2"], "--rate must be > 0"),
        (["--policy", "disagg", "--gpus", "1"], "disagg needs --gpus >= 2"),
        (["--policy", "drift", "--find-goodput", "--attainment", "0"], "--attainment"),
        (["--policy", "drift", "--find-goodput", "--attainment", "1.5"], "--attainment"),
        (["--policy", "nope"], "invalid choice"),
        (["--policy", "drift", "--rate", "1", "--find-goodput"], "not allowed"),
    ],
)
def test_cli_bad_input_exits_2(trace_file, capsys, extra, message):
    assert cli.main(args(trace_file, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("sim: error:")


def test_cli_missing_files_exit_2(trace_file, tmp_path, capsys):
    assert cli.main(args(tmp_path / "none.jsonl", "--policy", "drift")) == 2
    assert "cannot read trace" in capsys.readouterr().err
    argv = args(trace_file, "--policy", "drift")
    argv[1] = str(tmp_path / "none.json")
    assert cli.main(argv) == 2
    assert "cannot read profile" in capsys.readouterr().err


def test_derived_kv_capacity(latency):
    tokens, info = cli.derive_kv_capacity(latency)
    assert cli.kv_bytes_per_token(latency) == 2 * 32 * 8 * 128 * 2
    expected = (0.85 * 80 * 2**30 - 2 * 12 * 32 * 4096**2 * 1.15) / 131072
    assert tokens == int(expected) and info["source"] == "derived"


def test_derived_kv_capacity_uses_the_weight_bytes_a_profile_records(latency):
    # An estimate records its weights from config.json's shapes; 12 L h^2 misses
    # a wide MLP (Qwen2.5-32B: 23B for its 33B parameters).
    from drift_sgl.latency.roofline import ModelShape

    config = json.loads((REPO / "bench" / "models" / "qwen2.5-32b" / "config.json").read_text())
    weights = ModelShape.from_hf_config(config, "bfloat16").weight_bytes
    assert 32.5e9 < weights / 2 < 33.0e9
    recorded = dataclasses.replace(latency, info={**latency.info, "weight_bytes": weights})
    tokens, info = cli.derive_kv_capacity(recorded)
    assert tokens == int((0.85 * 80 * 2**30 - weights) // cli.kv_bytes_per_token(latency))
    assert info["weight_bytes"] == weights and "info.weight_bytes" in info["weight_bytes_from"]


def test_kv_bytes_per_token_use_the_head_size_a_profile_records(latency):
    # Qwen3-32B's shapes: 64 heads of 128, not hidden / heads = 80.
    from drift_sgl.latency.roofline import memory_info

    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_hidden_layers": 64,
        "hidden_size": 5120, "num_attention_heads": 64, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 25600, "vocab_size": 151936,
    }  # fmt: skip
    memory = memory_info(config, "bfloat16")
    assert memory["kv_bytes_per_token"] == 2 * 64 * 8 * 128 * 2
    recorded = dataclasses.replace(latency, info={**latency.info, **memory})
    assert cli.kv_bytes_per_token(recorded) == 2 * 64 * 8 * 128 * 2
    config_, notes = cli.make_config("drift", recorded, 1000.0, 50.0, kv_capacity_tokens=1000)
    assert config_.kv_bytes_per_token == 2 * 64 * 8 * 128 * 2
    assert "info.kv_bytes_per_token" in notes["kv_bytes_formula"]

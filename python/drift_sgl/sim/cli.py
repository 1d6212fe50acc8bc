"""``python -m drift_sgl.sim``: replay a trace against a serving policy on the latency model.

Every policy's step costs come from the one ``LatencyModel`` (the profile),
so the policies differ only in how they schedule: the goodput each reaches on
the same model, device and trace. Prints a one-line summary to stderr and the
JSON object to stdout (and to ``--json OUT``); bad input gives a one-line
error on stderr and exit status 2.

``--find-goodput`` searches the highest session rate whose SLO attainment
(requests whose TTFT and P99 gap between tokens meet the targets; see
``drift_sgl.sim.metrics``) is at least ``--attainment``:
doubling or halving from the trace's own session rate until the bound is
bracketed, then ``--bisect-steps`` bisections; deterministic. A run in the
search stops as soon as its attainment is certain to end below the bound
(its ``slo_attainment`` is then an upper bound, flagged ``stopped_early``).

Modelling assumptions (also returned under ``assumptions`` in the JSON):
  * time: each step lasts what the latency model predicts; no noise, no CPU
    overhead beyond the profile's; a phase running beside the other takes its
    solo time times the profile's typical co-run slowdown (the median of its
    co-runs; the worst case where it has none), alone its solo time;
  * KV: ``2 * layers * kv_heads * head_dim * dtype bytes`` per token; capacity
    ``(0.85 * GPU memory - weights) / that``, weights ~ 2 bytes * 12 L h^2 * 1.15
    (the profile has no vocabulary size), GPU memory by device name, else
    ``--kv-capacity-tokens``; admission reserves the uncached prompt plus all
    output tokens (no retraction);
  * prefix cache: a radix tree of whole segments with LRU eviction per
    instance (``drift_sgl.sim.cache``); prompts inserted at prefill
    completion, outputs at finish;
  * arrivals: turn 0 at the session's start, turn k ``delay_s`` after turn
    k-1's last token; with ``--rate``, Poisson session starts, the sessions
    cycled until the starts span ``--window-s`` (default: the trace's span) so
    that a higher rate is denser load, not a burst of the same sessions;
  * policies: see ``drift_sgl.sim.policies`` (drift, pdmux, sglang, chunked,
    disagg); several GPUs are independent replicas, sessions routed by
    ``crc32(session)`` (disagg: prefill and decode GPUs, KV moved between).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from drift_sgl.latency.model import LatencyModel, ProfileError
from drift_sgl.rate_search import find_goodput
from drift_sgl.sim.driver import simulate
from drift_sgl.sim.engine import MAX_PREFILL_TOKENS, SimConfig, SimError
from drift_sgl.sim.metrics import summarize
from drift_sgl.sim.policies import DEFAULT_CHUNK, POLICIES
from drift_sgl.sim.policies.disagg import TRANSFER_FIXED_MS
from drift_sgl.sim.policies.mux import drift_splits, pdmux_splits
from drift_sgl.sim.trace import (
    TraceError,
    Turn,
    at_session_rate,
    first_sessions,
    read_trace,
    sessions,
    trace_session_rate,
    trace_window_s,
)

#: GPU memory in GiB by a word of the device name; longer names first ('H200' before 'H20').
GPU_MEMORY_GIB = (
    ("H200", 141),
    ("H100", 80),
    ("H20", 96),
    ("B200", 180),
    ("A100", 80),
    ("L40S", 48),
    ("A10G", 24),
    ("L4", 24),
)
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8_e4m3fn": 1, "fp8": 1}
MEMORY_FRACTION = 0.85
PARAMS_FACTOR = 1.15  # embeddings, norms, LM head on top of 12 L h^2


class UsageError(Exception):
    """Bad input; the CLI prints it as one line and exits 2."""


# ------------------------------------------------------------ model figures


def kv_bytes_per_token(latency: LatencyModel) -> int:
    """2 (K and V) * layers * KV heads * head dim * dtype bytes: the profile's own
    where it records them (config.json's head size), else with hidden / heads as
    the head size (the profile's identity has none; wrong where config.json sets
    ``head_dim`` apart, as Qwen3 and Gemma do)."""
    recorded = latency.info.get("kv_bytes_per_token")
    if recorded:
        return int(recorded)
    m = latency.model
    return 2 * m.num_layers * m.num_kv_heads * (m.hidden_size // m.num_heads) * _dtype(m.dtype)


def _dtype(name: str) -> int:
    if name not in DTYPE_BYTES:
        raise UsageError(f"unknown dtype {name!r} in the profile's model")
    return DTYPE_BYTES[name]


def derive_kv_capacity(latency: LatencyModel) -> tuple[int, dict[str, Any]]:
    """KV tokens a GPU holds: (0.85 * memory - weight bytes) / KV bytes per token.

    The weight bytes are the profile's own where it records them (``profile
    estimate`` does, from config.json's shapes); otherwise 12 L h^2 * 1.15
    parameters, which misses a wide MLP or a large vocabulary (Qwen2.5-32B:
    23.2B for 32.8B; CodeLlama-34B: 44.5B for 33.7B; Llama-3.1-8B: 7.4B for 8.0B).
    """
    name = latency.device.name.upper()
    gib = next((g for tag, g in GPU_MEMORY_GIB if tag in name), None)
    if gib == 80 and "A100" in name and "40GB" in name:
        gib = 40
    if gib is None:
        raise UsageError(
            f"no GPU memory size known for device {latency.device.name!r}; "
            "give --kv-capacity-tokens"
        )
    m = latency.model
    recorded = latency.info.get("weight_bytes")
    if recorded:
        weights = int(recorded)
        weights_from = "the profile's info.weight_bytes (config.json's shapes)"
    else:
        weights = 12 * m.num_layers * m.hidden_size**2 * PARAMS_FACTOR * _dtype(m.dtype)
        weights_from = f"12 * layers * hidden^2 * {PARAMS_FACTOR} params (the profile has no sizes)"
    memory = gib * 2**30
    tokens = int((MEMORY_FRACTION * memory - weights) // kv_bytes_per_token(latency))
    if tokens < 1:
        raise UsageError("the model's weights do not fit the GPU; give --kv-capacity-tokens")
    return tokens, {
        "source": "derived",
        "formula": "(0.85 * gpu_memory - weight_bytes) / kv_bytes_per_token",
        "gpu_memory_bytes": memory,
        "gpu_memory_note": f"{gib} GiB for a device named like {latency.device.name!r}",
        "weight_bytes": int(weights),
        "weight_bytes_from": weights_from,
    }


def assumptions(config: SimConfig, latency: LatencyModel, capacity: dict[str, Any]) -> dict:
    """The modelling choices behind the figures, as data (the module docstrings argue them)."""
    total = latency.device.total_sm
    out: dict[str, Any] = {
        "profile": {
            "source": latency.source,
            "estimated": latency.estimated,
            "device": latency.device.name,
            "total_sm": total,
            "model": latency.model.to_json(),
        },
        "time": "every step's duration is the latency model's prediction (ms); no noise, "
        "no CPU scheduling overhead beyond what the profile's times include",
        "kv_bytes_per_token": config.kv_bytes_per_token,
        "kv_bytes_formula": "the profile's info.kv_bytes_per_token (config.json's shapes)"
        if latency.info.get("kv_bytes_per_token")
        else "2 * layers * kv_heads * (hidden / heads) * dtype_bytes",
        "kv_capacity": capacity,
        "kv_admission": "a request reserves KV for its uncached prompt and all its output "
        "tokens at admission (no retraction); FCFS policies stop at the first request that "
        "does not fit",
        "prefix_cache": "one radix tree per instance over whole segments (shared prefix, each "
        "turn's input, each turn's output); a match returns whole cached segments; the prompt "
        "is inserted when its prefill completes, the output when the request finishes; "
        "unlocked leaves are evicted least recently used first",
        "tokens": "the first token comes with the prefill's completion, then one per decode "
        "step; a request leaves the batch after output_tokens tokens",
        "arrivals": "turn 0 at the session's start, turn k delay_s after turn k-1's last token; "
        "a request arriving during a step waits for the next step",
        "load": "--rate: Poisson session starts (trace.with_session_rate, --seed); sessions "
        "are cycled (renamed copies, shared prefixes kept) until the starts span --window-s "
        "(default: the trace's own start span)",
        "contention": "a phase running beside the other takes its solo time times the "
        "profile's typical co-run slowdown (LatencyModel.co_run_slowdown: the median of its "
        "co-runs, the worst case where it has none); alone, its solo time",
        "max_prefill_tokens": config.max_prefill_tokens,
        "routing": "session -> instance by crc32(session) % instances (sticky)",
        "slo": "TTFT = first token - arrival; TBT = P99 of the request's gaps between "
        "tokens (each decode step it took part in; the first from its first token), met by "
        "one-token requests; a request is good when TTFT <= --ttft-slo-ms and TBT <= "
        "--tpot-slo-ms; mean_tpot_slo_attainment is the older figure with the mean TPOT "
        "(last - first token) / (output - 1) in place of TBT",
    }
    policy = config.policy
    if policy in ("drift", "pdmux"):
        if policy == "drift":
            splits = drift_splits(latency.device)
        else:
            splits = pdmux_splits(total, latency.device.name)
        out["splits"] = ", ".join(f"{s.prefill_units}:{s.decode_units}" for s in splits)
        if config.async_prefill:
            out["step_time"] = (
                "async: a step lasts the decode step at its SMs (worst case while the prefill "
                "stream is busy); layer blocks queue on the prefill stream, each at its launch "
                "split's prefill SMs (worst case if decode runs); a gang completes at the first "
                "step boundary after its last block"
            )
        else:
            out["step_time"] = (
                "sync: max(decode step at its SMs, layers/L * gang prefill at its SMs)"
            )
        out["gang"] = (
            "whole prompts, no chunking; a gang's prefill time is prefill_ms of all its new "
            "and prefix tokens and sequences, a block of layers a layers/L share of it"
        )
    if policy == "drift":
        out["planner"] = (
            "SloPlanner(latency, overload='serve'), unchanged, on a MuxState built each step: "
            "TPOT target = --tpot-slo-ms while decoding, deadline = arrival + --ttft-slo-ms, "
            "group = crc32 of the prompt's first segment, kv_free = free + evictable; the "
            "step around it is the server's (drift_sgl.mux.mux_step)"
        )
    if policy == "pdmux":
        out["pdmux"] = {
            "rule": "LayerBudgetRule (split by decode batch size, layers = budget // new tokens)",
            "layer_budget_tokens": config.pdmux_layer_budget_tokens,
            "decode_bs_divisor": config.pdmux_decode_bs_divisor,
            "divisor_source": "upstream PDMuxConfig default (36)",
            "split_table": "upstream divide_sm, sm_group_num 8 (prefill >= decode >= 16)",
            "admission": "FCFS when no gang is in flight, up to max_prefill_tokens, no SLOs",
        }
    if policy in ("sglang", "chunked", "disagg"):
        out["chunk_size"] = config.chunk_size
    if policy == "sglang":
        out["step_time"] = "prefill batch (all SMs) whenever one is ready, else a decode step"
    if policy == "chunked":
        out["step_time"] = (
            "prefill_ms(chunk + b, prefix, all SMs, seqs) + decode_ms(b, kv) - decode_ms(b, 0)"
        )
    if policy == "disagg":
        out["disagg"] = {
            "prefill_gpus": config.prefill_gpus,
            "decode_gpus": config.gpus - config.prefill_gpus,
            "kv_link_gbps": config.kv_link_gbps,
            "transfer_ms": f"{TRANSFER_FIXED_MS} + prompt_tokens * kv_bytes_per_token / link, "
            "one transfer at a time per decode GPU, after it reserved prompt + output KV",
            "decode_cache": "none: outputs never reach a prefill instance's radix cache",
            "routing": "prefill: crc32(session) % P; decode: crc32('decode:' + session) % D",
        }
    return out


# ------------------------------------------------------------------ runs


def run_at(
    turns: Sequence[Turn],
    config: SimConfig,
    latency: LatencyModel,
    rate: float | None,
    seed: int,
    window_s: float = 0.0,
    stop_below: float | None = None,
) -> dict[str, Any]:
    """Simulate ``turns``: sessions at ``rate`` per second, or the trace's own timing.

    With a rate, the workload is ``trace.at_session_rate`` (sessions cycled
    until their arrivals span about ``window_s`` seconds). With
    ``stop_below``, a run whose attainment must end below it stops early and
    reports only ``slo_attainment`` (an upper bound) and ``stopped_early``.
    """
    if rate is not None:
        turns = at_session_rate(turns, rate, seed, window_s)
    count = len(sessions(turns))
    run = simulate(turns, config, latency, stop_below)
    if run.stopped_early:
        return {
            "rate_sessions_per_s": rate,
            "sessions": count,
            "requests": run.total_requests,
            "slo_attainment": 1 - run.known_failures / run.total_requests,
            "stopped_early": True,
        }
    summary = summarize(run.records, config.ttft_slo_ms, config.tpot_slo_ms, config.gpus)
    return {
        "rate_sessions_per_s": rate,
        "sessions": count,
        **summary.to_json(),
        "tokens_generated": run.tokens_generated,
        "prefill_tokens": run.prefill_tokens,
        "max_kv_used_tokens": max(run.max_kv_used),
        "evicted_tokens": run.evicted_tokens,
    }


# ------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m drift_sgl.sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, choices=POLICIES)
    p.add_argument("--profile", required=True, help="latency profile JSON")
    p.add_argument("--trace", required=True, help="trace JSONL (drift_sgl.sim.trace)")
    p.add_argument("--ttft-slo-ms", type=float, required=True)
    p.add_argument("--tpot-slo-ms", type=float, required=True)
    load = p.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="Poisson session arrivals per second")
    load.add_argument("--find-goodput", action="store_true")
    p.add_argument("--attainment", type=float, default=0.9, help="bound for --find-goodput")
    p.add_argument("--start-rate", type=float, help="first rate --find-goodput tries")
    p.add_argument("--bisect-steps", type=int, default=8)
    p.add_argument("--kv-capacity-tokens", type=int, help="default: derived from GPU memory")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--prefill-gpus", type=int, help="disagg: prefill GPUs (default gpus // 2)")
    p.add_argument("--chunk-size", type=int, help="default 8192 (chunked: 2048)")
    p.add_argument("--kv-link-gbps", type=float, default=400.0, help="disagg KV link, Gbit/s")
    p.add_argument(
        "--mux-loop",
        choices=("sync", "async"),
        default="sync",
        help="drift/pdmux: a step lasts max(decode, prefill block) (sync), or the loop "
        "waits for decode only while prefill blocks queue on their stream (async)",
    )
    p.add_argument("--sessions", type=int, help="use only the first N sessions")
    p.add_argument(
        "--window-s",
        type=float,
        help="with a rate: cycle the sessions until their arrivals span this long "
        "(default: the trace's own arrival span; 0: each session once)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the JSON object here")
    return p


def _check(args: argparse.Namespace) -> None:
    positive = {
        "--ttft-slo-ms": args.ttft_slo_ms,
        "--tpot-slo-ms": args.tpot_slo_ms,
        "--rate": args.rate,
        "--start-rate": args.start_rate,
        "--kv-capacity-tokens": args.kv_capacity_tokens,
        "--gpus": args.gpus,
        "--prefill-gpus": args.prefill_gpus,
        "--chunk-size": args.chunk_size,
        "--kv-link-gbps": args.kv_link_gbps,
        "--sessions": args.sessions,
    }
    for flag, value in positive.items():
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be > 0, got {value}")
    if not 0 < args.attainment <= 1:
        raise UsageError(f"--attainment must be in (0, 1], got {args.attainment}")
    if args.policy == "disagg" and args.gpus < 2:
        raise UsageError(f"disagg needs --gpus >= 2 (one prefill and one decode), got {args.gpus}")
    if args.policy == "disagg" and (args.prefill_gpus or args.gpus // 2) >= args.gpus:
        raise UsageError("--prefill-gpus must leave at least one decode GPU")
    if args.window_s is not None and args.window_s < 0:
        raise UsageError(f"--window-s must be >= 0, got {args.window_s}")
    if args.bisect_steps < 0:
        raise UsageError("--bisect-steps must be >= 0")


def make_config(
    policy: str,
    latency: LatencyModel,
    ttft_slo_ms: float,
    tpot_slo_ms: float,
    kv_capacity_tokens: int | None = None,
    gpus: int = 1,
    prefill_gpus: int | None = None,
    chunk_size: int | None = None,
    kv_link_gbps: float = 400.0,
    mux_loop: str = "sync",
) -> tuple[SimConfig, dict[str, Any]]:
    """A run's config and its assumptions (the KV capacity derived unless given)."""
    if kv_capacity_tokens is None:
        capacity, capacity_info = derive_kv_capacity(latency)
    else:
        capacity, capacity_info = kv_capacity_tokens, {"source": "--kv-capacity-tokens"}
    config = SimConfig(
        policy=policy,
        ttft_slo_ms=ttft_slo_ms,
        tpot_slo_ms=tpot_slo_ms,
        kv_capacity_tokens=capacity,
        kv_bytes_per_token=kv_bytes_per_token(latency),
        gpus=gpus,
        prefill_gpus=(prefill_gpus or gpus // 2) if policy == "disagg" else 0,
        chunk_size=chunk_size or DEFAULT_CHUNK[policy],
        kv_link_gbps=kv_link_gbps,
        max_prefill_tokens=MAX_PREFILL_TOKENS,
        async_prefill=mux_loop == "async",
    )
    return config, assumptions(config, latency, capacity_info)


def _load(args: argparse.Namespace) -> tuple[LatencyModel, list[Turn]]:
    try:
        latency = LatencyModel.load(args.profile)
    except ProfileError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"cannot read profile {args.profile}: {err.strerror or err}") from None
    try:
        turns = read_trace(args.trace)
    except TraceError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"cannot read trace {args.trace}: {err.strerror or err}") from None
    if args.sessions:
        turns = first_sessions(turns, args.sessions)
    return latency, turns


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON object for parsed arguments; raises UsageError or SimError."""
    _check(args)
    latency, turns = _load(args)
    config, notes = make_config(
        args.policy,
        latency,
        args.ttft_slo_ms,
        args.tpot_slo_ms,
        args.kv_capacity_tokens,
        args.gpus,
        args.prefill_gpus,
        args.chunk_size,
        args.kv_link_gbps,
        args.mux_loop,
    )
    head = {"policy": config.policy, "gpus": config.gpus}

    window = trace_window_s(turns) if args.window_s is None else args.window_s

    def evaluate(rate: float | None, stop_below: float | None = None) -> dict[str, Any]:
        return run_at(turns, config, latency, rate, args.seed, window, stop_below)

    if not args.find_goodput:
        result = {**head, **evaluate(args.rate)}
    else:

        def progress(rate: float, row: dict[str, Any]) -> None:
            print(
                f"sim: {config.policy}: rate {rate:.4g} sessions/s -> SLO attainment "
                f"{row['slo_attainment']:.3f}"
                + (" (stopped early: upper bound)" if row.get("stopped_early") else ""),
                file=sys.stderr,
                flush=True,
            )

        start = args.start_rate or trace_session_rate(turns)
        best, search = find_goodput(
            lambda rate: evaluate(rate, args.attainment),
            args.attainment,
            start,
            args.bisect_steps,
            progress=progress,
        )
        if best is None:  # report the lowest rate tried, flagged
            best = evaluate(min(s["rate"] for s in search))
        result = {**head, **best, "goodput_found": best["slo_attainment"] >= args.attainment}
        result.update(
            attainment_bound=args.attainment,
            search_method="x2 bracketing from the trace's session rate, then "
            f"{args.bisect_steps} bisections; runs stop once below the bound",
            search=search,
        )
    result.update(
        kv_capacity_tokens=config.kv_capacity_tokens,
        ttft_slo_ms=config.ttft_slo_ms,
        tpot_slo_ms=config.tpot_slo_ms,
        seed=args.seed,
        arrival_window_s=window,
        assumptions=notes,
    )
    return result


def summary_line(result: dict[str, Any]) -> str:
    rate = result["rate_sessions_per_s"]
    return (
        f"sim: {result['policy']} x{result['gpus']} GPU"
        f" @ {'trace timing' if rate is None else f'{rate:.4g} sessions/s'}:"
        f" {result['requests']} requests, goodput {result['goodput_rps']:.3f} req/s"
        f" ({result['goodput_rps_per_gpu']:.3f}/GPU), SLO attainment"
        f" {result['slo_attainment']:.1%}, TTFT p99 {result['ttft_p99_ms']:.0f} ms,"
        f" TBT p99 {result['tbt_p99_ms']:.1f} ms, prefix hits {result['prefix_hit_rate']:.1%}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        result = run(args)
    except (UsageError, SimError) as err:
        print(f"sim: error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if args.json:
        try:
            args.json.write_text(text + "\n", encoding="utf-8")
        except OSError as err:
            print(f"sim: error: cannot write {args.json}: {err.strerror or err}", file=sys.stderr)
            return 2
    print(summary_line(result), file=sys.stderr)
    print(text)
    return 0

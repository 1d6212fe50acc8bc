"""Simulated goodput of drift and the baselines on the shipped multi-turn traces.

For each trace (bench/traces/conversation.jsonl, agent.jsonl) and each policy
(drift, pdmux, sglang, chunked; disagg on 2 GPUs, reported per GPU) this runs
``python -m drift_sgl.sim --find-goodput`` in-process on one latency profile
(default: the H100 estimate for Llama-3.1-8B), plus a sweep of 8 rates around
the goodput for the plots, and prints one JSON document: every policy's
figures at its goodput rate, and drift's goodput per GPU over each baseline's
and over the best baseline's. Chunked prefill is searched at every chunk size
of ``--chunk-sizes`` (default 256 to 8192) and reported at its best one
(``chunk_size``; every size's goodput under ``chunk_sweep``), so drift is
compared with the fairest chunked configuration, not one picked in advance.
SLO attainment is the simulator's (``drift_sgl.sim.metrics``: TTFT and the
P99 gap between tokens). ``--plot DIR`` writes one PNG per trace: SLO
attainment vs session rate per GPU, goodput marked.

Usage:
    python bench/sim_goodput.py [--plot DIR] [--sessions N] [--jobs J]

(trace, policy) pairs run in parallel (``--jobs``, default: the CPU count);
each prints a progress line per simulation on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from drift_sgl.latency.model import LatencyModel
from drift_sgl.rate_search import find_goodput
from drift_sgl.sim import cli
from drift_sgl.sim.trace import first_sessions, read_trace, trace_session_rate, trace_window_s

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "bench" / "profiles" / "llama-3.1-8b-h100.estimate.json"
TRACES = {
    "conversation": REPO / "bench" / "traces" / "conversation.jsonl",
    "agent": REPO / "bench" / "traces" / "agent.jsonl",
}
POLICIES = ("drift", "pdmux", "sglang", "chunked", "disagg")
CHUNK_SIZES = (256, 512, 1024, 2048, 4096, 8192)
#: Sweep rates, as fractions of the policy's goodput rate (for the plots).
SWEEP = (0.25, 0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0)
#: Sweep runs stop once their attainment is certain to be below this (overload).
SWEEP_STOP_BELOW = 0.5
KEEP = (
    "rate_sessions_per_s",
    "sessions",
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
)


def one(task: dict[str, Any]) -> dict[str, Any]:
    """Goodput search and sweep of one (trace, policy) pair (runs in a worker process)."""
    started = time.monotonic()
    latency = LatencyModel.load(task["profile"])
    turns = read_trace(task["trace_path"])
    if task["sessions"]:
        turns = first_sessions(turns, task["sessions"])
    policy, gpus = task["policy"], 2 if task["policy"] == "disagg" else 1
    config, notes = cli.make_config(
        policy,
        latency,
        task["ttft"],
        task["tpot"],
        gpus=gpus,
        chunk_size=task.get("chunk_size"),
        mux_loop=task["mux_loop"],
        kv_capacity_tokens=task.get("kv_capacity_tokens"),
    )
    window = trace_window_s(turns)
    tag = f"{task['trace']}/{policy}"
    if task.get("chunk_size"):
        tag += f"-{task['chunk_size']}"

    def evaluate(rate: float, stop_below: float | None) -> dict[str, Any]:
        t0 = time.monotonic()
        row = cli.run_at(turns, config, latency, rate, task["seed"], window, stop_below)
        note = " (stopped early: upper bound)" if row.get("stopped_early") else ""
        print(
            f"[{tag}] rate {rate:.4g} sessions/s: SLO attainment "
            f"{row['slo_attainment']:.3f}{note} ({time.monotonic() - t0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        return row

    bound = task["attainment"]
    best, search = find_goodput(
        lambda rate: evaluate(rate, bound),
        bound,
        trace_session_rate(turns),
        task["bisect_steps"],
    )
    found = best is not None
    anchor = best["rate_sessions_per_s"] if found else min(s["rate"] for s in search)
    sweep = []
    for fraction in SWEEP if task.get("sweep", True) else ():
        row = evaluate(anchor * fraction, SWEEP_STOP_BELOW)
        point = {"rate": row["rate_sessions_per_s"], "slo_attainment": row["slo_attainment"]}
        if row.get("stopped_early"):
            point["stopped_early"] = True
        sweep.append(point)
    figures = {key: best[key] for key in KEEP} if found else {}
    if not found:
        figures = {"goodput_rps": 0.0, "goodput_rps_per_gpu": 0.0}
    return {
        "trace": task["trace"],
        "policy": policy,
        "chunk_size": config.chunk_size if policy == "chunked" else None,
        "gpus": gpus,
        "goodput_found": found,
        **figures,
        "search": search,
        "sweep": sweep,
        "assumptions": notes,
        "wall_s": round(time.monotonic() - started, 1),
    }


def best_chunk(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunked run with the highest goodput (the smaller chunk on a tie), with the sweep."""
    best = max(rows, key=lambda r: (r["goodput_rps_per_gpu"], -r["chunk_size"]))
    sweep = {str(r["chunk_size"]): r["goodput_rps_per_gpu"] for r in rows}
    return {**best, "chunk_sweep": sweep}


def label(policy: str, row: dict[str, Any]) -> str:
    """The policy's name, with its chunk size for chunked prefill."""
    return f"{policy} ({row['chunk_size']})" if row.get("chunk_size") else policy


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """drift's goodput per GPU over each baseline's and over the best baseline's."""
    drift = results["drift"]["goodput_rps_per_gpu"]
    baselines = {p: r["goodput_rps_per_gpu"] for p, r in results.items() if p != "drift"}
    best = max(baselines, key=lambda p: baselines[p])
    return {
        "drift_over": {p: (drift / g if g else None) for p, g in baselines.items()},
        "best_baseline": best,
        "drift_over_best_baseline": drift / baselines[best] if baselines[best] else None,
    }


def plot(trace: str, results: dict[str, dict[str, Any]], bound: float, out: Path) -> Path:
    """SLO attainment vs session rate per GPU, one line per policy, goodput marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for policy, row in results.items():
        points = sorted(
            {(p["rate"], p["slo_attainment"], bool(p.get("stopped_early"))) for p in row["search"]}
            | {(p["rate"], p["slo_attainment"], bool(p.get("stopped_early"))) for p in row["sweep"]}
        )
        gpus = row["gpus"]
        full = [(r / gpus, a) for r, a, stopped in points if not stopped]
        upper = [(r / gpus, a) for r, a, stopped in points if stopped]
        # Lines join exact points only; a stopped run only bounds its attainment.
        xs, ys = (list(v) for v in zip(*full, strict=True)) if full else ([], [])
        (line,) = ax.plot(xs, ys, "o-", ms=3.5, lw=1.2, label=label(policy, row))
        if upper:
            ax.plot(*zip(*upper, strict=True), "v", ms=5, mfc="none", color=line.get_color())
        if row["goodput_found"]:
            ax.axvline(row["rate_sessions_per_s"] / gpus, ls=":", lw=1, color=line.get_color())
    ax.axhline(bound, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("session arrival rate per GPU (sessions/s)")
    ax.set_ylabel("SLO attainment (TTFT and P99 gap met)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{trace}: attainment vs load (dotted: goodput rate; ▽: upper bound)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sim_goodput_{trace}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", type=Path, default=PROFILE)
    p.add_argument("--conversation-ttft-ms", type=float, default=1000.0)
    p.add_argument("--conversation-tpot-ms", type=float, default=50.0)
    p.add_argument("--agent-ttft-ms", type=float, default=2000.0)
    p.add_argument("--agent-tpot-ms", type=float, default=50.0)
    p.add_argument("--attainment", type=float, default=0.9)
    p.add_argument("--bisect-steps", type=int, default=8)
    p.add_argument("--sessions", type=int, help="use only each trace's first N sessions")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    p.add_argument("--traces", nargs="+", choices=tuple(TRACES), default=list(TRACES))
    p.add_argument("--mux-loop", choices=("sync", "async"), default="sync")
    p.add_argument(
        "--chunk-sizes",
        type=int,
        nargs="+",
        default=list(CHUNK_SIZES),
        help="chunked prefill is searched at each, reported at the best (default 256..8192)",
    )
    p.add_argument(
        "--kv-capacity-tokens",
        type=int,
        help="KV pool per GPU in tokens (default: derived from the GPU's memory and the "
        "model's weights, as python -m drift_sgl.sim does)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--plot", type=Path, metavar="DIR", help="write PNGs here")
    args = p.parse_args(argv)
    if "drift" not in args.policies or len(args.policies) < 2:
        p.error("--policies needs drift and at least one baseline")
    if args.kv_capacity_tokens is not None and args.kv_capacity_tokens < 1:
        p.error(f"--kv-capacity-tokens must be >= 1, got {args.kv_capacity_tokens}")
    latency = LatencyModel.load(args.profile)
    capacity = args.kv_capacity_tokens
    if capacity is None:
        # Here, so that a GPU of unknown memory size is one line, not a worker's traceback.
        try:
            capacity = cli.derive_kv_capacity(latency)[0]
        except cli.UsageError as err:
            p.error(str(err))

    slo = {
        "conversation": (args.conversation_ttft_ms, args.conversation_tpot_ms),
        "agent": (args.agent_ttft_ms, args.agent_tpot_ms),
    }
    tasks = [
        {
            "trace": trace,
            "trace_path": str(TRACES[trace]),
            "policy": policy,
            "profile": str(args.profile),
            "ttft": slo[trace][0],
            "tpot": slo[trace][1],
            "sessions": args.sessions,
            "attainment": args.attainment,
            "bisect_steps": args.bisect_steps,
            "mux_loop": args.mux_loop,
            "seed": args.seed,
            "chunk_size": chunk,
            "kv_capacity_tokens": args.kv_capacity_tokens,
        }
        for trace in args.traces
        for policy in args.policies
        for chunk in (args.chunk_sizes if policy == "chunked" else [None])
    ]
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = list(pool.map(one, tasks))
    report: dict[str, Any] = {
        "profile": str(args.profile),
        "profile_description": latency.describe(),
        "attainment_bound": args.attainment,
        "mux_loop": args.mux_loop,
        "seed": args.seed,
        "kv_capacity_tokens_per_gpu": capacity,
        "kv_capacity_from": "--kv-capacity-tokens" if args.kv_capacity_tokens else "derived",
        "traces": {},
    }
    for trace in args.traces:
        rows = [r for r in done if r["trace"] == trace]
        results = {r["policy"]: r for r in rows if r["policy"] != "chunked"}
        chunked = [r for r in rows if r["policy"] == "chunked"]
        if chunked:
            results["chunked"] = best_chunk(chunked)
        report["traces"][trace] = {
            "ttft_slo_ms": slo[trace][0],
            "tpot_slo_ms": slo[trace][1],
            "sessions": args.sessions or "all",
            **ratios(results),
            "results": results,
        }
        if args.plot:
            path = plot(trace, results, args.attainment, args.plot)
            print(f"sim_goodput: wrote {path}", file=sys.stderr)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=1))
    for trace, row in report["traces"].items():
        table = ", ".join(
            f"{label(p, r)} {r['goodput_rps_per_gpu']:.2f}" for p, r in row["results"].items()
        )
        print(
            f"sim_goodput: {trace}: goodput req/s per GPU: {table}; drift / best baseline "
            f"({row['best_baseline']}) = {row['drift_over_best_baseline'] or 0:.2f}",
            file=sys.stderr,
        )
    print(f"sim_goodput: {report['elapsed_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

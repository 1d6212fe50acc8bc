"""How drift's simulated advantage over chunked prefill depends on the unmeasured physics.

For each constant of ``Physics`` (``drift_sgl.latency.roofline``) at the ends
of its plausible range (docs/latency-model.md, "Where each constant comes
from"), and for the central values, this builds the roofline estimate of the
model on the GPU with that physics, searches the goodput of drift and of
chunked prefill at every size of ``--chunk-sizes`` on the shipped traces
(bench/sim_goodput.py's search, without its plotting sweep), and prints one
JSON document: per variant and trace, the highest session rate per GPU that
keeps ``--attainment`` of requests within TTFT and P99-gap targets, for drift
and for the best chunk size, and drift's ratio. ``--markdown`` also prints the
table docs/dispatcher.md shows.

Usage:
    python bench/sim_sensitivity.py [--jobs J] [--attainment 0.99] [--markdown]

About 7 s per goodput search on this machine's cores: the default grid (11
variants x 2 traces x 5 policies/sizes) is ~13 min with 2 jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import sim_goodput
from drift_sgl.latency.identity import DeviceIdentity, ModelIdentity, read_hf_config
from drift_sgl.latency.roofline import CENTRAL_PHYSICS, GPU_SPECS, estimate_profile

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "bench" / "models" / "llama-3.1-8b"
#: Each unmeasured constant at the low and high end of its plausible range.
RANGES = {
    "compute_efficiency": (0.55, 0.80),
    "overlap_loss": (0.0, 0.5),
    "bandwidth_half_share": (0.05, 0.3),
    "bandwidth_efficiency": (0.69, 0.92),
    "co_run_extra": (1.15, 1.3),
    # 0.24-1.9 ms per forward of an 8B model: the top is a vLLM H200 run's
    # implied step overhead, an upper bound (docs/latency-model.md).
    "fixed_cost_scale": (0.5, 4.0),
}
CHUNK_SIZES = (256, 512, 1024, 2048)


def variants(names: list[str]) -> list[tuple[str, dict[str, float]]]:
    """("central", {}) first, then (``name=value``, override) for both ends of each range."""
    rows: list[tuple[str, dict[str, float]]] = [("central", {})]
    for name in names:
        rows += [(f"{name}={value:g}", {name: value}) for value in RANGES[name]]
    return rows


def write_profiles(
    gpu: str, dtype: str, rows: list[tuple[str, dict[str, float]]], out: Path
) -> dict[str, str]:
    """One estimate per variant, written under ``out``; {variant: path}."""
    config = read_hf_config(MODEL)
    model = ModelIdentity.from_hf_config(config, dtype)
    spec = GPU_SPECS[gpu]
    device = DeviceIdentity("cuda", spec.name, spec.sms)
    paths = {}
    for i, (name, overrides) in enumerate(rows):
        physics = CENTRAL_PHYSICS.with_overrides(overrides)
        profile = estimate_profile(config, model, spec, device, f"estimate:{gpu}", physics=physics)
        paths[name] = str(out / f"variant{i}.json")
        profile.save(paths[name])
        print(f"sim_sensitivity: profile {i + 1}/{len(rows)} ({name})", file=sys.stderr)
    return paths


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """drift's and the best chunk size's session rate per GPU, and their ratio."""
    drift = next(r for r in rows if r["policy"] == "drift")
    chunked = sim_goodput.best_chunk(
        [{**r, "goodput_rps_per_gpu": _rate(r)} for r in rows if r["policy"] == "chunked"]
    )
    others = {r["policy"]: _rate(r) for r in rows if r["policy"] not in ("drift", "chunked")}
    best = max(_rate(chunked), *others.values()) if others else _rate(chunked)
    return {
        "drift_rate": _rate(drift),
        "chunked_rate": _rate(chunked),
        "chunk_size": chunked["chunk_size"],
        "chunk_sweep": chunked["chunk_sweep"],
        **{f"{policy}_rate": rate for policy, rate in others.items()},
        "drift_over_chunked": _ratio(_rate(drift), _rate(chunked)),
        "drift_over_best_baseline": _ratio(_rate(drift), best),
    }


def _rate(row: dict[str, Any]) -> float:
    """Highest session rate per GPU meeting the bound (0 where none did)."""
    return row.get("rate_sessions_per_s", 0.0) / row["gpus"] if row["goodput_found"] else 0.0


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def markdown(report: dict[str, Any]) -> str:
    traces = list(report["traces"])
    head = "| physics | " + " | ".join(f"{t}: drift / best chunked (size), ratio" for t in traces)
    lines = [head + " |", "|---|" + "---|" * len(traces)]
    for variant, by_trace in report["variants"].items():
        cells = [
            f"{r['drift_rate']:.2f} / {r['chunked_rate']:.2f} ({r['chunk_size']}), "
            f"**{r['drift_over_chunked']}**"
            for r in (by_trace[t] for t in traces)
        ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", choices=sorted(GPU_SPECS), default="h100")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--constants", nargs="+", choices=tuple(RANGES), default=list(RANGES))
    p.add_argument(
        "--traces", nargs="+", choices=tuple(sim_goodput.TRACES), default=["conversation", "agent"]
    )
    p.add_argument("--tbt-ms", type=float, default=50.0, help="TBT target, both traces")
    p.add_argument("--attainment", type=float, default=0.99)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=list(CHUNK_SIZES))
    p.add_argument("--baselines", nargs="*", choices=("sglang", "pdmux"), default=[])
    p.add_argument("--sessions", type=int, help="use only each trace's first N sessions")
    p.add_argument("--bisect-steps", type=int, default=8)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--markdown", action="store_true", help="also print the table (stderr)")
    args = p.parse_args(argv)

    started = time.monotonic()
    rows = variants(args.constants)
    ttft = {"conversation": 1000.0, "agent": 2000.0}
    with tempfile.TemporaryDirectory(prefix="drift-sensitivity-") as tmp:
        profiles = write_profiles(args.gpu, args.dtype, rows, Path(tmp))
        tasks = [
            {
                "variant": name,
                "trace": trace,
                "trace_path": str(sim_goodput.TRACES[trace]),
                "policy": policy,
                "profile": profiles[name],
                "ttft": ttft[trace],
                "tpot": args.tbt_ms,
                "sessions": args.sessions,
                "attainment": args.attainment,
                "bisect_steps": args.bisect_steps,
                "mux_loop": "sync",
                "seed": 0,
                "chunk_size": chunk,
                "sweep": False,
            }
            for name, _ in rows
            for trace in args.traces
            for policy in ("drift", "chunked", *args.baselines)
            for chunk in (args.chunk_sizes if policy == "chunked" else [None])
        ]
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            done = list(pool.map(sim_goodput.one, tasks))
    for task, row in zip(tasks, done, strict=True):
        row["variant"] = task["variant"]
    report: dict[str, Any] = {
        "gpu": args.gpu,
        "model": str(MODEL.relative_to(REPO)),
        "attainment_bound": args.attainment,
        "tbt_slo_ms": args.tbt_ms,
        "ttft_slo_ms": {t: ttft[t] for t in args.traces},
        "central": dict(vars(CENTRAL_PHYSICS)),
        "ranges": {name: RANGES[name] for name in args.constants},
        "traces": {t: {"sessions": args.sessions or "all"} for t in args.traces},
        "variants": {
            name: {
                trace: summarise([r for r in done if r["variant"] == name and r["trace"] == trace])
                for trace in args.traces
            }
            for name, _ in rows
        },
    }
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=1))
    if args.markdown:
        print(markdown(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long one planner decision takes, with a large server's queue.

    python bench/planner_overhead.py [--profile P.json] [--running 256] [--waiting 1000]

Replays a sequence of steps like a busy server's: a decode batch of
``--running`` requests whose KV grows every step, ``--waiting`` requests with
TTFT deadlines, and a prefill gang advancing through its layers; every
``--gang-steps`` steps the gang completes and the next decision admits a new
one. Times ``SloPlanner.decide`` only (the state is built beforehand), and
prints JSON: the median and p99 over all decisions, and the same for the
admission steps alone. The goal: a median well under 100 µs on a CPU core.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from drift_sgl.latency import LatencyModel
from drift_sgl.partition.sm_layout import SmGranularity, planned_split_table
from drift_sgl.policy import MuxState, SloPlanner, WaitingRequest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROFILE = ROOT / "bench" / "profiles" / "llama-3.1-8b-h100.estimate.json"


def waiting_queue(count: int, now_ms: float, rng: random.Random) -> tuple[WaitingRequest, ...]:
    requests = []
    for i in range(count):
        new = rng.randint(50, 4000)
        requests.append(
            WaitingRequest(
                rid=f"w{i}",
                new_tokens=new,
                prefix_tokens=rng.choice((0, 0, 2000, 6000)),
                deadline_ms=now_ms + rng.uniform(-500.0, 5000.0),
                kv_tokens=new + 256,
                group=rng.randrange(8),
            )
        )
    return tuple(sorted(requests, key=lambda r: r.deadline_ms))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=str(DEFAULT_PROFILE))
    parser.add_argument("--running", type=int, default=256)
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--gang-steps", type=int, default=8)
    parser.add_argument("--tpot-slo-ms", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = LatencyModel.load(args.profile)
    planner = SloPlanner(model)
    rng = random.Random(args.seed)
    layers = model.model.num_layers
    step = max(1, model.sm_granularity)
    base = MuxState(
        decode_batch_size=args.running,
        prefill_new_tokens=0,
        prefill_layers_left=0,
        num_layers=layers,
        # The table the server builds (--drift-splits auto).
        splits=planned_split_table(model.device.total_sm, SmGranularity(step, step)),
        concurrent=True,
        decode_tpot_ms=args.tpot_slo_ms,
        kv_free_tokens=200_000,
    )
    # Build every state first: only the decision is timed.
    states = []
    kv = args.running * 1500
    for step in range(args.steps):
        kv += args.running
        now = step * 30.0
        phase = step % args.gang_steps
        gang = {}
        if phase:
            gang = dict(
                prefill_new_tokens=6000,
                prefill_prefix_tokens=2000,
                prefill_batch_size=3,
                prefill_layers_left=max(1, layers - phase * layers // args.gang_steps),
                prefill_deadline_ms=now + 1500.0,
            )
        if phase == 0:
            # A fresh queue per gang, its deadlines around now (a few already missed).
            gang["waiting"] = waiting_queue(args.waiting, now, rng)
        else:
            gang["waiting"] = states[-1][1].waiting
        states.append((phase == 0, replace(base, now_ms=now, decode_kv_tokens=kv, **gang)))

    all_us, admit_us = [], []
    previous = None
    started = time.perf_counter()
    for admits, state in states:
        state = replace(state, previous_split=previous)
        t0 = time.perf_counter_ns()
        decision = planner.decide(state)
        elapsed = (time.perf_counter_ns() - t0) / 1000
        previous = decision.split_index
        all_us.append(elapsed)
        if admits:
            admit_us.append(elapsed)
    wall = time.perf_counter() - started

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "n": len(ordered),
            "median_us": round(statistics.median(ordered), 2),
            "p99_us": round(ordered[int(0.99 * (len(ordered) - 1))], 2),
            "max_us": round(ordered[-1], 2),
        }

    result = {
        "benchmark": "planner_overhead",
        "profile": Path(args.profile).name,
        "running": args.running,
        "waiting": args.waiting,
        "steps": args.steps,
        "all_decisions": summary(all_us),
        "admission_decisions": summary(admit_us),
        "goal_median_us": 100,
        "meets_goal": statistics.median(all_us) < 100,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "wall_s": round(wall, 2),
    }
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

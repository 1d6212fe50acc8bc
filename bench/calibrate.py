"""How well the simulator predicts a real server: one workload, simulated and measured.

    python bench/calibrate.py --profile PROFILE --trace TRACE --rate R \\
        --ttft-slo-ms T --tpot-slo-ms P --kv-capacity-tokens N \\
        (--url URL | --model-path DIR [--server-args "..."]) [--json OUT]

Builds one workload (the trace's sessions at ``--rate`` sessions/s, seeded,
arrivals spread over ``--window-s``: ``trace.at_session_rate``), runs it in
``python -m drift_sgl.sim`` on the latency profile, and replays the same
workload against a drift server: one at ``--url`` (started with the same
``--drift-profile`` and SLO flags: the script cannot check), or one it
starts itself from ``--model-path`` with exactly those flags. Reports each
figure predicted and measured, and the relative error (predicted - measured)
/ measured, for goodput, SLO attainment, throughput, TTFT and TPOT
percentiles and the prefix hit rate. The profile must come from the machine
the server runs on (``python -m drift_sgl.profile run``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from drift_sgl.latency.model import LatencyModel
from drift_sgl.loadgen.replay import Limits
from drift_sgl.loadgen.runner import Replayer, Target
from drift_sgl.sim import cli as sim_cli
from drift_sgl.sim.trace import first_sessions, read_trace, trace_window_s
from drift_sgl.tools.server_process import ServerProcess, free_port, python_module_command

COMPARED = (
    "goodput_rps",
    "slo_attainment",
    "throughput_tok_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tbt_p50_ms",
    "tbt_p99_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "prefix_hit_rate",
)


def relative_errors(predicted: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Per figure: predicted, measured, (predicted - measured) / measured (None if undefined)."""
    out = {}
    for key in COMPARED:
        p, m = predicted.get(key), measured.get(key)
        error = None if p is None or m is None or m == 0 else round((p - m) / m, 4)
        out[key] = {"predicted": p, "measured": m, "relative_error": error}
    return out


def drift_command(args: argparse.Namespace, port: int, kv_tokens: int) -> list[str]:
    """The drift server that matches the simulation: same profile, SLOs and KV capacity."""
    return python_module_command(
        "drift_sgl.launch_server",
        "--model-path", str(args.model_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--drift-profile", str(args.profile),
        "--drift-ttft-slo-ms", str(args.ttft_slo_ms),
        "--drift-tpot-slo-ms", str(args.tpot_slo_ms),
        "--max-total-tokens", str(kv_tokens),
        "--enable-cache-report",
        *shlex.split(args.server_args),
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/calibrate.py", description=__doc__.split("\n")[0])
    p.add_argument("--profile", type=Path, required=True, help="latency profile of the server")
    p.add_argument("--trace", type=Path, required=True)
    p.add_argument("--rate", type=float, required=True, help="sessions per second")
    p.add_argument("--ttft-slo-ms", type=float, required=True)
    p.add_argument("--tpot-slo-ms", type=float, required=True)
    p.add_argument("--kv-capacity-tokens", type=int, help="the server's KV pool in tokens "
                   "(default: derived from the profile's GPU memory)")  # fmt: skip
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running drift server with the same profile and SLOs")
    where.add_argument("--model-path", type=Path, help="start a drift server on this model")
    p.add_argument("--server-args", default="", help="more server flags (with --model-path)")
    p.add_argument("--sessions", type=int, help="use only the first N sessions")
    p.add_argument("--window-s", type=float, help="arrival span (default: the trace's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--log", type=Path, default=Path("calibrate-server.log"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error(f"--rate must be > 0, got {args.rate}")
    try:
        latency = LatencyModel.load(args.profile)
        turns = read_trace(args.trace)
        if args.sessions:
            turns = first_sessions(turns, args.sessions)
        config, notes = sim_cli.make_config(
            "drift", latency, args.ttft_slo_ms, args.tpot_slo_ms, args.kv_capacity_tokens
        )
    except (ValueError, OSError, sim_cli.UsageError) as err:
        print(f"calibrate: error: {err}", file=sys.stderr)
        return 2
    window = trace_window_s(turns) if args.window_s is None else args.window_s
    predicted = sim_cli.run_at(turns, config, latency, args.rate, args.seed, window)
    print(f"calibrate: simulated {predicted['requests']} requests", file=sys.stderr)

    server = None
    url = args.url
    try:
        if url is None:
            port = free_port()
            command = drift_command(args, port, config.kv_capacity_tokens)
            server = ServerProcess(command, port, args.log).start(600)
            url = server.url
        measured = Replayer(Target(url)).run(
            turns,
            args.ttft_slo_ms,
            args.tpot_slo_ms,
            Limits(),
            rate=args.rate,
            seed=args.seed,
            window_s=window,
            progress=not args.quiet,
        )
    finally:
        if server is not None:
            server.stop()
    report = {
        "profile": str(args.profile),
        "profile_estimated": latency.estimated,
        "trace": str(args.trace),
        "rate_sessions_per_s": args.rate,
        "window_s": window,
        "seed": args.seed,
        "ttft_slo_ms": args.ttft_slo_ms,
        "tpot_slo_ms": args.tpot_slo_ms,
        "kv_capacity_tokens": config.kv_capacity_tokens,
        "server": url if server is None else server.args,
        "figures": relative_errors(predicted, measured),
        "requests": {"predicted": predicted["requests"], "measured": measured["requests"]},
        "measured_failures": measured["failed_requests"],
        "simulator_assumptions": notes,
    }
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    for key, row in report["figures"].items():
        error = row["relative_error"]
        print(
            f"calibrate: {key}: predicted {row['predicted']}, measured {row['measured']}, "
            f"error {'n/a' if error is None else f'{error:+.1%}'}",
            file=sys.stderr,
        )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak a drift server: multi-turn clients, drops, aborts and hostile requests for N minutes.

    python bench/soak.py [--minutes 30] [--clients 24] [--model-path DIR] [--json OUT] [--plot PNG]
                         [--server-args "--max-total-tokens 16384"]

Starts a drift server on the tiny random Llama (or ``--model-path``), runs
drift_sgl.tools.soak against it, flushes the cache and checks the KV pool is
whole again, and stops the server. Memory is sampled as the RSS of the
server's whole process tree. Pass: no client error, every hostile request a
4xx, the KV pool drained, and RSS flat (the last quarter's median within
``--max-rss-growth`` of the second quarter's). Prints one JSON object (the
samples included); exit status 1 when it fails.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from drift_sgl.tools.server_process import (
    ServerStartError,
    drift_kv_pool_drained,
    start_local_server,
)
from drift_sgl.tools.soak import SoakConfig, SoakReport, run_soak


def plot(report: SoakReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in report.samples]
    fig, (rss, kv) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    rss_mb = [s["rss_mb"] for s in report.samples]
    rss.plot(t, rss_mb)
    rss.set_ylabel("server RSS (MiB)")
    rss.set_ylim(0, 1.15 * max((m for m in rss_mb if m is not None), default=1.0))
    kv.plot(t, [s["kv_used_tokens"] for s in report.samples], label="used")
    kv.plot(t, [s["kv_evictable_tokens"] for s in report.samples], label="of which cached")
    kv.set_ylabel("KV pool (tokens)")
    kv.set_xlabel("minutes")
    kv.legend()
    fig.suptitle("drift soak: multi-turn clients, drops, aborts, hostile requests")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--model-path", type=Path, help="default: the tiny random Llama")
    parser.add_argument("--max-rss-growth", type=float, default=1.10)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, help="also plot RSS and KV pool to this PNG")
    parser.add_argument(
        "--server-args",
        default="",
        help="more server arguments, e.g. '--max-total-tokens 16384' so the radix cache fills "
        "and evicts within the run",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    model, extra = args.model_path, ()
    if model is None:
        from drift_sgl.tools.tiny_model import write_tiny_model

        model = write_tiny_model(work / "tiny-llama")
        extra = ("--dtype", "float32")
    extra = (*extra, *shlex.split(args.server_args))
    config = SoakConfig(clients=args.clients, duration_s=args.minutes * 60)
    server = None
    try:
        server = start_local_server("drift_sgl.launch_server", model, work / "drift.log", extra)
        report = run_soak(server.url, config, server.proc.pid)
        drained = drift_kv_pool_drained(server)
        alive = server.alive()
    except ServerStartError as err:
        print(f"soak: {err}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    growth = report.rss_growth()
    passed = (
        not report.errors
        and drained
        and alive
        and growth is not None
        and growth <= args.max_rss_growth
    )
    result = {
        "minutes": args.minutes,
        "clients": args.clients,
        "model": str(model),
        "server_args": list(extra),
        "passed": passed,
        "kv_pool_drained": drained,
        "server_alive": alive,
        **report.as_dict(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    if args.plot is not None:
        plot(report, args.plot)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""Goodput of several server configurations on one multi-turn workload, side by side.

    python bench/goodput.py bench/configs/cpu-tiny.yaml [--out DIR] [--sessions N]

For each system in the YAML config: start its server (its own process group),
find the highest session rate whose SLO attainment meets the bound (x2
bracketing from ``start_rate``, then bisections: ``drift_sgl.rate_search``),
run once more at ``saturation_rate`` for its throughput, and stop it. Every
run replays the same trace with the same seed (``bench/multiturn.py``'s
replay), on a flushed prefix cache. Writes ``goodput.json`` and
``goodput.png`` (SLO attainment and P99 TTFT/TPOT against the rate, one
line per system) to ``--out`` and prints the JSON. The config format is in
bench/configs/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from drift_sgl.cpu.environment import server_process_env
from drift_sgl.loadgen.replay import Limits
from drift_sgl.loadgen.report import REPORT_KEYS
from drift_sgl.loadgen.runner import Replayer, Target
from drift_sgl.rate_search import find_goodput
from drift_sgl.sim.trace import Turn, first_sessions, read_trace
from drift_sgl.tools.server_process import ServerProcess, ServerStartError, free_port

REPO = Path(__file__).resolve().parents[1]

WORKLOAD_KEYS = {
    "trace": None,
    "ttft_slo_ms": None,
    "tpot_slo_ms": None,
    "attainment": 0.9,
    "sessions": None,
    "window_s": 30.0,
    "duration_s": None,
    "max_requests": None,
    "start_rate": 1.0,
    "bisect_steps": 3,
    "max_doublings": 6,
    "saturation_rate": None,
    "seed": 0,
    "client": "openai",
    "timeout_s": 300.0,
}
SYSTEM_KEYS = {"name", "command", "args", "env", "ready_path"}


class ConfigError(ValueError):
    """The YAML config is not usable; the message says where."""


def load_config(path: Path) -> dict[str, Any]:
    """Read and check a config (see bench/configs/README.md); paths resolve from the repo."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with workload, server and systems")
    unknown = set(raw) - {"workload", "server", "systems"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}")
    workload = dict(raw.get("workload") or {})
    bad = set(workload) - set(WORKLOAD_KEYS)
    if bad:
        raise ConfigError(f"{path}: unknown workload key(s) {sorted(bad)}")
    for key in ("trace", "ttft_slo_ms", "tpot_slo_ms"):
        if key not in workload:
            raise ConfigError(f"{path}: workload.{key} is required")
    for key, default in WORKLOAD_KEYS.items():
        workload.setdefault(key, default)
    server = dict(raw.get("server") or {})
    if "model_path" not in server:
        raise ConfigError(f"{path}: server.model_path is required")
    server.setdefault("args", [])
    server.setdefault("tiny_model", False)
    systems = raw.get("systems")
    if not isinstance(systems, list) or not systems:
        raise ConfigError(f"{path}: systems must be a non-empty list")
    names = set()
    for i, system in enumerate(systems):
        if not isinstance(system, dict) or not {"name", "command"} <= set(system):
            raise ConfigError(f"{path}: systems[{i}] needs a name and a command")
        if set(system) - SYSTEM_KEYS:
            raise ConfigError(f"{path}: systems[{i}]: unknown key(s) {set(system) - SYSTEM_KEYS}")
        if system["name"] in names:
            raise ConfigError(f"{path}: two systems are named {system['name']!r}")
        names.add(system["name"])
        system.setdefault("args", [])
        system.setdefault("env", {})
        system.setdefault("ready_path", "/health")
    return {"workload": workload, "server": server, "systems": systems}


def _words(value: Any) -> list[str]:
    """A command or argument list given as a YAML list or one shell-quoted string."""
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def resolve_model(server: dict[str, Any]) -> Path:
    """The model directory; with ``tiny_model: true`` it is built when missing."""
    path = REPO / os.path.expandvars(str(server["model_path"]))  # an absolute path stays
    if server["tiny_model"] and not (path / "config.json").exists():
        from drift_sgl.tools.tiny_model import write_tiny_model

        write_tiny_model(path)
    return path


def bench_system(
    system: dict[str, Any],
    config: dict[str, Any],
    model: Path,
    turns: list[Turn],
    logs: Path,
    running: list[ServerProcess],
) -> dict[str, Any]:
    """Start one system's server, search its goodput, measure its throughput, stop it.

    The server is in ``running`` while it may be alive.
    """
    w = config["workload"]
    port = free_port()
    command = [
        *_words(system["command"]),
        "--model-path", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        *_words(config["server"]["args"]),
        *_words(system["args"]),
    ]  # fmt: skip
    command = [sys.executable if word == "python" else word for word in command]
    api_key = os.environ.get("OPENAI_API_KEY")
    log = logs / "logs" / f"{system['name']}.log"
    server = ServerProcess(
        command,
        port,
        log,
        env=server_process_env(system["env"]),
        api_key=api_key,
        health_path=system["ready_path"],
    )
    name = system["name"]
    print(f"goodput: {name}: starting {shlex.join(command)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    running.append(server)
    try:
        server.start(timeout_s=600)
        startup_s = time.monotonic() - started
        replayer = Replayer(
            Target(server.url, client=w["client"], api_key=api_key, timeout_s=w["timeout_s"])
        )
        limits = Limits(w["max_requests"], w["duration_s"])
        runs: list[dict[str, Any]] = []

        def measure(rate: float) -> dict[str, Any]:
            server.flush_cache()
            report = replayer.run(
                turns,
                w["ttft_slo_ms"],
                w["tpot_slo_ms"],
                limits,
                rate=rate,
                seed=w["seed"],
                window_s=w["window_s"],
            )
            print(
                f"goodput: {name}: {rate:.4g} sessions/s -> SLO attainment "
                f"{report['slo_attainment']:.3f}, {report['throughput_tok_s']:.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
            return report

        def evaluate(rate: float) -> dict[str, Any]:
            runs.append(report := measure(rate))
            return report

        best, search = find_goodput(
            evaluate,
            w["attainment"],
            w["start_rate"],
            w["bisect_steps"],
            max_doublings=w["max_doublings"],
        )
        found = best is not None
        if best is None:  # report the lowest rate tried, flagged
            best = min(runs, key=lambda r: r["rate_sessions_per_s"])
        saturation = measure(w["saturation_rate"]) if w["saturation_rate"] else None
    except ServerStartError as err:
        return {"command": command, "error": str(err)}
    finally:
        server.stop(grace_s=30)  # a cluster launcher stops its workers first
        running.remove(server)
    return {
        "command": command,
        "startup_s": round(startup_s, 1),
        "goodput_found": found,
        "max_session_rate": best["rate_sessions_per_s"] if found else 0.0,
        "at_goodput": best,
        "saturation": saturation,
        "search": search,
        "runs": sorted(runs, key=lambda r: r["rate_sessions_per_s"]),  # the search runs
    }


def compare(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """For each pair (earlier, later in the config): the earlier one's figures over the later's."""
    names = [n for n, s in systems.items() if "error" not in s]
    out = {}
    for i, ref in enumerate(names):
        for other in names[i + 1 :]:
            a, b = systems[ref], systems[other]
            row: dict[str, Any] = {
                "max_session_rate_ratio": _ratio(a["max_session_rate"], b["max_session_rate"]),
                "goodput_rps_ratio": _ratio(
                    a["at_goodput"]["goodput_rps"], b["at_goodput"]["goodput_rps"]
                ),
            }
            if a["saturation"] and b["saturation"]:
                row["saturation_throughput_ratio"] = _ratio(
                    a["saturation"]["throughput_tok_s"], b["saturation"]["throughput_tok_s"]
                )
            out[f"{ref}_vs_{other}"] = row
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = report["workload"]
    panels = (
        ("slo_attainment", "SLO attainment", w["attainment"]),
        ("ttft_p99_ms", "TTFT p99 (ms)", w["ttft_slo_ms"]),
        ("tbt_p99_ms", "TBT p99 (ms): per request, P99 gap between tokens", w["tpot_slo_ms"]),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, system in report["systems"].items():
        runs = system.get("runs") or []
        rates = [r["rate_sessions_per_s"] for r in runs]
        for ax, (key, _, _) in zip(axes, panels, strict=True):
            ax.plot(rates, [r[key] for r in runs], marker="o", label=name)
    for ax, (_, label, line) in zip(axes, panels, strict=True):
        ax.axhline(line, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("session rate (sessions/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{Path(w['trace']).name}: TTFT {w['ttft_slo_ms']} ms, TPOT {w['tpot_slo_ms']} ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("drift-sgl", "sglang", "torch", "flashinfer-python"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/goodput.py", description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="YAML config (bench/configs/)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/goodput"))
    parser.add_argument("--trace", help="override workload.trace")
    parser.add_argument("--sessions", type=int, help="override workload.sessions")
    parser.add_argument("--systems", help="comma-separated names: run only these")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a workload key (VALUE is YAML), e.g. --set bisect_steps=0",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--replot", action="store_true", help="CONFIG is a goodput.json: "
                        "redraw its PNG beside it, run nothing")  # fmt: skip
    args = parser.parse_args(argv)
    if args.replot:
        report = json.loads(args.config.read_text(encoding="utf-8"))
        plot(report, args.config.with_suffix(".png"))
        return 0
    try:
        config = load_config(args.config)
        w = config["workload"]
        if args.trace:
            w["trace"] = args.trace
        if args.sessions:
            w["sessions"] = args.sessions
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or key not in WORKLOAD_KEYS:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a workload key")
            w[key] = yaml.safe_load(value)
        turns = read_trace(REPO / w["trace"])  # an absolute path stays as it is
        if w["sessions"]:
            turns = first_sessions(turns, w["sessions"])
        systems = config["systems"]
        if args.systems:
            wanted = args.systems.split(",")
            missing = set(wanted) - {s["name"] for s in systems}
            if missing:
                raise ConfigError(f"--systems: no system named {sorted(missing)}")
            systems = [s for s in systems if s["name"] in wanted]
        model = resolve_model(config["server"])
    except (ConfigError, ValueError, OSError) as err:
        print(f"goodput: error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    running: list[ServerProcess] = []  # the server being benchmarked, for the handler below

    def on_sigterm(*_: object) -> None:
        # A SIGTERM (kill, a CI timeout) must not leave a server behind.
        for server in running:
            server.stop(grace_s=5)
        os._exit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    results = {s["name"]: bench_system(s, config, model, turns, args.out, running) for s in systems}
    report = {
        "config": str(args.config),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "cpus": os.cpu_count(),
        "model_path": str(model),
        "workload": w,
        "report_keys": list(REPORT_KEYS),
        "systems": results,
        "comparison": compare(results),
    }
    text = json.dumps(report, indent=1)
    (args.out / "goodput.json").write_text(text + "\n", encoding="utf-8")
    if not args.no_plot:
        plot(report, args.out / "goodput.png")
    print(text)
    failed = [n for n, s in results.items() if "error" in s]
    for name in failed:
        print(f"goodput: {name} did not start: {results[name]['error'][:500]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

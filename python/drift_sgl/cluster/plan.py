"""What a cluster runs: N drift (or plain SGLang) workers, SGLang's gateway in front.

Pure: parses the launcher's command line and builds the commands and the
environment of every process; ``drift_sgl.cluster.run`` starts them. Each
worker gets its own device share (whole GPUs, or a group of CPU cores) and
its own port on 127.0.0.1; the gateway (``smg``, sgl-model-gateway, installed
by ``make setup``) listens on ``--host``/``--port`` and routes with
``--router-policy`` (default ``cache_aware``: each conversation's turns go where
its prefix is cached).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from drift_sgl.cpu.environment import SGLANG_CPU_ARGS, cpu_list, omp_threads_bind

#: The gateway's routing policies (``smg launch --policy``).
ROUTER_POLICIES = (
    "cache_aware",
    "round_robin",
    "random",
    "power_of_two",
    "least_load",
    "consistent_hashing",
    "prefix_hash",
)


class ClusterError(ValueError):
    """A cluster that cannot be laid out on this machine; the message says why."""


@dataclass(frozen=True)
class ClusterSpec:
    """One cluster: the workers' shared arguments and the gateway's settings."""

    workers: int
    host: str
    port: int
    router_policy: str
    #: SGLang and --drift-* arguments every worker gets (not --host/--port).
    worker_args: tuple[str, ...]
    log_dir: Path
    #: Serve with plain ``sglang.launch_server`` workers (a baseline), not drift.
    plain_sglang: bool = False
    #: Ports of the workers on 127.0.0.1 (``base_worker_port + i``).
    base_worker_port: int = 31000
    #: Where the gateway serves its own Prometheus metrics.
    gateway_metrics_port: int = 29000
    #: More ``smg launch`` arguments, as given.
    router_args: tuple[str, ...] = ()

    @property
    def worker_ports(self) -> tuple[int, ...]:
        return tuple(self.base_worker_port + i for i in range(self.workers))

    @property
    def worker_urls(self) -> tuple[str, ...]:
        return tuple(f"http://127.0.0.1:{port}" for port in self.worker_ports)

    @property
    def api_key(self) -> str | None:
        return option_value(self.worker_args, "--api-key")


@dataclass(frozen=True)
class Placement:
    """Where one worker runs: environment additions and, on a CPU, its cores."""

    env: dict[str, str] = field(default_factory=dict)
    cpus: tuple[int, ...] = ()

    def describe(self) -> str:
        if "CUDA_VISIBLE_DEVICES" in self.env:
            return f"GPU {self.env['CUDA_VISIBLE_DEVICES']}"
        return f"CPU cores {cpu_list(self.cpus)}"


def parse_cluster_args(argv: Sequence[str]) -> ClusterSpec:
    """The launcher's own flags; everything else is passed to every worker.

    ``--host`` and ``--port`` are the gateway's: each worker gets its own port.
    """
    parser = argparse.ArgumentParser(
        prog="python -m drift_sgl.launch_cluster",
        allow_abbrev=False,  # an abbreviation may be one of SGLang's flags
        description=(
            "N drift workers behind SGLang's gateway (smg). Flags not listed here "
            "(SGLang's and --drift-*) go to every worker."
        ),
    )
    parser.add_argument("--workers", type=int, required=True, help="number of workers (>= 1)")
    parser.add_argument("--host", default="127.0.0.1", help="the gateway's address")
    parser.add_argument("--port", type=int, default=30000, help="the gateway's port")
    parser.add_argument(
        "--router-policy",
        default="cache_aware",
        choices=ROUTER_POLICIES,
        help="the gateway's routing policy (default: %(default)s)",
    )
    parser.add_argument(
        "--base-worker-port",
        type=int,
        default=None,
        help="worker i listens on 127.0.0.1:(this + i) (default: --port + 1000)",
    )
    parser.add_argument(
        "--gateway-metrics-port",
        type=int,
        default=None,
        help="the gateway's Prometheus port (default: --port - 1000)",
    )
    parser.add_argument(
        "--router-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more `smg launch` argument (repeat; e.g. --router-arg=--cache-threshold=0.5)",
    )
    parser.add_argument(
        "--log-dir", type=Path, default=Path("cluster-logs"), help="one log per process"
    )
    parser.add_argument(
        "--plain-sglang",
        action="store_true",
        help="run plain `sglang.launch_server` workers (a baseline for benchmarks)",
    )
    ours, worker_args = parser.parse_known_args(list(argv))
    if ours.workers < 1:
        raise ClusterError(f"--workers must be >= 1, got {ours.workers}")
    return ClusterSpec(
        workers=ours.workers,
        host=ours.host,
        port=ours.port,
        router_policy=ours.router_policy,
        worker_args=tuple(worker_args),
        log_dir=ours.log_dir,
        plain_sglang=ours.plain_sglang,
        base_worker_port=ours.port + 1000
        if ours.base_worker_port is None
        else ours.base_worker_port,
        gateway_metrics_port=ours.port - 1000
        if ours.gateway_metrics_port is None
        else ours.gateway_metrics_port,
        router_args=tuple(ours.router_arg),
    )


def devices_per_worker(worker_args: Sequence[str]) -> int:
    """GPUs one worker uses: its tensor-parallel times data-parallel size."""
    tp = option_value(worker_args, "--tp-size", "--tp") or "1"
    dp = option_value(worker_args, "--dp-size", "--dp") or "1"
    try:
        return int(tp) * int(dp)
    except ValueError:
        raise ClusterError(f"--tp-size/--dp-size must be integers, got {tp!r}/{dp!r}") from None


def place_workers(
    workers: int, device: str, per_worker: int, gpu_ids: Sequence[str], cpus: Sequence[int]
) -> list[Placement]:
    """Disjoint device shares: ``per_worker`` GPUs each, or an equal group of CPU cores."""
    if device == "cuda":
        needed = workers * per_worker
        if needed > len(gpu_ids):
            raise ClusterError(
                f"{workers} workers x {per_worker} GPU(s) need {needed} GPUs; "
                f"{len(gpu_ids)} visible ({', '.join(gpu_ids) or 'none'})"
            )
        return [
            Placement(
                env={
                    "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids[i * per_worker : (i + 1) * per_worker])
                }
            )
            for i in range(workers)
        ]
    cpus = sorted(cpus)
    if workers * per_worker > len(cpus):
        raise ClusterError(
            f"{workers} workers x {per_worker} rank(s) need at least {workers * per_worker} "
            f"CPU cores; this process may use {len(cpus)}"
        )
    size = len(cpus) // workers
    placements = []
    for i in range(workers):
        group = tuple(cpus[i * size : (i + 1) * size])
        # A worker of several ranks needs SGLang's per-rank core groups; a
        # one-rank worker does not, and SGLang then sizes its memory as usual
        # (with the variable set it cannot, and a default pool can exhaust RAM).
        bind = omp_threads_bind(per_worker, list(group))
        env = {} if bind is None else {"SGLANG_CPU_OMP_THREADS_BIND": bind}
        placements.append(Placement(env=env, cpus=group))
    return placements


def worker_command(spec: ClusterSpec, index: int, device: str) -> list[str]:
    """``python -m`` drift's launcher (or SGLang's) for worker ``index``.

    drift fills in the CPU settings itself; plain SGLang on a CPU gets them here.
    """
    module = "sglang.launch_server" if spec.plain_sglang else "drift_sgl.launch_server"
    port = spec.worker_ports[index]
    cpu_args = SGLANG_CPU_ARGS if spec.plain_sglang and device == "cpu" else ()
    return [
        sys.executable,
        "-m",
        module,
        *spec.worker_args,
        *cpu_args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def gateway_command(
    spec: ClusterSpec, policy: str | None = None, port: int | None = None
) -> list[str]:
    """``smg launch`` in front of the workers (``policy``/``port``: override the spec's)."""
    command = [
        sys.executable,
        "-m",
        "smg.launch_router",
        "--host",
        spec.host,
        "--port",
        str(spec.port if port is None else port),
        "--worker-urls",
        *spec.worker_urls,
        "--policy",
        spec.router_policy if policy is None else policy,
        # Workers are healthy before the gateway starts: register at once.
        "--worker-startup-check-interval",
        "1",
        "--prometheus-port",
        str(spec.gateway_metrics_port),
        "--prometheus-host",
        "127.0.0.1",
    ]
    if spec.api_key is not None:
        command += ["--api-key", spec.api_key]
    return command + list(spec.router_args)


def option_value(args: Sequence[str], *names: str) -> str | None:
    """The value of the last ``--name VALUE`` or ``--name=VALUE`` in ``args``."""
    value = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value

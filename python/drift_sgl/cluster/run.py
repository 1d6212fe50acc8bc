"""Start a cluster, keep it up, stop it whole.

Workers start together (each in its own process group, on its own device
share) and the gateway starts once every worker answers ``/health``; the
gateway is ready when its ``/readiness`` answers 200. ``cluster.json`` in the
log folder names every process (URL, process id, log) for operators and tests.
A worker that dies is reported and left out (the gateway routes around it);
the gateway dying, SIGINT or SIGTERM stops everything, by process group.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from drift_sgl.cluster.plan import (
    ClusterSpec,
    Placement,
    devices_per_worker,
    gateway_command,
    place_workers,
    worker_command,
)
from drift_sgl.cpu.environment import server_process_env
from drift_sgl.tools.server_process import ServerProcess, ServerStartError

logger = logging.getLogger(__name__)

#: Seconds between checks that every process is still alive.
SUPERVISE_INTERVAL_S = 2.0
#: Seconds a worker has to exit after SIGTERM before it is killed: the whole
#: cluster then stops within about 15 s, the grace most supervisors give.
WORKER_GRACE_S = 10.0


@dataclass
class Cluster:
    """The running processes of a ``ClusterSpec``."""

    spec: ClusterSpec
    workers: list[ServerProcess]
    gateway: ServerProcess

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.port}"

    def describe(self) -> dict[str, Any]:
        """What ``cluster.json`` holds."""
        return {
            "gateway": _entry(self.gateway, self.url),
            "router_policy": self.spec.router_policy,
            "gateway_metrics": f"http://127.0.0.1:{self.spec.gateway_metrics_port}/metrics",
            "workers": [_entry(w, w.url) for w in self.workers],
        }

    def write_description(self) -> None:
        """``cluster.json``: written before the gateway serves, so that it is
        there whenever the cluster answers."""
        self.spec.log_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.describe(), indent=2) + "\n"
        (self.spec.log_dir / "cluster.json").write_text(text)

    def stop(self) -> None:
        """Gateway first (no new requests reach a stopping worker), then the
        workers, all at once (each may take its grace period)."""
        self.gateway.stop(grace_s=3.0)
        with ThreadPoolExecutor(max(1, len(self.workers))) as pool:
            list(pool.map(lambda worker: worker.stop(grace_s=WORKER_GRACE_S), self.workers))


def worker_processes(
    spec: ClusterSpec, placements: list[Placement], device: str
) -> list[ServerProcess]:
    """The workers, not started: each pinned to its share, logging to its own file."""
    taskset = shutil.which("taskset")
    if taskset is None and any(place.cpus for place in placements):
        logger.warning("cluster: no `taskset` here: the CPU workers share every core")
    processes = []
    for index, (port, place) in enumerate(zip(spec.worker_ports, placements, strict=True)):
        command = worker_command(spec, index, device)
        if place.cpus and taskset is not None:
            command = [taskset, "-c", ",".join(map(str, place.cpus)), *command]
        env = server_process_env(place.env)
        log = spec.log_dir / f"worker-{index}.log"
        processes.append(ServerProcess(command, port, log, env=env, api_key=spec.api_key))
    return processes


def gateway_process(
    spec: ClusterSpec, policy: str | None = None, port: int | None = None
) -> ServerProcess:
    """The gateway, not started (``policy``/``port``: another gateway over the same workers)."""
    command = gateway_command(spec, policy, port)
    name = "gateway.log" if policy is None else f"gateway-{policy}.log"
    return ServerProcess(
        command,
        spec.port if port is None else port,
        spec.log_dir / name,
        health_path="/readiness",
    )


def start_cluster(
    spec: ClusterSpec, device: str, gpu_ids: list[str], cpus: list[int], timeout_s: float = 900.0
) -> Cluster:
    """Start the workers, then the gateway; stop whatever started if any part fails."""
    placements = place_workers(
        spec.workers, device, devices_per_worker(spec.worker_args), gpu_ids, cpus
    )
    workers = worker_processes(spec, placements, device)
    gateway = gateway_process(spec)
    cluster = Cluster(spec, workers, gateway)
    started = time.monotonic()
    try:
        for index, (worker, place) in enumerate(zip(workers, placements, strict=True)):
            worker.spawn()
            logger.info(
                "cluster: worker %d/%d starting on %s at %s (log %s)",
                index + 1,
                spec.workers,
                place.describe(),
                worker.url,
                worker.log_path,
            )
        for index, worker in enumerate(workers):
            left = max(1.0, timeout_s - (time.monotonic() - started))
            worker.wait_ready(left)
            logger.info(
                "cluster: worker %d/%d ready (%.0f s)",
                index + 1,
                spec.workers,
                time.monotonic() - started,
            )
        gateway.spawn()
        cluster.write_description()
        gateway.wait_ready(timeout_s=120.0)
    except (ServerStartError, KeyboardInterrupt):
        cluster.stop()
        raise
    logger.info(
        "cluster: gateway (%s routing) ready at %s after %.0f s; logs and cluster.json in %s",
        spec.router_policy,
        cluster.url,
        time.monotonic() - started,
        spec.log_dir,
    )
    return cluster


def supervise(cluster: Cluster) -> int:
    """Block until SIGINT/SIGTERM or the gateway exits; report workers that die."""
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    dead: set[int] = set()
    code = 0
    try:
        while not stopping:
            if not cluster.gateway.alive():
                logger.error("cluster: the gateway exited; see %s", cluster.gateway.log_path)
                code = 1
                break
            for index, worker in enumerate(cluster.workers):
                if index not in dead and not worker.alive():
                    dead.add(index)
                    logger.error(
                        "cluster: worker %d (%s) exited; the gateway routes around it; see %s",
                        index + 1,
                        worker.url,
                        worker.log_path,
                    )
            time.sleep(SUPERVISE_INTERVAL_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("cluster: stopping the gateway and %d workers", len(cluster.workers))
        cluster.stop()
    return code


def _entry(process: ServerProcess, url: str) -> dict[str, Any]:
    pid = None if process.proc is None else process.proc.pid
    return {"url": url, "pid": pid, "log": str(process.log_path)}

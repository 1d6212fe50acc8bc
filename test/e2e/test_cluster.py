"""Two drift workers behind SGLang's gateway (smg), started by `drift_sgl.launch_cluster`.

The workers shed requests of the "doomed" class (TTFT 1 us) with a 429. The
last test kills a worker, so it runs last (the cluster is this module's).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from drift_sgl.cluster.plan import ClusterSpec, parse_cluster_args
from drift_sgl.cluster.run import gateway_process
from drift_sgl.tools.server_process import ServerProcess, free_port, python_module_command

pytestmark = pytest.mark.slow

DOOMED = '{"doomed": {"ttft_ms": 0.001}}'


class RunningCluster:
    def __init__(self, launcher: ServerProcess, spec: ClusterSpec) -> None:
        self.launcher = launcher
        self.spec = spec
        self.url = launcher.url

    def described(self) -> dict:
        return json.loads((self.spec.log_dir / "cluster.json").read_text())

    def wait_for_log(self, text: str, timeout_s: float = 15.0) -> None:
        """Wait until the launcher's log says ``text`` (it logs after the fact)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.launcher.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"the launcher never logged {text!r}"
            time.sleep(0.5)

    def flush_workers(self) -> None:
        for url in self.spec.worker_urls:
            ServerProcess([], int(url.rsplit(":", 1)[1]), Path(os.devnull)).flush_cache()

    def worker_state(self, url: str) -> dict:
        resp = requests.get(url + "/server_info", timeout=30)
        resp.raise_for_status()
        return resp.json()["internal_states"][0]["drift"]


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, server_logs_dir: Path) -> Iterator[RunningCluster]:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two workers need two CPU cores")
    port = free_port()
    argv = [
        "--workers", "2",
        "--port", str(port),
        "--base-worker-port", str(free_port()),
        "--gateway-metrics-port", str(free_port()),
        "--log-dir", str(server_logs_dir / "cluster"),
        "--model-path", str(tiny_model_dir),
        "--dtype", "float32",
        "--max-total-tokens", "8192",
        "--skip-server-warmup",
        "--drift-overload", "shed",
        "--drift-slo-classes", DOOMED,
    ]  # fmt: skip
    spec = parse_cluster_args(argv)
    if len(set(spec.worker_ports) | {port, spec.gateway_metrics_port}) != 4:
        pytest.skip("port collision; rerun")
    launcher = ServerProcess(
        python_module_command("drift_sgl.launch_cluster", *argv),
        port,
        server_logs_dir / "cluster-launcher.log",
        health_path="/readiness",
    )
    try:
        launcher.start(timeout_s=900)
        yield RunningCluster(launcher, spec)
    finally:
        launcher.stop(grace_s=60)
        _kill_leftover_workers(spec)


def _kill_leftover_workers(spec: ClusterSpec) -> None:
    """Safety net: a launcher killed before its own clean-up leaves worker groups."""
    path = spec.log_dir / "cluster.json"
    if not path.exists():
        return
    for worker in json.loads(path.read_text())["workers"]:
        with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
            os.killpg(worker["pid"], signal.SIGKILL)


def _generate(url: str, text: str, max_new_tokens: int = 6, **extra) -> requests.Response:
    body = {
        "text": text,
        "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0},
        **extra,
    }
    return requests.post(url + "/generate", json=body, timeout=120)


def _conversations(url: str, tag: str, count: int = 3, turns: int = 3) -> tuple[float, list]:
    """Multi-turn conversations; returns (cached share of the earlier turns'
    tokens on later turns, the worker of every turn per conversation)."""
    cached = earlier = 0
    workers = []
    for conv in range(count):
        text = f"{tag} conversation {conv}: " + " ".join(f"w{conv}x{i}" for i in range(40))
        previous = 0
        served_by = []
        for turn in range(turns):
            resp = _generate(url, text)
            assert resp.status_code == 200, resp.text
            meta = resp.json()["meta_info"]
            served_by.append(resp.headers.get("x-smg-routed-worker-id"))
            if turn > 0:
                cached += min(meta["cached_tokens"], previous)
                earlier += previous
            previous = meta["prompt_tokens"]
            text += resp.json()["text"] + f" then {turn} " + " ".join(f"t{i}" for i in range(15))
        workers.append(served_by)
    return cached / earlier, workers


def test_the_cluster_describes_itself(cluster):
    described = cluster.described()
    assert described["router_policy"] == "cache_aware"
    assert [w["url"] for w in described["workers"]] == list(cluster.spec.worker_urls)
    cluster.wait_for_log("cluster: gateway (cache_aware routing) ready")


def test_cache_aware_routing_keeps_each_conversation_where_its_prefix_is(cluster):
    cluster.flush_workers()
    share, workers = _conversations(cluster.url, "cache-aware")
    assert all(len(set(served)) == 1 for served in workers), workers
    assert share >= 0.9, share


def test_round_robin_routing_loses_the_prefix(cluster):
    """The control: a second gateway over the same workers, round robin."""
    cluster.flush_workers()
    port = free_port()
    argv = f"--workers 2 --base-worker-port {cluster.spec.base_worker_port}"
    argv += f" --gateway-metrics-port {free_port()} --log-dir {cluster.spec.log_dir}"
    spec = parse_cluster_args(argv.split())
    with gateway_process(spec, policy="round_robin", port=port) as gateway:
        share, workers = _conversations(gateway.url, "round-robin")
    assert all(len(set(served)) == 2 for served in workers), workers
    assert share <= 0.7, share


def _gateway_metric(cluster, name: str) -> list[float]:
    resp = requests.get(f"http://127.0.0.1:{cluster.spec.gateway_metrics_port}/metrics", timeout=30)
    return [float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", resp.text, re.M)]


def test_a_shed_request_is_retried_and_never_opens_a_breaker(cluster):
    urls = cluster.spec.worker_urls
    before = sum(cluster.worker_state(u)["counters"]["shed_requests"] for u in urls)
    # More than the gateway's breaker threshold (10 failures) of shed requests.
    for i in range(12):
        resp = _generate(cluster.url, f"Doomed request {i}", slo={"class": "doomed"})
        assert resp.status_code == 429, resp.text
        assert "time-to-first-token target cannot be met" in resp.text
    shed = sum(cluster.worker_state(u)["counters"]["shed_requests"] for u in urls) - before
    assert shed >= 24  # each one tried again after the first 429
    states = _gateway_metric(cluster, "smg_worker_cb_state")
    assert states and all(state == 0 for state in states), states  # every breaker closed
    served = {_generate(cluster.url, f"Fresh prompt {i} " * 8).status_code for i in range(4)}
    assert served == {200}


def test_a_killed_worker_loses_only_its_requests_in_flight(cluster):
    victim = cluster.described()["workers"][1]
    stop = threading.Event()
    outcomes: list[tuple[float, int]] = []

    def client(index: int) -> None:
        turn = 0
        while not stop.is_set():
            try:
                status = _generate(cluster.url, f"Client {index} turn {turn} " * 6).status_code
            except requests.RequestException:
                status = -1
            outcomes.append((time.monotonic(), status))
            turn += 1

    with ThreadPoolExecutor(6) as pool:
        for index in range(6):
            pool.submit(client, index)
        time.sleep(3)
        killed_at = time.monotonic()
        os.killpg(victim["pid"], signal.SIGKILL)
        time.sleep(8)
        stop.set()
    before = [status for at, status in outcomes if at < killed_at]
    after = [status for at, status in outcomes if at >= killed_at]
    assert before and all(status == 200 for status in before), before
    lost = [status for status in after if status != 200]
    assert len(lost) <= 6, lost  # at most the requests in flight when it died
    assert after[-6:] == [200] * 6, after  # the gateway routes around it
    cluster.wait_for_log(
        f"cluster: worker 2 ({victim['url']}) exited; the gateway routes around it"
    )

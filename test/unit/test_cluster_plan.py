"""drift_sgl.cluster.plan: the launcher's flags, device shares, the processes' commands."""

from __future__ import annotations

import pytest

from drift_sgl.cluster.plan import (
    ClusterError,
    devices_per_worker,
    gateway_command,
    option_value,
    parse_cluster_args,
    place_workers,
    worker_command,
)


def test_flags_of_the_launcher_and_of_the_workers_are_split():
    argv = "--workers 2 --port 8000 --host=0.0.0.0 --model-path m --drift-tpot-slo-ms 50"
    spec = parse_cluster_args(argv.split())
    assert spec.host == "0.0.0.0"
    assert spec.workers == 2 and spec.port == 8000 and spec.router_policy == "cache_aware"
    assert spec.worker_args == ("--model-path", "m", "--drift-tpot-slo-ms", "50")
    assert spec.worker_urls == ("http://127.0.0.1:9000", "http://127.0.0.1:9001")
    assert spec.gateway_metrics_port == 7000


def test_bad_flags_are_refused(capsys):
    with pytest.raises(ClusterError, match="--workers must be >= 1"):
        parse_cluster_args(["--workers", "0"])
    with pytest.raises(SystemExit):
        parse_cluster_args(["--workers", "two"])
    assert "invalid int value: 'two'" in capsys.readouterr().err


def test_gpus_are_split_by_tensor_and_data_parallel_size():
    assert devices_per_worker(["--tp", "2", "--dp-size=2"]) == 4
    shares = place_workers(2, "cuda", 2, ["0", "1", "2", "3"], [])
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in shares] == ["0,1", "2,3"]
    with pytest.raises(ClusterError, match="need 6 GPUs; 4 visible"):
        place_workers(3, "cuda", 2, ["0", "1", "2", "3"], [])


def test_cpu_cores_are_split_into_disjoint_groups():
    shares = place_workers(2, "cpu", 1, [], [3, 2, 1, 0, 4])
    assert [p.cpus for p in shares] == [(0, 1), (2, 3)]
    assert all(not p.env for p in shares)  # one rank each: pinned by taskset only
    two_ranks = place_workers(1, "cpu", 2, [], [0, 1, 2, 3])
    assert two_ranks[0].env["SGLANG_CPU_OMP_THREADS_BIND"] == "0-1|2-3"
    with pytest.raises(ClusterError, match="at least 3 CPU cores"):
        place_workers(3, "cpu", 1, [], [0, 1])


def test_commands_of_workers_and_gateway():
    argv = "--workers 2 --router-policy round_robin --api-key k --model-path m"
    spec = parse_cluster_args([*argv.split(), "--router-arg=--cache-threshold=0.5"])
    drift = worker_command(spec, 1, "cpu")
    assert drift[1:3] == ["-m", "drift_sgl.launch_server"]
    assert option_value(drift, "--port") == "31001" and "--device" not in drift
    plain = worker_command(parse_cluster_args(["--workers", "1", "--plain-sglang"]), 0, "cpu")
    assert plain[1:3] == ["-m", "sglang.launch_server"] and option_value(plain, "--device") == "cpu"
    gateway = gateway_command(spec)
    assert option_value(gateway, "--policy") == "round_robin"
    assert option_value(gateway, "--api-key") == "k"
    assert gateway[-1] == "--cache-threshold=0.5"
    assert option_value(gateway_command(spec, policy="cache_aware", port=5), "--port") == "5"

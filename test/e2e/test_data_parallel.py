"""With --dp 2, every scheduler process runs DriftScheduler (through SGLang's DP controller)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from drift_sgl.tools.server_process import ServerProcess, free_port, python_module_command
from e2e.client import generate_ids, get

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def drift_dp_server(tiny_model_dir, server_logs_dir):
    port = free_port()
    args = python_module_command(
        "drift_sgl.launch_server",
        "--model-path", str(tiny_model_dir),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--device", "cpu",
        "--dp", "2",
        "--max-total-tokens", "4096",
        "--skip-server-warmup",
    )  # fmt: skip
    server = ServerProcess(args, port, server_logs_dir / "drift-dp2.log")
    try:
        # Three processes import the whole stack on 2 cores: allow a slow start.
        yield server.start(timeout_s=600)
    finally:
        server.stop()


def test_every_dp_rank_runs_drift(drift_dp_server, sglang_server):
    prompts = [f"data parallel request {i} " * (i + 1) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda p: generate_ids(drift_dp_server, p, 12), prompts))
    # Same greedy outputs as plain SGLang, whichever rank served each request.
    assert outputs == [generate_ids(sglang_server, p, 12) for p in prompts]
    states = get(drift_dp_server, "/server_info").json()["internal_states"]
    assert len(states) == 2
    assert all(s["drift"]["partition_backend"] == "time-mux" for s in states)
    served = [s["drift"]["counters"]["gangs_merged"] for s in states]
    assert all(n >= 1 for n in served), served  # round-robin reaches both ranks

"""With --dp 2, every scheduler process runs DriftScheduler (through SGLang's DP controller)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from e2e.client import generate_ids, get
from e2e.servers import drift_server_process, serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def drift_dp_server(tiny_model_dir, server_logs_dir):
    server = drift_server_process(
        tiny_model_dir,
        server_logs_dir / "drift-dp2.log",
        "--dp", "2",
        "--max-total-tokens", "4096",
        "--dtype", "float32",  # as sglang_server, its oracle
    )  # fmt: skip
    # Three processes import the whole stack on 2 cores: allow a slow start.
    yield from serve(server, timeout_s=600)


def test_every_dp_rank_runs_drift(drift_dp_server, sglang_server):
    prompts = [f"data parallel request {i} " * (i + 1) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda p: generate_ids(drift_dp_server, p, 12), prompts))
    # Same greedy outputs as plain SGLang, whichever rank served each request.
    assert outputs == [generate_ids(sglang_server, p, 12) for p in prompts]
    states = get(drift_dp_server, "/server_info").json()["internal_states"]
    assert len(states) == 2
    assert all(s["drift"]["partition_backend"] == "time-mux" for s in states)
    # No --drift-profile: each rank calibrated its cores at start-up.
    assert all(s["drift"]["latency_model"]["source"] == "cpu-calibration" for s in states)
    served = [s["drift"]["counters"]["gangs_merged"] for s in states]
    assert all(n >= 1 for n in served), served  # round-robin reaches both ranks

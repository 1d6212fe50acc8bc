"""SGLang retracts decodes beside drift's prefills in flight: nothing is lost or leaked."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from drift_sgl.tools.server_process import ServerProcess, free_port, python_module_command
from e2e.client import assert_kv_pool_empty, drift_state, post

pytestmark = pytest.mark.slow

KV_TOKENS = 1024
NUM_REQUESTS = 10
OUTPUT_TOKENS = 160


@pytest.fixture(scope="module")
def retracting_server(tiny_model_dir, server_logs_dir):
    port = free_port()
    args = python_module_command(
        "drift_sgl.launch_server",
        "--model-path", str(tiny_model_dir),
        "--device", "cpu",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-total-tokens", str(KV_TOKENS),
        "--skip-server-warmup",
        "--drift-layer-budget-tokens", "32",
    )  # fmt: skip
    # SGLang's own retraction test hook: retract running decodes every few
    # forward passes, as KV pressure would, while drift may have a gang in flight.
    env = dict(os.environ, SGLANG_TEST_RETRACT="1", SGLANG_TEST_RETRACT_INTERVAL="7")
    server = ServerProcess(args, port, server_logs_dir / "drift-retract.log", env=env)
    try:
        yield server.start(timeout_s=600)
    finally:
        server.stop()


def _generate(server, i: int) -> dict:
    body = {
        "text": f"request {i} " + "fill the cache " * (10 + i),
        "sampling_params": {
            "max_new_tokens": OUTPUT_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
        },
    }
    resp = post(server, "/generate", body, timeout=600)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_retraction_beside_prefill_in_flight_loses_nothing(retracting_server):
    with ThreadPoolExecutor(NUM_REQUESTS) as pool:
        results = list(pool.map(lambda i: _generate(retracting_server, i), range(NUM_REQUESTS)))
    for result in results:
        assert result["meta_info"]["finish_reason"]["type"] == "length"
        assert len(result["output_ids"]) == OUTPUT_TOKENS
    assert "#retracted_reqs" in retracting_server.log_path.read_text(errors="replace")
    assert drift_state(retracting_server)["counters"]["mux_steps"] > 0
    assert retracting_server.alive()
    assert_kv_pool_empty(retracting_server)

"""SGLang retracts decodes beside drift's prefills in flight: nothing is lost or leaked."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from e2e.client import assert_kv_pool_empty, drift_state, post
from e2e.servers import drift_server_process, serve

pytestmark = pytest.mark.slow

KV_TOKENS = 1024
NUM_REQUESTS = 10
OUTPUT_TOKENS = 160


@pytest.fixture(scope="module")
def retracting_server(tiny_model_dir, server_logs_dir):
    # SGLang's own retraction test hook: retract running decodes every few
    # forward passes, as KV pressure would, while drift may have a gang in flight.
    env = dict(os.environ, SGLANG_TEST_RETRACT="1", SGLANG_TEST_RETRACT_INTERVAL="7")
    server = drift_server_process(
        tiny_model_dir,
        server_logs_dir / "drift-retract.log",
        "--max-total-tokens", str(KV_TOKENS),
        "--drift-tpot-slo-ms", "1",
        env=env,
    )  # fmt: skip
    yield from serve(server, timeout_s=600)


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

"""The HTTP API works through drift: OpenAI chat, /generate, health and info routes."""

from __future__ import annotations

import pytest

from e2e.client import chat, chat_body, drift_state, get, iter_sse, open_chat_stream, post

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "what is the capital of France?"}]


def test_chat_completion_non_streaming(drift_server):
    body = chat(drift_server, MESSAGES, max_tokens=10)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 10


def test_chat_completion_streaming_matches_non_streaming(drift_server):
    expected = chat(drift_server, MESSAGES, max_tokens=10)["choices"][0]["message"]["content"]
    body = chat_body(MESSAGES, max_tokens=10, stream=True)
    with open_chat_stream(drift_server, body) as resp:
        assert resp.status_code == 200
        chunks = list(iter_sse(resp))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_generate(drift_server):
    resp = post(
        drift_server,
        "/generate",
        {"text": "hello", "sampling_params": {"max_new_tokens": 5, "temperature": 0}},
    )
    assert resp.status_code == 200
    meta = resp.json()["meta_info"]
    assert meta["completion_tokens"] <= 5
    assert meta["prompt_tokens"] > 0


def test_health_and_server_info(drift_server):
    assert get(drift_server, "/health").status_code == 200
    info = get(drift_server, "/server_info").json()
    # SGLang's own fields stay right, and drift reports itself beside them.
    assert info["chunked_prefill_size"] == -1
    assert info["disable_overlap_schedule"] is True
    state = info["internal_states"][0]["drift"]
    assert state["partition_backend"] == "time-mux"
    assert state["policy"] == "SloPlanner"
    # No --drift-profile: the scheduler calibrated the CPU and says it is an estimate.
    assert state["latency_model"]["source"] == "cpu-calibration"
    assert state["latency_model"]["estimated"] is True
    assert state["kv_total_tokens"] == 8192
    # drift chunks long prompts at --max-prefill-tokens (SGLang's default 16384).
    assert state["prefill_chunk_tokens"] == info["max_prefill_tokens"]


def test_metrics_track_drift_traffic(drift_server):
    before = drift_state(drift_server)["counters"]["decode_steps"]
    chat(drift_server, MESSAGES, max_tokens=6)
    text = get(drift_server, "/metrics").text
    assert "sglang:prompt_tokens_total" in text
    assert "sglang:time_to_first_token_seconds" in text
    assert drift_state(drift_server)["counters"]["decode_steps"] >= before + 5

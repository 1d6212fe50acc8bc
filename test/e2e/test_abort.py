"""Aborts and dropped clients never leak KV, also when a prefill is mid-split."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import requests

from e2e.client import (
    assert_kv_pool_empty,
    chat_body,
    drift_state,
    headers,
    open_chat_stream,
    post,
)

pytestmark = pytest.mark.slow


def _unique_prompt(tag: str, words: int) -> str:
    # Distinct text per request, so the radix cache cannot shortcut the prefill.
    return " ".join(f"{tag}{i % 97}x{i}" for i in range(words))


class _Request(threading.Thread):
    def __init__(self, server, body):
        super().__init__(daemon=True)
        self.server, self.body, self.response = server, body, None

    def run(self):
        self.response = post(self.server, "/generate", self.body).json()


def _background_decode(server, tokens: int) -> _Request:
    body = {
        "text": "keep decoding " + uuid.uuid4().hex,
        "sampling_params": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True},
    }
    req = _Request(server, body)
    req.start()
    return req


def _wait_in_gang(server, rid: str, request: _Request, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and request.is_alive():
        gang = drift_state(server)["gang_in_flight"]
        if gang is not None and rid in gang["rids"] and gang["layers_done"] > 0:
            return True
    return False


def test_abort_mid_split_prefill_frees_kv_and_reports_abort(drift_server):
    before = drift_state(drift_server)["counters"]["aborted_mid_prefill"]
    decode = _background_decode(drift_server, tokens=1200)
    caught = 0
    for attempt in range(40):
        if not decode.is_alive():
            decode = _background_decode(drift_server, tokens=1200)
        time.sleep(0.2)  # let the decode request join the running batch
        rid = uuid.uuid4().hex
        body = {
            "rid": rid,
            "text": _unique_prompt(f"a{attempt}", 150),
            "sampling_params": {"max_new_tokens": 64, "temperature": 0},
        }
        request = _Request(drift_server, body)
        request.start()
        if _wait_in_gang(drift_server, rid, request):
            post(drift_server, "/abort_request", {"rid": rid})
            caught += 1
        request.join(timeout=60)
        assert "meta_info" in request.response, request.response
        assert request.response["meta_info"]["finish_reason"]["type"] in ("abort", "length")
        if caught >= 3:
            break
    decode.join(timeout=120)
    assert caught >= 1, "never saw a request mid-split to abort"
    after = drift_state(drift_server)["counters"]["aborted_mid_prefill"]
    assert after - before >= 1
    assert_kv_pool_empty(drift_server)


def test_client_disconnect_mid_stream_frees_kv(drift_server):
    messages = [{"role": "user", "content": _unique_prompt("d", 200)}]
    body = chat_body(messages, max_tokens=400, stream=True)
    for _ in range(3):
        with open_chat_stream(drift_server, body, timeout=60) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            for _ in range(5):
                next(lines)
        # Leaving the block closes the connection mid-stream.
    assert_kv_pool_empty(drift_server)
    assert (
        requests.get(drift_server.url + "/health", headers=headers(drift_server)).status_code == 200
    )

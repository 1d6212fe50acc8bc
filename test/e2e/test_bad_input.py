"""Bad input gets a clear 4xx error, and the server keeps serving."""

from __future__ import annotations

import pytest
import requests

from drift_sgl.tools.fuzz import HOSTILE_REQUESTS, OUT_OF_VOCAB
from e2e.client import assert_kv_pool_empty, chat, headers

pytestmark = pytest.mark.slow

GOOD_MESSAGES = [{"role": "user", "content": "hello"}]
TOO_LONG = "word " * 3000  # the tiny model's context is 2048 tokens

CHAT_CASES = {
    "malformed json": b'{"model": "tiny", "messages": [',
    "messages not a list": {"model": "tiny", "messages": "hello"},
    "max_tokens wrong type": {"model": "tiny", "messages": GOOD_MESSAGES, "max_tokens": "ten"},
    "negative max_tokens": {"model": "tiny", "messages": GOOD_MESSAGES, "max_tokens": -5},
    "huge max_tokens": {"model": "tiny", "messages": GOOD_MESSAGES, "max_tokens": 10**9},
    "prompt longer than context": {
        "model": "tiny",
        "messages": [{"role": "user", "content": TOO_LONG}],
        "max_tokens": 4,
    },
    "empty messages": {"model": "tiny", "messages": [], "max_tokens": 4},
    "temperature wrong type": {"model": "tiny", "messages": GOOD_MESSAGES, "temperature": "hot"},
}

GENERATE_CASES = {
    "malformed json": b'{"text": "hi", "sampling_params": {',
    "text wrong type": {"text": 42},
    "negative max_new_tokens": {"text": "hi", "sampling_params": {"max_new_tokens": -1}},
    "prompt longer than context": {"text": TOO_LONG, "sampling_params": {"max_new_tokens": 4}},
    "negative temperature": {"text": "hi", "sampling_params": {"temperature": -1.0}},
}


def _send(server, path: str, body) -> requests.Response:
    hdrs = {**headers(server), "Content-Type": "application/json"}
    data = body if isinstance(body, bytes) else None
    json_body = None if isinstance(body, bytes) else body
    return requests.post(server.url + path, data=data, json=json_body, headers=hdrs, timeout=60)


def _assert_clear_client_error(resp: requests.Response) -> None:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    payload = resp.json()
    message = payload.get("message") or payload.get("error") or payload.get("detail")
    assert message, payload


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_chat_bad_input_is_a_4xx_and_server_keeps_serving(drift_server, case):
    _assert_clear_client_error(_send(drift_server, "/v1/chat/completions", CHAT_CASES[case]))
    assert chat(drift_server, GOOD_MESSAGES, max_tokens=4)["choices"][0]["finish_reason"]


@pytest.mark.parametrize("case", sorted(GENERATE_CASES))
def test_generate_bad_input_is_a_4xx_and_server_keeps_serving(drift_server, case):
    _assert_clear_client_error(_send(drift_server, "/generate", GENERATE_CASES[case]))
    assert chat(drift_server, GOOD_MESSAGES, max_tokens=4)["choices"][0]["finish_reason"]


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_chat_bad_input_status_matches_sglang(drift_server, sglang_server, case):
    drift = _send(drift_server, "/v1/chat/completions", CHAT_CASES[case])
    sglang = _send(sglang_server, "/v1/chat/completions", CHAT_CASES[case])
    assert drift.status_code == sglang.status_code


@pytest.mark.parametrize("case", sorted(HOSTILE_REQUESTS))
def test_hostile_input_is_a_4xx_naming_the_field(drift_server, case):
    path, body, field = HOSTILE_REQUESTS[case]
    resp = _send(drift_server, path, body)
    _assert_clear_client_error(resp)
    assert field in resp.text, resp.text[:300]
    assert chat(drift_server, GOOD_MESSAGES, max_tokens=4)["choices"][0]["finish_reason"]


def test_hostile_stream_is_a_4xx_before_any_event(drift_server):
    body = {"model": "tiny", "prompt": [5, OUT_OF_VOCAB], "max_tokens": 2, "stream": True}
    resp = _send(drift_server, "/v1/completions", body)
    assert resp.status_code == 400, resp.text[:300]
    assert "input_ids[1]" in resp.text


def test_hostile_inputs_leave_the_kv_pool_drained(drift_server):
    for path, body, _ in HOSTILE_REQUESTS.values():
        _send(drift_server, path, body)
    assert_kv_pool_empty(drift_server)

"""Bad input gets a clear 4xx error, and the server keeps serving."""

from __future__ import annotations

import pytest
import requests

from e2e.client import chat, headers

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

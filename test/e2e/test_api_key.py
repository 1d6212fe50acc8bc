"""--api-key is enforced by drift exactly as by plain SGLang."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.slow

ROUTES = [
    ("GET", "/health", None),
    ("GET", "/v1/models", None),
    ("GET", "/server_info", None),
    ("GET", "/model_info", None),
    ("POST", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2}}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ),
]
KEYS = {"none": None, "wrong": "not-the-key", "right": "drift-test-key"}


def _status(server, method, path, body, key) -> int:
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    resp = requests.request(method, server.url + path, json=body, headers=hdrs, timeout=60)
    return resp.status_code


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_api_key_statuses_match_sglang(drift_server, sglang_server, method, path, body):
    drift = {k: _status(drift_server, method, path, body, key) for k, key in KEYS.items()}
    sglang = {k: _status(sglang_server, method, path, body, key) for k, key in KEYS.items()}
    assert drift == sglang
    assert drift["right"] == 200
    if path != "/health":
        assert drift["none"] == 401 and drift["wrong"] == 401

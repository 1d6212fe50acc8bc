"""Small HTTP helpers for end-to-end tests (real requests, no SGLang mocks)."""

from __future__ import annotations

import json
import re
from typing import Any

import requests

from drift_sgl.tools.server_process import ServerProcess


def headers(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}


def post(
    server: ServerProcess,
    path: str,
    body: Any,
    timeout: float = 120.0,
    extra_headers: dict[str, str] | None = None,
) -> requests.Response:
    sent = headers(server) | (extra_headers or {})
    return requests.post(server.url + path, json=body, headers=sent, timeout=timeout)


def get(server: ServerProcess, path: str, timeout: float = 30.0) -> requests.Response:
    return requests.get(server.url + path, headers=headers(server), timeout=timeout)


def generate_ids(server: ServerProcess, text: str, max_new_tokens: int = 16) -> list[int]:
    """Greedy /generate; returns the output token ids."""
    resp = post(
        server,
        "/generate",
        {
            "text": text,
            "sampling_params": {
                "max_new_tokens": max_new_tokens,
                "temperature": 0,
                "ignore_eos": True,
            },
        },
    )
    resp.raise_for_status()
    return resp.json()["output_ids"]


def chat_body(messages: list[dict], max_tokens: int, stream: bool = False, **extra: Any) -> dict:
    """A greedy chat-completion request body (ignore_eos: exact lengths)."""
    body = {
        "model": "tiny",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }
    if stream:
        body["stream"] = True
    return body


def chat(server: ServerProcess, messages: list[dict], max_tokens: int = 12, **extra: Any) -> dict:
    """Greedy non-streaming chat completion; returns the response JSON."""
    resp = post(server, "/v1/chat/completions", chat_body(messages, max_tokens, **extra))
    assert resp.status_code == 200, resp.text
    return resp.json()


def open_chat_stream(
    server: ServerProcess, body: dict, timeout: float = 120.0
) -> requests.Response:
    """POST a streaming chat completion; use the response as a context manager."""
    return requests.post(
        server.url + "/v1/chat/completions",
        json=body,
        headers=headers(server),
        stream=True,
        timeout=timeout,
    )


def iter_sse(resp: requests.Response):
    """Yield decoded ``data:`` payloads of a server-sent-event stream (stops at [DONE])."""
    for line in resp.iter_lines():
        if not line or not line.startswith(b"data:"):
            continue
        payload = line[len(b"data:") :].strip()
        if payload == b"[DONE]":
            return
        yield json.loads(payload)


def drift_state(server: ServerProcess) -> dict:
    """drift's report from /server_info (first DP rank)."""
    resp = get(server, "/server_info")
    resp.raise_for_status()
    return resp.json()["internal_states"][0]["drift"]


def metric(server: ServerProcess, name: str) -> float:
    """Sum of a Prometheus metric over its label sets."""
    text = get(server, "/metrics").text
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", re.M)
    values = [float(v) for v in pattern.findall(text)]
    if not values:
        raise KeyError(f"metric {name} not exported")
    return sum(values)


def assert_kv_pool_empty(server: ServerProcess) -> None:
    """After a flush, every KV slot is free and nothing is held by the radix tree."""
    server.flush_cache()
    state = drift_state(server)
    assert state["gang_in_flight"] is None
    assert state["kv_available_tokens"] == state["kv_total_tokens"], state
    assert state["kv_evictable_tokens"] == 0, state

"""Comparing drift's answers with plain SGLang's: the same request to both servers.

Greedy decoding of the tiny model is deterministic, so every field that is not
an id, a clock or a timing must be equal. Log-probabilities are compared to 3
decimals: a prefill split into layer blocks may round differently in the last
bits, never in what was sampled.
"""

from __future__ import annotations

from typing import Any

from drift_sgl.tools.server_process import ServerProcess
from e2e.client import post

#: Fields that differ between two runs of the same request on any server.
VOLATILE = frozenset(
    {
        "id",
        "rid",
        "created",
        "system_fingerprint",
        "weight_version",
        "dp_rank",
        "time_stats",
        "session_id",
        # What the radix cache held depends on each server's history, not on drift.
        "cached_tokens",
        "cached_tokens_details",
        "prompt_tokens_details",
        "cache_read_input_tokens",  # Anthropic's usage: input_tokens leave the cache out
        "input_tokens",
        "created_at",  # Ollama's API
    }
)
_VOLATILE_SUFFIXES = ("_ts", "latency", "_time", "_throughput", "_duration")


def normalized(value: Any) -> Any:
    """``value`` without volatile fields, floats rounded to 3 decimals."""
    if isinstance(value, dict):
        return {
            key: normalized(item)
            for key, item in value.items()
            if key not in VOLATILE and not key.endswith(_VOLATILE_SUFFIXES)
        }
    if isinstance(value, list | tuple):
        return [normalized(item) for item in value]
    if isinstance(value, float):
        return round(value, 3)
    return value


def answer(server: ServerProcess, path: str, body: dict, timeout: float = 120.0) -> tuple:
    """(status, normalized JSON) of one request."""
    resp = post(server, path, body, timeout=timeout)
    try:
        payload = resp.json()
    except ValueError:
        payload = resp.text
    return resp.status_code, normalized(payload)


def assert_same_answer(
    drift: ServerProcess, sglang: ServerProcess, path: str, body: dict, timeout: float = 120.0
) -> Any:
    """Send ``body`` to both servers; their normalized answers must be equal."""
    ours = answer(drift, path, body, timeout)
    theirs = answer(sglang, path, body, timeout)
    assert ours == theirs, f"{path} {body}\ndrift:  {ours}\nsglang: {theirs}"
    assert ours[0] == 200, ours
    return ours[1]

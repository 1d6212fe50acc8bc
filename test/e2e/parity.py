"""Comparing drift's answers with plain SGLang's: the same request to both servers.

Greedy decoding of the tiny model is deterministic, so every field that is not
an id, a clock or a timing must be equal: tokens, texts and finish reasons
exactly, floats (log-probabilities, hidden states, embeddings) within a small
tolerance. A prefill split into layer blocks, or one served partly from the
radix cache, rounds differently in the last bits of a half-precision model;
rounding both sides to fixed decimals is not enough, since two values a hair
apart can round to different sides of a decimal boundary.
"""

from __future__ import annotations

import math
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
#: How far two floats of the same answer may be apart (half-precision rounding).
FLOAT_TOLERANCE = 2e-2


def normalized(value: Any) -> Any:
    """``value`` without its volatile fields."""
    if isinstance(value, dict):
        return {
            key: normalized(item)
            for key, item in value.items()
            if key not in VOLATILE and not key.endswith(_VOLATILE_SUFFIXES)
        }
    if isinstance(value, list | tuple):
        return [normalized(item) for item in value]
    return value


def differences(ours: Any, theirs: Any, where: str = "") -> list[str]:
    """Where two normalized answers differ: floats within ``FLOAT_TOLERANCE``
    (relative or absolute) count as equal, everything else must be equal."""
    if isinstance(ours, float) and isinstance(theirs, int | float):
        close = math.isclose(ours, theirs, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
        return [] if close else [f"{where}: {ours} != {theirs}"]
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if ours.keys() != theirs.keys():
            return [f"{where}: keys {sorted(ours)} != {sorted(theirs)}"]
        return [d for key in ours for d in differences(ours[key], theirs[key], f"{where}.{key}")]
    if isinstance(ours, list | tuple) and isinstance(theirs, list | tuple):
        if len(ours) != len(theirs):
            return [f"{where}: {len(ours)} items != {len(theirs)}"]
        pairs = enumerate(zip(ours, theirs, strict=True))
        return [d for i, (a, b) in pairs for d in differences(a, b, f"{where}[{i}]")]
    return [] if ours == theirs else [f"{where}: {ours!r} != {theirs!r}"]


def assert_equivalent(ours: Any, theirs: Any, label: str = "") -> None:
    """Two raw answers (drift's first) are the same up to volatile fields and rounding."""
    found = differences(normalized(ours), normalized(theirs))
    assert not found, f"{label}\n" + "\n".join(found[:10]) + f"\ndrift:  {ours}\nsglang: {theirs}"


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
    assert_equivalent(ours, theirs, f"{path} {body}")
    assert ours[0] == 200, ours
    return ours[1]

"""Dozens of multi-turn clients for minutes, some dropping streams: nothing lost or leaked."""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests

from e2e.client import assert_kv_pool_empty, chat_body, drift_state, iter_sse, open_chat_stream

pytestmark = pytest.mark.slow

NUM_CLIENTS = int(os.environ.get("DRIFT_SOAK_CLIENTS", "24"))
DURATION_S = float(os.environ.get("DRIFT_SOAK_SECONDS", "120"))
DROP_PROBABILITY = 0.25


@dataclass
class ClientLog:
    completed: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)


def _one_turn(server, messages, max_tokens: int, drop_after: int | None, log: ClientLog):
    """Stream one turn; returns the reply text, or None when the client dropped it."""
    body = chat_body(messages, max_tokens, stream=True, stream_options={"include_usage": True})
    with open_chat_stream(server, body, timeout=300) as resp:
        if resp.status_code != 200:
            log.errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
            return None
        text, usage, finish = [], None, None
        for i, chunk in enumerate(iter_sse(resp)):
            if drop_after is not None and i >= drop_after:
                log.dropped += 1
                return None  # closing the response drops the stream mid-way
            if "error" in chunk:
                log.errors.append(str(chunk["error"]))
                return None
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                text.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
    if finish != "length" or usage is None or usage["completion_tokens"] != max_tokens:
        log.errors.append(f"incomplete answer: finish={finish} usage={usage}")
        return None
    log.completed += 1
    return "".join(text)


def _client(server, seed: int, deadline: float, log: ClientLog) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        messages = [{"role": "system", "content": f"agent {seed} " + "rules " * rng.randint(1, 30)}]
        for turn in range(rng.randint(2, 6)):
            if time.monotonic() >= deadline:
                return
            messages.append(
                {"role": "user", "content": f"turn {turn} " + "data " * rng.randint(1, 60)}
            )
            drop = rng.randint(1, 4) if rng.random() < DROP_PROBABILITY else None
            try:
                reply = _one_turn(server, messages, rng.randint(4, 40), drop, log)
            except requests.RequestException as err:
                log.errors.append(repr(err))
                return
            if reply is None:
                break
            messages.append({"role": "assistant", "content": reply})
            time.sleep(rng.uniform(0.0, 0.3))  # think time


def test_soak_multi_turn_clients_with_drops(drift_server):
    before = drift_state(drift_server)["counters"]
    deadline = time.monotonic() + DURATION_S
    logs = [ClientLog() for _ in range(NUM_CLIENTS)]
    threads = [
        threading.Thread(target=_client, args=(drift_server, i, deadline, logs[i]), daemon=True)
        for i in range(NUM_CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION_S + 300)
    assert not any(t.is_alive() for t in threads), "a client hung"

    errors = [e for log in logs for e in log.errors]
    completed = sum(log.completed for log in logs)
    dropped = sum(log.dropped for log in logs)
    assert errors == [], errors[:5]
    assert completed >= NUM_CLIENTS
    assert dropped >= 1
    assert drift_server.alive()
    after = drift_state(drift_server)["counters"]
    assert after["mux_steps"] > before["mux_steps"]
    assert after["gangs_merged"] > before["gangs_merged"]
    assert_kv_pool_empty(drift_server)

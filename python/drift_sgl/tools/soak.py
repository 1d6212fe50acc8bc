"""A soak: multi-turn clients for minutes, with drops, aborts and hostile requests.

``run_soak`` drives a live server with ``SoakConfig.clients`` conversations
(streamed chat turns; some dropped mid-stream), a thread that aborts
``/generate`` requests in flight, and a trickle of hostile requests
(``fuzz.HOSTILE_REQUESTS``), while a sampler records the server's memory (the
RSS of its whole process tree) and its KV pool. A healthy server answers every
turn it was not told to drop, answers every hostile request with a 4xx, and
keeps its memory flat: ``SoakReport.rss_growth`` compares the last quarter of
the run with the second (the first is warm-up: caches, allocator pools).

test/e2e/test_soak.py runs two minutes of it in ``make test``; bench/soak.py
runs it for as long as asked and records the samples.
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

from drift_sgl.loadgen.clients import chat_stream_body
from drift_sgl.tools.fuzz import HOSTILE_REQUESTS


@dataclass(frozen=True)
class SoakConfig:
    clients: int = 24
    duration_s: float = 120.0
    #: Share of turns the client drops after a few stream events.
    drop_probability: float = 0.25
    #: Seconds between two /generate requests aborted in flight.
    abort_every_s: float = 3.0
    #: Seconds between two hostile requests.
    hostile_every_s: float = 2.0
    #: Seconds between two samples of memory and KV pool.
    sample_every_s: float = 5.0


@dataclass
class SoakReport:
    completed: int = 0
    dropped: int = 0
    aborted: int = 0
    hostile_sent: int = 0
    errors: list[str] = field(default_factory=list)
    #: One dict per sample: t_s, rss_mb, kv_used_tokens, running.
    samples: list[dict[str, float]] = field(default_factory=list)

    def rss_growth(self) -> float | None:
        """Median RSS of the last quarter over that of the second; None if too few samples."""
        rss = [s["rss_mb"] for s in self.samples if s.get("rss_mb") is not None]
        if len(rss) < 8:
            return None
        quarter = len(rss) // 4
        return statistics.median(rss[-quarter:]) / statistics.median(rss[quarter : 2 * quarter])

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["errors"] = self.errors[:20]
        out["error_count"] = len(self.errors)
        out["rss_growth"] = self.rss_growth()
        return out


class _SharedLog:
    """The report, written by every thread of the soak."""

    def __init__(self, report: SoakReport) -> None:
        self.report, self.lock = report, threading.Lock()

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self.report, name, getattr(self.report, name) + 1)

    def error(self, message: str) -> None:
        with self.lock:
            self.report.errors.append(message)


def _post(url: str, path: str, body: Any, headers: dict, **kwargs: Any) -> requests.Response:
    return requests.post(url + path, json=body, headers=headers, **kwargs)


def _chat_turn(
    url: str,
    headers: dict,
    messages: list,
    max_tokens: int,
    drop_after: int | None,
    log: _SharedLog,
) -> str | None:
    """One streamed turn; the reply, or None when dropped or failed."""
    body = chat_stream_body("default", messages, max_tokens)
    with _post(url, "/v1/chat/completions", body, headers, stream=True, timeout=300) as resp:
        if resp.status_code != 200:
            log.error(f"chat HTTP {resp.status_code}: {resp.text[:200]}")
            return None
        text, usage, events = [], None, 0
        for line in resp.iter_lines():
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            events += 1
            if drop_after is not None and events > drop_after:
                log.count("dropped")
                return None  # leaving the block closes the connection mid-stream
            chunk = json.loads(payload)
            if "error" in chunk:
                log.error(f"chat stream error: {chunk['error']}")
                return None
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                text.append(choice["delta"].get("content") or "")
    if usage is None or usage["completion_tokens"] != max_tokens:
        log.error(f"incomplete answer: usage={usage}")
        return None
    log.count("completed")
    return "".join(text)


def _client(
    url: str, headers: dict, seed: int, config: SoakConfig, deadline: float, log: _SharedLog
):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        messages = [{"role": "system", "content": f"agent {seed} " + "rules " * rng.randint(1, 30)}]
        for turn in range(rng.randint(2, 6)):
            if time.monotonic() >= deadline:
                return
            words = "data " * rng.randint(1, 60)
            messages.append({"role": "user", "content": f"turn {turn} {words}"})
            drop = rng.randint(1, 4) if rng.random() < config.drop_probability else None
            try:
                reply = _chat_turn(url, headers, messages, rng.randint(4, 40), drop, log)
            except requests.RequestException as err:
                log.error(f"chat: {err!r}")
                return
            if reply is None:
                break
            messages.append({"role": "assistant", "content": reply})
            time.sleep(rng.uniform(0.0, 0.3))  # think time


def _aborter(url: str, headers: dict, config: SoakConfig, deadline: float, log: _SharedLog) -> None:
    """Start a long /generate and abort it by id while it runs."""
    while time.monotonic() < deadline:
        rid = f"soak-abort-{uuid.uuid4().hex}"
        body = {
            "text": "a request that will be aborted " * 4,
            "rid": rid,
            "sampling_params": {"max_new_tokens": 400, "ignore_eos": True},
        }
        result: dict[str, Any] = {}

        def run(body: dict = body, result: dict = result) -> None:
            try:
                result["resp"] = _post(url, "/generate", body, headers, timeout=300)
            except requests.RequestException as err:
                result["error"] = repr(err)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        time.sleep(0.5)
        _post(url, "/abort_request", {"rid": rid}, headers, timeout=30)
        worker.join(timeout=300)
        resp = result.get("resp")
        if resp is None:
            log.error(f"aborted request: {result.get('error', 'no answer')}")
        elif resp.status_code >= 500:
            log.error(f"aborted request: HTTP {resp.status_code}: {resp.text[:200]}")
        else:
            log.count("aborted")
        time.sleep(config.abort_every_s)


def _hostile(url: str, headers: dict, config: SoakConfig, deadline: float, log: _SharedLog) -> None:
    for name, (path, body, _) in itertools.cycle(HOSTILE_REQUESTS.items()):
        if time.monotonic() >= deadline:
            return
        try:
            resp = _post(url, path, body, headers, timeout=60)
            if not 400 <= resp.status_code < 500:
                log.error(f"hostile {name!r}: HTTP {resp.status_code}: {resp.text[:200]}")
        except requests.RequestException as err:
            log.error(f"hostile {name!r}: {err!r}")
        log.count("hostile_sent")
        time.sleep(config.hostile_every_s)


def tree_rss_mb(pid: int) -> float | None:
    """RSS of a process and all its descendants, in MiB (None once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def _sample(url: str, headers: dict, pid: int | None, start: float) -> dict[str, float]:
    sample: dict[str, Any] = {"t_s": round(time.monotonic() - start, 1)}
    sample["rss_mb"] = None if pid is None else tree_rss_mb(pid)
    try:
        info = requests.get(url + "/server_info", headers=headers, timeout=30).json()
        drift = info["internal_states"][0].get("drift", {})
        sample["kv_used_tokens"] = drift["kv_total_tokens"] - drift["kv_available_tokens"]
        sample["kv_evictable_tokens"] = drift["kv_evictable_tokens"]
    except (requests.RequestException, KeyError, IndexError, ValueError):
        sample["kv_used_tokens"] = None
    return sample


def run_soak(
    url: str, config: SoakConfig, server_pid: int | None = None, headers: dict | None = None
) -> SoakReport:
    """Run the soak against ``url``; ``server_pid`` (the launcher's pid) for RSS samples."""
    headers = dict(headers or {})
    report = SoakReport()
    log = _SharedLog(report)
    start = time.monotonic()
    deadline = start + config.duration_s
    threads = [
        threading.Thread(target=_client, args=(url, headers, i, config, deadline, log))
        for i in range(config.clients)
    ]
    threads.append(threading.Thread(target=_aborter, args=(url, headers, config, deadline, log)))
    threads.append(threading.Thread(target=_hostile, args=(url, headers, config, deadline, log)))
    for thread in threads:
        thread.daemon = True
        thread.start()
    while time.monotonic() < deadline:
        report.samples.append(_sample(url, headers, server_pid, start))
        time.sleep(min(config.sample_every_s, max(0.0, deadline - time.monotonic())))
    for thread in threads:
        thread.join(timeout=300)
        if thread.is_alive():
            report.errors.append(f"{thread.name} hung past the end of the soak")
    report.samples.append(_sample(url, headers, server_pid, start))
    return report

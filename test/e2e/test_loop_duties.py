"""Duties of SGLang's loop that drift's loop keeps, on a server pair of their own.

Both servers run with priority scheduling, at most 3 running requests, a
256-token prefill budget, a 4096-token context and float32, so that priority
pre-emption happens and long prompts are prefilled in chunks (drift: one gang
of layer blocks per 256-token chunk). The drift server also has a short
liveness timeout and two test faults (drift_sgl.scheduler.faults): requests
whose id starts with ``held-`` are held back, to prove the watchdog, and a
forward over a request whose id starts with ``faulty-`` raises, to prove that
a failing batch ends only its own requests.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from drift_sgl.scheduler.faults import ENV_VAR as FAULTS_ENV_VAR
from e2e.client import (
    assert_kv_pool_empty,
    chat_body,
    drift_state,
    iter_sse,
    open_chat_stream,
    post,
)
from e2e.parity import assert_equivalent
from e2e.servers import drift_server_process, serve, sglang_server_process

pytestmark = pytest.mark.slow

PREFILL_BUDGET = 256
DUTY_ARGS = (
    "--max-total-tokens", "8192",
    "--max-prefill-tokens", str(PREFILL_BUDGET),
    "--context-length", "4096",
    "--enable-priority-scheduling",
    "--max-running-requests", "3",
    "--enable-cache-report",
    # Concurrent batches differ between the two schedulers; in float16 their
    # rounding can flip a near-tied greedy choice, in float32 it does not.
    "--dtype", "float32",
)  # fmt: skip
STALL_TIMEOUT_S = 3
HELD = "held-"
FAULTY = "faulty-"


def _env(**extra: str) -> dict[str, str]:
    # The tiny model's config says 2048 positions; SGLang wants this to go past it.
    return dict(os.environ, SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN="1", **extra)


@pytest.fixture(scope="module")
def duty_drift(tiny_model_dir, server_logs_dir):
    server = drift_server_process(
        tiny_model_dir,
        server_logs_dir / "drift-duties.log",
        *DUTY_ARGS,
        "--drift-tpot-slo-ms", "1",
        "--drift-stall-timeout-s", str(STALL_TIMEOUT_S),
        env=_env(**{FAULTS_ENV_VAR: f"hold-admission={HELD},raise-in-forward={FAULTY}"}),
    )  # fmt: skip
    yield from serve(server, timeout_s=600)


@pytest.fixture(scope="module")
def duty_sglang(tiny_model_dir, server_logs_dir):
    server = sglang_server_process(
        tiny_model_dir, server_logs_dir / "sglang-duties.log", *DUTY_ARGS, env=_env()
    )
    yield from serve(server, timeout_s=600)


def generate(server, text, tokens=16, timeout=300, **extra):
    body = {
        "text": text,
        "sampling_params": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True},
        **extra,
    }
    resp = post(server, "/generate", body, timeout=timeout)
    return resp.status_code, resp.json()


def long_prompt(tag: str, words: int = 200) -> str:
    """About 7 tokens a word with the tiny tokenizer: 200 words are ~1400 tokens."""
    return " ".join(f"{tag}{i}" for i in range(words))


# --- long prompts --------------------------------------------------------------


def test_prompt_longer_than_the_prefill_budget_is_served_in_chunks(duty_drift, duty_sglang):
    prompt = long_prompt("long")
    before = drift_state(duty_drift)["counters"]["gangs_started"]
    status, first = generate(duty_drift, prompt)
    assert status == 200, first
    prompt_tokens = first["meta_info"]["prompt_tokens"]
    assert prompt_tokens > 4 * PREFILL_BUDGET
    # One gang per chunk of the prefill budget.
    chunks = drift_state(duty_drift)["counters"]["gangs_started"] - before
    assert chunks >= -(-prompt_tokens // PREFILL_BUDGET)
    assert_equivalent(first, generate(duty_sglang, prompt)[1])

    # The next turn finds the whole prompt in the radix cache.
    status, second = generate(duty_drift, prompt + " and one more turn")
    assert status == 200
    assert second["meta_info"]["cached_tokens"] >= prompt_tokens - 1
    assert_equivalent(second, generate(duty_sglang, prompt + " and one more turn")[1])


def test_abort_of_a_prompt_prefilled_in_chunks(duty_drift):
    """Aborted while one of its chunks is in flight: SGLang's chunked-abort duty
    waits for that chunk, then frees the request's KV."""
    background = ThreadPoolExecutor(1)
    # A decode beside the gangs: prefill then advances a layer block per step.
    decode = background.submit(generate, duty_drift, "keep decoding", 600)
    time.sleep(0.5)
    rid = "chunked-" + uuid.uuid4().hex
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(generate, duty_drift, long_prompt("abort", 400), rid=rid)
        deadline = time.monotonic() + 60
        seen = False
        while time.monotonic() < deadline and not future.done():
            gang = drift_state(duty_drift)["gang_in_flight"]
            if gang is not None and rid in gang["rids"]:
                seen = True
                post(duty_drift, "/abort_request", {"rid": rid})
                break
        _, body = future.result(timeout=120)
    assert seen, "the chunked prompt was never seen in a gang"
    assert body["meta_info"]["finish_reason"]["type"] == "abort", body
    assert decode.result(timeout=300)[0] == 200
    background.shutdown()
    assert generate(duty_drift, "still serving")[0] == 200
    assert_kv_pool_empty(duty_drift)


# --- priorities ----------------------------------------------------------------


def run_priorities(server):
    """Three long low-priority requests fill the 3 running slots; a high one arrives."""
    with ThreadPoolExecutor(4) as pool:
        low = [pool.submit(generate, server, f"low {i} " * 10, 150, priority=0) for i in range(3)]
        time.sleep(1.0)
        high = pool.submit(generate, server, "high priority " * 5, 10, priority=100)
        return [f.result() for f in low], high.result()


def test_priority_preemption(duty_drift, duty_sglang):
    low, high = run_priorities(duty_drift)
    sglang_low, sglang_high = run_priorities(duty_sglang)
    assert high[0] == 200
    assert_equivalent(high[1], sglang_high[1])
    retractions = [body["meta_info"]["num_retractions"] for _, body in low]
    assert max(retractions) >= 1, "no low-priority request was pre-empted"
    assert max(body["meta_info"]["num_retractions"] for _, body in sglang_low) >= 1
    for (status, body), (_, theirs) in zip(low, sglang_low, strict=True):
        assert status == 200 and len(body["output_ids"]) == 150
        if body["meta_info"]["num_retractions"] == 0 == theirs["meta_info"]["num_retractions"]:
            # A pre-empted request recomputes its KV: a near-tie may then flip,
            # in SGLang as in drift; the others must match exactly.
            assert body["output_ids"] == theirs["output_ids"]


# --- liveness --------------------------------------------------------------------


def test_watchdog_ends_a_request_the_loop_never_starts(duty_drift):
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(generate, duty_drift, "never admitted", 8, rid=HELD + uuid.uuid4().hex)
        time.sleep(0.5)
        normal = pool.submit(generate, duty_drift, "admitted as usual", 40)
        assert normal.result()[0] == 200
        status, body = held.result()
    assert status == 503, body
    assert "liveness watchdog" in body["message"]
    assert "--drift-stall-timeout-s" in body["message"]
    assert drift_state(duty_drift)["counters"]["stalls"] >= 1
    assert "liveness watchdog" in duty_drift.log_path.read_text(errors="replace")
    assert_kv_pool_empty(duty_drift)


# --- pause with retraction ---------------------------------------------------------


def test_pause_retract_with_a_prefill_in_flight(duty_drift):
    """SGLang retracts the running batch on pause; drift first finishes the gang in
    flight, which would otherwise keep running on freed KV."""
    caught = 0
    for trial in range(4):
        with ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(generate, duty_drift, f"t{trial} r{i} " + "pad " * (40 + 20 * i), 40)
                for i in range(2)
            ]
            time.sleep(0.3)
            futures += [
                pool.submit(generate, duty_drift, f"t{trial} late{i} " + "pad " * 80, 30)
                for i in range(3)
            ]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not drift_state(duty_drift)["gang_in_flight"]:
                pass
            caught += drift_state(duty_drift)["gang_in_flight"] is not None
            assert post(duty_drift, "/pause_generation", {"mode": "retract"}).status_code == 200
            time.sleep(0.3)
            assert post(duty_drift, "/continue_generation", {}).status_code == 200
            results = [f.result() for f in futures]
        assert [len(body["output_ids"]) for _, body in results] == [40, 40, 30, 30, 30]
    assert caught >= 1, "never paused with a gang in flight"
    assert duty_drift.alive()
    assert_kv_pool_empty(duty_drift)


# --- mixed traffic -------------------------------------------------------------------


MIXED = {
    "regex": {"text": "yes or no:", "sampling_params": {"regex": "(yes|no)"}},
    "json": {
        "text": "json:",
        "sampling_params": {"json_schema": '{"type": "object", "properties": {"a": {}}}'},
    },
    "plain": {"text": "plain request " * 8, "sampling_params": {"ignore_eos": True}},
    "n2": {"text": "two samples", "sampling_params": {"n": 2, "ignore_eos": True}},
    "long": {"text": long_prompt("mixed", 150), "sampling_params": {"ignore_eos": True}},
    "logprobs": {"text": "with logprobs", "return_logprob": True, "top_logprobs_num": 2},
}


def mixed_body(name: str, copy: int) -> dict:
    body = dict(MIXED[name])
    body["text"] = f"{copy} {body['text']}"
    params = {"max_new_tokens": 24, "temperature": 0}
    body["sampling_params"] = {**params, **body.get("sampling_params", {})}
    return body


ABORTED = {("plain", 2), ("long", 2)}


def run_mixed(server, disturb: bool) -> dict:
    """Every kind of request, three copies each, at once; with ``disturb``, some are
    aborted mid-way and some streaming clients go away."""
    bodies = {(name, copy): mixed_body(name, copy) for name in MIXED for copy in range(3)}
    results: dict = {}

    def send(key):
        body = dict(bodies[key])
        if disturb and key in ABORTED:
            body["rid"] = f"mixed-{key[0]}-{uuid.uuid4().hex}"
            threading.Timer(0.8, post, (server, "/abort_request", {"rid": body["rid"]})).start()
            body["sampling_params"] = {**body["sampling_params"], "max_new_tokens": 400}
        results[key] = post(server, "/generate", body, timeout=300).json()

    def drop_stream():
        messages = [{"role": "user", "content": long_prompt("drop", 60)}]
        with open_chat_stream(server, chat_body(messages, 300, stream=True)) as resp:
            events = iter_sse(resp)
            for _ in range(3):
                next(events)

    with ThreadPoolExecutor(len(bodies) + 2) as pool:
        futures = [pool.submit(send, key) for key in bodies]
        if disturb:
            futures += [pool.submit(drop_stream) for _ in range(2)]
        for future in futures:
            future.result(timeout=300)
    return results


def test_mixed_traffic_with_aborts_and_disconnects(duty_drift, duty_sglang):
    ours = run_mixed(duty_drift, disturb=True)
    theirs = run_mixed(duty_sglang, disturb=False)
    for key, body in ours.items():
        if key in ABORTED:
            assert body["meta_info"]["finish_reason"]["type"] in ("abort", "length"), body
        else:
            assert_equivalent(body, theirs[key], key)
    assert duty_drift.alive()
    assert_kv_pool_empty(duty_drift)


# --- fault isolation -------------------------------------------------------------


def test_a_failing_forward_ends_only_its_own_requests(duty_drift, duty_sglang):
    """A forward that raises for one request (the test fault) ends that request
    with a 500 that says what failed; requests decoding beside it, and a long
    prompt prefilled in chunks behind it, give plain SGLang's tokens."""
    prompts = {f"bystander {i}": 48 for i in range(2)}
    before = drift_state(duty_drift)["counters"]
    with ThreadPoolExecutor(4) as pool:
        bystanders = {p: pool.submit(generate, duty_drift, p, n) for p, n in prompts.items()}
        time.sleep(0.5)  # the bystanders decode while the faulty requests prefill
        short = pool.submit(generate, duty_drift, "doomed", 8, rid=FAULTY + uuid.uuid4().hex)
        chunked = pool.submit(
            generate, duty_drift, long_prompt("doomed"), 8, rid=FAULTY + uuid.uuid4().hex
        )
        failed = [short.result(), chunked.result()]
        ours = {p: f.result() for p, f in bystanders.items()}
    for status, body in failed:
        assert status == 500, body
        assert "failed while running" in body["message"], body
        assert "InjectedFault" in body["message"], body
    for prompt, (status, body) in ours.items():
        assert status == 200, body
        assert_equivalent(body, generate(duty_sglang, prompt, prompts[prompt])[1], prompt)
    after = drift_state(duty_drift)["counters"]
    assert after["failed_requests"] - before["failed_requests"] == 2
    assert "serving the others" in duty_drift.log_path.read_text(errors="replace")
    assert duty_drift.alive()
    assert_kv_pool_empty(duty_drift)

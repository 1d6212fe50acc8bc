"""drift with SGLang's radix cache off: what that mode allows (input embeddings) and
what must not change (answers under concurrency)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from e2e.client import assert_kv_pool_empty, drift_state
from e2e.conversations import answers, run_conversations
from e2e.parity import assert_same_answer
from e2e.servers import drift_server_process, serve, sglang_server_process

pytestmark = pytest.mark.slow

# bfloat16: SGLang 0.5.23 hands input embeddings to the model as bfloat16 (a float16
# model then fails in its first matmul, in SGLang as in drift).
ARGS = ("--disable-radix-cache", "--max-total-tokens", "4096", "--dtype", "bfloat16")


@pytest.fixture(scope="module")
def no_cache_pair(tiny_model_dir, server_logs_dir):
    drift = drift_server_process(
        tiny_model_dir, server_logs_dir / "drift-no-cache.log", *ARGS, "--drift-tpot-slo-ms", "1"
    )
    sglang = sglang_server_process(tiny_model_dir, server_logs_dir / "sglang-no-cache.log", *ARGS)
    for _ in serve(drift):
        for _ in serve(sglang):
            yield drift, sglang


def test_input_embeddings(no_cache_pair, tiny_model_dir):
    """SGLang's layer-split forward never passes input embeddings to the model; drift
    runs such a batch as one ordinary extend, so the answer is SGLang's."""
    drift, sglang = no_cache_pair
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    table = weights["model.embed_tokens.weight"].to(torch.float32)
    embeds = (table[[5, 17, 42, 99, 7]] * 1.5).tolist()  # not any token's embedding
    body = {
        "input_embeds": embeds,
        "sampling_params": {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True},
    }
    out = assert_same_answer(drift, sglang, "/generate", body)
    assert len(out["output_ids"]) == 12


def test_conversations_match_sglang(no_cache_pair):
    drift, sglang = no_cache_pair
    before = drift_state(drift)["counters"]["mux_steps"]
    assert answers(run_conversations(drift, num=4, turns=3)) == answers(
        run_conversations(sglang, num=4, turns=3)
    )
    assert drift_state(drift)["counters"]["mux_steps"] > before
    assert_kv_pool_empty(drift)

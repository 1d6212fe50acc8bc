"""Embedding and reward models only prefill: the launcher serves them with SGLang's
own scheduler, unchanged, and says so; their answers equal plain SGLang's."""

from __future__ import annotations

import pytest

from e2e.parity import assert_same_answer
from e2e.servers import drift_server_process, serve, sglang_server_process

pytestmark = pytest.mark.slow

ARGS = ("--is-embedding", "--max-total-tokens", "2048")


@pytest.fixture(scope="module")
def embedding_pair(tiny_model_dir, server_logs_dir):
    drift = drift_server_process(tiny_model_dir, server_logs_dir / "drift-embedding.log", *ARGS)
    sglang = sglang_server_process(tiny_model_dir, server_logs_dir / "sglang-embedding.log", *ARGS)
    for _ in serve(drift):
        for _ in serve(sglang):
            yield drift, sglang


def test_embeddings_equal_sglangs(embedding_pair):
    drift, sglang = embedding_pair
    body = {"model": "tiny", "input": ["hello world", "the quick brown fox"]}
    out = assert_same_answer(drift, sglang, "/v1/embeddings", body)
    assert len(out["data"]) == 2 and len(out["data"][0]["embedding"]) == 64


def test_the_launcher_says_sglang_serves_it(embedding_pair):
    drift, _ = embedding_pair
    log = drift.log_path.read_text(errors="replace")
    assert "is an embedding or reward model" in log
    assert "SGLang's own scheduler serves it" in log
    assert "drift: serving with partition backend" not in log  # no DriftScheduler started

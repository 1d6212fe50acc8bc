"""Generated requests, valid to hostile, against the shared drift server.

drift_sgl.tools.fuzz draws the requests (hypothesis, fixed seed: every run
sends the same ones); bench/fuzz.py runs longer sessions with fresh seeds.
"""

from __future__ import annotations

import json

import pytest

from drift_sgl.tools.fuzz import duplicate_rid_burst, fuzz
from e2e.client import assert_kv_pool_empty, headers

pytestmark = pytest.mark.slow

EXAMPLES = 300


def test_fuzzed_requests_keep_the_invariants(drift_server, tiny_model_dir):
    """No 5xx, no answer later than a minute, the server alive, the KV pool drained."""
    vocab_size = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    report = fuzz(drift_server.url, vocab_size, EXAMPLES, seed=0, headers=headers(drift_server))
    assert report.requests >= EXAMPLES
    # Both halves of the strategy are exercised: served requests and refused ones.
    assert report.statuses[200] >= EXAMPLES // 5, report.as_dict()
    assert report.statuses[400] >= EXAMPLES // 5, report.as_dict()
    assert_kv_pool_empty(drift_server)


def test_concurrent_duplicates_of_a_request_id(drift_server):
    statuses = duplicate_rid_burst(drift_server.url, copies=4, headers=headers(drift_server))
    assert all(status < 500 for status in statuses), statuses
    assert 200 in statuses, statuses
    assert_kv_pool_empty(drift_server)

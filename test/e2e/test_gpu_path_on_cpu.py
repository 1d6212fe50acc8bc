"""The scheduler's GPU code path, end to end on a CPU.

``--drift-partition cpu-streams`` runs everything the green-context backend
runs except the green contexts themselves: a stream pair per split, launches
in stream scopes with cross-stream waits, completion through events, and
SGLang's per-split decode machinery (``enable_pdmux``: one decode attention
backend per split, selected every step) fed with drift's streams. Outputs
must stay token-identical to plain SGLang's.
"""

from __future__ import annotations

import json

import pytest

from e2e.client import assert_kv_pool_empty, drift_state, generate_ids
from e2e.conversations import answers, run_conversations

pytestmark = pytest.mark.slow


def test_server_reports_the_stream_pair_backend(cpu_streams_server):
    state = drift_state(cpu_streams_server)
    assert state["partition_backend"] == "cpu-streams"
    assert state["concurrent"] is True
    splits = state["splits"]
    assert splits[0][1] == 0 and splits[-1][0] == 0
    assert all(p > 0 and d > 0 for p, d in splits[1:-1])
    # SGLang built one decode attention backend per split from drift's groups.
    assert state["sglang_decode_backends"] == len(splits)


@pytest.mark.parametrize("prompt", ["hello world", "The quick brown fox jumps. " * 8])
def test_single_request_matches_sglang(cpu_streams_server, sglang_server, prompt):
    ours = generate_ids(cpu_streams_server, prompt, 24)
    assert ours == generate_ids(sglang_server, prompt, 24)


def test_concurrent_conversations_match_sglang_and_multiplex(cpu_streams_server, sglang_server):
    before = drift_state(cpu_streams_server)["counters"]
    ours = run_conversations(cpu_streams_server, num=6, turns=4)
    after = drift_state(cpu_streams_server)["counters"]
    theirs = run_conversations(sglang_server, num=6, turns=4)

    assert answers(ours) == answers(theirs)
    # Decode steps and prefill blocks ran in the same step, on different splits'
    # streams, and gangs merged through their completion events.
    assert after["mux_steps"] > before["mux_steps"]
    assert after["gangs_merged"] > before["gangs_merged"]
    assert after["planner_errors"] == before["planner_errors"]
    assert_kv_pool_empty(cpu_streams_server)


def test_timeline_records_both_phases(cpu_streams_server, server_logs_dir):
    run_conversations(cpu_streams_server, num=3, turns=2)
    summary = drift_state(cpu_streams_server)["timeline"]
    assert summary["clock"] == "host" and summary["spans"] > 0
    path = server_logs_dir / "cpu-streams-timeline.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    phases = {r["phase"] for r in records}
    assert phases == {"decode", "prefill"}
    for record in records:
        assert record["end_ms"] >= record["start_ms"]
        assert record.get("layers", 1) >= 1
    # The CPU shims run the phases one after the other: nothing overlaps.
    assert all(r["overlap_ms"] == 0 for r in records if r["phase"] == "prefill")
    assert summary["prefill_overlapping_decode_ms"] == 0

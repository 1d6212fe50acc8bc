"""Dozens of multi-turn clients for minutes, with drops, aborts and hostile
requests (drift_sgl.tools.soak): nothing lost, refused wrongly or leaked."""

from __future__ import annotations

import os

import pytest

from drift_sgl.tools.soak import SoakConfig, run_soak
from e2e.client import assert_kv_pool_empty, drift_state, headers

pytestmark = pytest.mark.slow

CONFIG = SoakConfig(
    clients=int(os.environ.get("DRIFT_SOAK_CLIENTS", "24")),
    duration_s=float(os.environ.get("DRIFT_SOAK_SECONDS", "120")),
)


def test_soak_multi_turn_clients_with_drops_aborts_and_hostile_requests(drift_server):
    before = drift_state(drift_server)["counters"]
    report = run_soak(drift_server.url, CONFIG, drift_server.proc.pid, headers(drift_server))
    assert report.errors == [], report.errors[:5]
    assert report.completed >= CONFIG.clients
    assert report.dropped >= 1
    assert report.aborted >= 1
    assert report.hostile_sent >= 1
    assert all(sample["rss_mb"] for sample in report.samples), report.samples[:3]
    assert drift_server.alive()
    after = drift_state(drift_server)["counters"]
    assert after["mux_steps"] > before["mux_steps"]
    assert after["gangs_merged"] > before["gangs_merged"]
    assert_kv_pool_empty(drift_server)

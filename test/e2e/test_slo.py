"""SLO classes and overload shedding on a real drift server (the shared one).

The shared server runs the SLO planner with --drift-tpot-slo-ms 1,
--drift-overload shed and the classes of conftest.SLO_CLASSES.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from drift_sgl.mux.decision_log import read_decision_log, replay
from e2e.client import chat_body, drift_state, generate_ids, headers, post
from e2e.conversations import run_conversations
from e2e.servers import decision_log_path


def chat_with_class(
    server, slo_class: str | None, max_tokens: int = 8, extra: dict | None = None
) -> requests.Response:
    extra = ({} if slo_class is None else {"x-slo-class": slo_class}) | (extra or {})
    body = chat_body([{"role": "user", "content": "Say something short."}], max_tokens)
    return requests.post(
        server.url + "/v1/chat/completions",
        json=body,
        headers=headers(server) | extra,
        timeout=120,
    )


def test_server_reports_the_slo_planner_and_its_targets(drift_server):
    state = drift_state(drift_server)
    assert state["policy"] == "SloPlanner"
    slo = state["slo"]
    assert slo["tpot_ms"] == 1.0 and slo["ttft_ms"] is None
    assert slo["overload"] == "shed"
    assert slo["classes"]["doomed"] == {"ttft_ms": 0.001, "tpot_ms": 1.0}
    assert slo["classes"]["relaxed"] == {"ttft_ms": 600000.0, "tpot_ms": 1000.0}


def test_a_request_that_cannot_meet_its_ttft_is_shed_with_a_clear_reason(drift_server):
    before = drift_state(drift_server)["counters"]["shed_requests"]
    resp = post(
        drift_server,
        "/generate",
        {
            "text": "A request that is already late.",
            "sampling_params": {"max_new_tokens": 8, "temperature": 0},
            "slo": {"class": "doomed"},
        },
    )
    assert resp.status_code == 429, resp.text
    assert resp.headers["retry-after"] == "1"
    assert "time-to-first-token target cannot be met" in resp.text
    assert "--drift-overload shed" in resp.text
    assert drift_state(drift_server)["counters"]["shed_requests"] == before + 1


def test_shed_request_on_the_openai_api_gets_an_error_not_a_hang(drift_server):
    resp = chat_with_class(drift_server, "doomed")
    assert resp.status_code == 429, resp.text
    assert resp.headers["retry-after"] == "1"
    assert "time-to-first-token target cannot be met" in resp.text


def test_a_shed_stream_ends_with_an_error_event_coded_429(drift_server):
    # SGLang's streams send their 200 before the first output; an abort after
    # that (a shed) is an error event in SGLang's stream format.
    body = chat_body([{"role": "user", "content": "Stream something."}], 8) | {"stream": True}
    with requests.post(
        drift_server.url + "/v1/chat/completions",
        json=body,
        headers=headers(drift_server) | {"x-slo-class": "doomed"},
        timeout=60,
        stream=True,
    ) as resp:
        text = resp.text
    assert resp.status_code == 200, text
    events = [line for line in text.splitlines() if line.startswith("data: ")]
    error = json.loads(events[0].removeprefix("data: "))["error"]
    assert error["code"] == 429, text
    assert "time-to-first-token target cannot be met" in error["message"]


def test_other_classes_are_served_and_the_gateways_routing_key_is_not_a_class(drift_server):
    for slo_class in ("relaxed", None):
        resp = chat_with_class(drift_server, slo_class, extra={"x-smg-routing-key": "doomed"})
        assert resp.status_code == 200, (slo_class, resp.text)
        assert resp.json()["choices"][0]["finish_reason"] in ("length", "stop")


def test_a_stated_ttft_beats_the_class_and_a_header_beats_the_body(drift_server):
    # The "relaxed" class would wait ten minutes; the request's own 1 us cannot be met.
    resp = chat_with_class(drift_server, "relaxed", extra={"x-slo-ttft-ms": "0.001"})
    assert resp.status_code == 429, resp.text
    assert "time-to-first-token target cannot be met" in resp.text
    resp = post(
        drift_server,
        "/generate",
        {
            "text": "On time.",
            "sampling_params": {"max_new_tokens": 4, "temperature": 0},
            "slo": {"class": "doomed"},
        },
        extra_headers={"x-slo-class": "relaxed"},
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("extra", "body", "named"),
    [
        ({"x-slo-class": "no-such-class"}, None, "unknown SLO class 'no-such-class'"),
        ({"x-slo-ttft-ms": "soon"}, None, "x-slo-ttft-ms"),
        ({"x-slo-tpot-ms": "-1"}, None, "x-slo-tpot-ms"),
        ({}, {"tpot_ms": "fast"}, "tpot_ms must be a number"),
        ({}, [1], "body field 'slo'"),
    ],
)
def test_junk_slos_are_refused_with_a_400_naming_them(drift_server, extra, body, named):
    payload = chat_body([{"role": "user", "content": "Hi"}], 4)
    if body is not None:
        payload["slo"] = body
    resp = requests.post(
        drift_server.url + "/v1/chat/completions",
        json=payload,
        headers=headers(drift_server) | extra,
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    assert named in resp.text


def test_shedding_loses_nothing_else_under_a_mixed_burst(drift_server):
    """Doomed requests end at once; the others all complete, with the same output as alone."""
    alone = generate_ids(drift_server, "The quick brown fox", 12)
    with ThreadPoolExecutor(8) as pool:
        doomed = [pool.submit(chat_with_class, drift_server, "doomed") for _ in range(4)]
        served = [
            pool.submit(generate_ids, drift_server, "The quick brown fox", 12) for _ in range(4)
        ]
        convs = pool.submit(run_conversations, drift_server, 3, 3)
        assert all(f.result().status_code == 429 for f in doomed)
        assert all(f.result() == alone for f in served)
        assert all(len(conv) == 3 for conv in convs.result())


def test_the_servers_decisions_are_the_simulators_on_the_same_states(drift_server, server_logs_dir):
    """The server logged every planner call of this session (--drift-decision-log)
    with the state its loop built. Asked again on those states, the way the
    simulator's engine asks it, the planner decides every one alike: the server's
    loop adds nothing of its own to a decision (the step itself is shared)."""
    path = str(decision_log_path(server_logs_dir))
    _, calls = read_decision_log(path)
    calls = list(calls)
    assert any(c.decision.admit for c in calls), "no admission was logged"
    assert any(c.call == "replan" for c in calls), "no re-plan was logged"
    assert any(c.decision.shed for c in calls), "no shed was logged"
    count, differ = replay(path)
    assert count >= len(calls) and differ == [], differ[:3]


def test_the_planner_never_failed_on_this_server(drift_server):
    # A planner error is survived (the step falls back) but is a bug: none may occur.
    assert drift_state(drift_server)["counters"]["planner_errors"] == 0

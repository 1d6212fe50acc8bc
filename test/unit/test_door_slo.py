"""drift_sgl.door.slo: a request's own SLO, from headers or the body to the scheduler."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

from drift_sgl.door.body import BodyCheckMiddleware
from drift_sgl.door.checks import RequestRejected
from drift_sgl.door.slo import (
    CARRIER_KEY,
    RequestedSlo,
    attach,
    headers_from_body_field,
    requested_slo,
)
from drift_sgl.policy.slo import SloTable, SloTarget
from drift_sgl.scheduler.slo_view import SloView

CLASSES = ("interactive", "batch")


def test_no_slo_headers_is_none():
    assert requested_slo({"x-smg-routing-key": "interactive"}, CLASSES) is None


def test_headers_give_the_targets_and_the_class():
    asked = requested_slo(
        {"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "12.5", "x-slo-class": " batch "}, CLASSES
    )
    assert asked == RequestedSlo(slo_class="batch", ttft_ms=500.0, tpot_ms=12.5)


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"x-slo-ttft-ms": "fast"}, "x-slo-ttft-ms"),
        ({"x-slo-ttft-ms": "0"}, "x-slo-ttft-ms"),
        ({"x-slo-tpot-ms": "-3"}, "x-slo-tpot-ms"),
        ({"x-slo-tpot-ms": "nan"}, "x-slo-tpot-ms"),
        ({"x-slo-tpot-ms": "inf"}, "x-slo-tpot-ms"),
        ({"x-slo-class": "gold"}, "unknown SLO class 'gold'"),
    ],
)
def test_junk_headers_are_refused_naming_the_header(headers, named):
    with pytest.raises(RequestRejected, match=named):
        requested_slo(headers, CLASSES)


def test_an_unknown_class_names_the_known_ones():
    with pytest.raises(RequestRejected, match="batch, interactive"):
        requested_slo({"x-slo-class": "gold"}, CLASSES)
    with pytest.raises(RequestRejected, match="no --drift-slo-classes"):
        requested_slo({"x-slo-class": "gold"}, ())


def test_the_body_field_stands_for_the_headers():
    assert headers_from_body_field({"ttft_ms": 500, "class": "batch"}) == {
        "x-slo-ttft-ms": "500.0",
        "x-slo-class": "batch",
    }


@pytest.mark.parametrize(
    "value",
    [5, "fast", {"ttft": 5}, {"ttft_ms": "5"}, {"ttft_ms": True}, {"tpot_ms": -1}, {"class": 3}],
)
def test_a_junk_body_field_is_refused(value):
    with pytest.raises(RequestRejected, match="body field 'slo'"):
        headers_from_body_field(value)


def test_attach_puts_the_targets_in_every_prompts_sampling_params():
    asked = RequestedSlo(ttft_ms=500.0)
    one = SimpleNamespace(sampling_params=None)
    attach(one, asked)
    assert one.sampling_params["custom_params"][CARRIER_KEY]["ttft_ms"] == 500.0
    batch = SimpleNamespace(sampling_params=[{"custom_params": {"k": 1}}, {}])
    attach(batch, asked)
    assert batch.sampling_params[0]["custom_params"]["k"] == 1
    assert all(CARRIER_KEY in row["custom_params"] for row in batch.sampling_params)
    junk = SimpleNamespace(sampling_params={"custom_params": "junk"})
    attach(junk, asked)  # left for SGLang to refuse with its own message
    assert junk.sampling_params == {"custom_params": "junk"}


def test_the_carrier_round_trips_and_ignores_junk():
    asked = RequestedSlo(slo_class="batch", ttft_ms=500.0, tpot_ms=None)
    assert RequestedSlo.from_custom_params({CARRIER_KEY: asked.as_custom_param()}) == asked
    assert RequestedSlo.from_custom_params(None) is None
    assert RequestedSlo.from_custom_params({CARRIER_KEY: "x"}) is None
    assert RequestedSlo.from_custom_params({CARRIER_KEY: {"ttft_ms": -1}}) == RequestedSlo()


def _request(sampling_params: dict | None) -> SimpleNamespace:
    return SimpleNamespace(
        rid="r",
        origin_input_ids=[1, 2, 3],
        sampling_params=SimpleNamespace(
            custom_params=None if sampling_params is None else sampling_params,
            max_new_tokens=8,
        ),
        time_stats=SimpleNamespace(wait_queue_entry_time=1.0),
    )


def test_the_scheduler_takes_stated_targets_over_the_class_over_the_default():
    table = SloTable(
        default=SloTarget(ttft_ms=1000.0, tpot_ms=50.0),
        classes={"batch": SloTarget(ttft_ms=30000.0, tpot_ms=50.0)},
    )
    view = SloView(table)
    plain = view.of(_request(None))
    assert (plain.deadline_ms, plain.tpot_ms) == (2000.0, 50.0)
    classed = view.of(_request({CARRIER_KEY: {"class": "batch"}}))
    assert classed.deadline_ms == 31000.0
    stated = view.of(_request({CARRIER_KEY: {"class": "batch", "tpot_ms": 20.0}}))
    assert (stated.deadline_ms, stated.tpot_ms) == (31000.0, 20.0)


def _through_middleware(body: dict, headers: dict[str, str] | None = None):
    seen = {}

    async def app(scope, receive, send):
        seen.update({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    raw = orjson.dumps(body)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/generate",
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    messages = [{"type": "http.request", "body": raw, "more_body": False}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(BodyCheckMiddleware(app, models={})(scope, receive, send))
    return sent[0]["status"], seen, b"".join(m.get("body", b"") for m in sent[1:])


def test_the_middleware_turns_the_body_field_into_headers_a_header_wins():
    status, seen, _ = _through_middleware(
        {"text": "hi", "slo": {"ttft_ms": 500, "tpot_ms": 40}}, {"x-slo-tpot-ms": "10"}
    )
    assert status == 200
    assert seen["x-slo-ttft-ms"] == "500.0" and seen["x-slo-tpot-ms"] == "10"


def test_the_middleware_refuses_a_junk_body_field_with_a_400():
    status, seen, payload = _through_middleware({"text": "hi", "slo": {"ttft_ms": "soon"}})
    assert status == 400 and not seen
    assert b"ttft_ms must be a number" in payload

"""The multi-turn load generator (drift_sgl.loadgen): stream arithmetic, replay, report.

The TTFT/TPOT arithmetic is checked against scripted event streams with a
scripted clock; the HTTP client against a scripted aiohttp server; the replay
loop against a scripted client. Real servers are driven in test/e2e/test_bench.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest

from drift_sgl.loadgen.clients import OpenAIChatClient
from drift_sgl.loadgen.replay import Limits, ReplayResult, TurnOutcome, replay
from drift_sgl.loadgen.report import REPORT_KEYS, summarize_replay, turn_rows
from drift_sgl.loadgen.stream import StreamedAnswer, read_chat_stream
from drift_sgl.loadgen.text import TextMaker
from drift_sgl.sim.trace import Turn


def sse(*events: object) -> list[bytes]:
    """Event-stream lines as a server sends them (each event followed by a blank line)."""
    lines = []
    for event in events:
        payload = event if isinstance(event, str) else json.dumps(event)
        lines += [f"data: {payload}\n".encode(), b"\n"]
    return lines


def delta(text: str | None = None, role: str | None = None) -> dict:
    d = {k: v for k, v in (("content", text), ("role", role)) if v is not None}
    return {"choices": [{"index": 0, "delta": d}]}


def usage(prompt: int, completion: int, cached: int | None = None) -> dict:
    u: dict = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"choices": [], "usage": u}


class ScriptedClock:
    """Each read returns the next scripted time (the time the next line 'arrives')."""

    def __init__(self, times: list[float]) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


async def lines_of(items: list[bytes]):
    for item in items:
        yield item


def read(lines: list[bytes], times: list[float], sent: float = 1.0) -> StreamedAnswer:
    return asyncio.run(read_chat_stream(lines_of(lines), sent, ScriptedClock(times)))


# ----------------------------------------------------------------- stream


def test_ttft_tpot_and_gaps_from_a_scripted_stream():
    lines = sse(
        delta(role="assistant", text=""),  # the role-only first event carries no token
        delta("Hel"),
        delta("lo"),
        delta(" world"),
        usage(prompt=50, completion=4, cached=32),
        "[DONE]",
    )
    # The clock is read once per data event except [DONE].
    answer = read(lines, [1.10, 1.25, 1.30, 1.55, 1.56])
    assert answer.ok and answer.text == "Hello world"
    assert answer.ttft_s == pytest.approx(0.25)
    # The server counted 4 tokens over 3 events: TPOT spreads the span over 3 gaps.
    assert answer.tpot_s == pytest.approx((1.55 - 1.25) / 3)
    assert answer.gaps_s == pytest.approx([0.05, 0.25])
    assert (answer.prompt_tokens, answer.cached_tokens, answer.output_tokens) == (50, 32, 4)


def test_without_usage_the_events_are_the_tokens():
    answer = read(sse(delta("a"), delta("b"), delta("c"), "[DONE]"), [2.0, 2.1, 2.4])
    assert answer.output_tokens == 3
    assert answer.tpot_s == pytest.approx(0.2)
    assert answer.prompt_tokens is None and answer.cached_tokens is None


def test_a_one_token_answer_has_no_tpot():
    answer = read(sse(delta("a"), usage(5, 1), "[DONE]"), [1.5, 1.6])
    assert answer.ttft_s == pytest.approx(0.5) and answer.tpot_s is None


@pytest.mark.parametrize(
    ("lines", "times", "message"),
    [
        (sse(delta("a"), {"error": {"message": "overloaded"}}), [1, 2], "server error: overloaded"),
        (sse(delta("a"), delta("b")), [1, 2], "ended before [DONE]"),
        ([b"data: {not json\n"], [1], "malformed event"),
        (sse([1, 2], "[DONE]"), [1], "unexpected event"),
        (sse(delta(role="assistant"), usage(3, 0), "[DONE]"), [1, 2], "no text"),
    ],
)
def test_a_bad_stream_is_an_error_not_an_exception(lines, times, message):
    answer = read(lines, times)
    assert not answer.ok and message in answer.error


def test_comments_and_keepalives_are_skipped():
    lines = [b": keep-alive\n", *sse(delta("x")), b"event: ping\n", *sse("[DONE]")]
    assert read(lines, [1.2]).text == "x"


# ----------------------------------------------------------------- client


def test_openai_client_against_a_scripted_server():
    from aiohttp import web

    seen: list[dict] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        if body["messages"][-1]["content"] == "refuse":
            return web.json_response({"error": {"message": "shed: TTFT SLO"}}, status=503)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in (delta("one"), delta(" two"), usage(7, 2, cached=4)):
            await asyncio.sleep(0.05)
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def scenario() -> tuple[StreamedAnswer, StreamedAnswer]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        client = OpenAIChatClient(f"http://127.0.0.1:{port}/", "m", api_key="k", timeout_s=10)
        try:
            ok = await client.answer([{"role": "user", "content": "hi"}], 2, time.perf_counter)
            refused = await client.answer(
                [{"role": "user", "content": "refuse"}], 2, time.perf_counter
            )
        finally:
            await client.close()
            await runner.cleanup()
        return ok, refused

    ok, refused = asyncio.run(scenario())
    assert ok.ok and ok.text == "one two" and ok.output_tokens == 2 and ok.cached_tokens == 4
    assert 0.04 <= ok.ttft_s < 2 and 0.04 <= ok.tpot_s < 2
    assert not refused.ok and refused.error.startswith("HTTP 503") and "shed" in refused.error
    body = seen[0]["body"]
    assert seen[0]["auth"] == "Bearer k"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 2 and body["ignore_eos"] is True and body["model"] == "m"


def test_a_server_that_cannot_be_reached_gives_an_error_answer():
    async def scenario() -> StreamedAnswer:
        from drift_sgl.tools.server_process import free_port

        client = OpenAIChatClient(f"http://127.0.0.1:{free_port()}", "m", timeout_s=5)
        try:
            return await client.answer([{"role": "user", "content": "x"}], 1, time.perf_counter)
        finally:
            await client.close()

    answer = asyncio.run(scenario())
    assert not answer.ok and "Connect" in answer.error


# ----------------------------------------------------------------- replay


class FakeText:
    def text(self, key: str, tokens: int) -> str:
        return f"<{key}:{tokens}>"


class ScriptedClient:
    """Answers after ``latency_s`` with 'ans(<last user message>)'; fails on request."""

    def __init__(self, latency_s: float = 0.02, fail: set[str] | None = None) -> None:
        self.latency_s = latency_s
        self.fail = fail or set()
        self.calls: list[tuple[list[dict], int, float]] = []

    async def answer(self, messages, max_tokens, clock):
        sent = clock()
        self.calls.append((messages, max_tokens, sent))
        await asyncio.sleep(self.latency_s)
        last = messages[-1]["content"]
        if last in self.fail:
            return StreamedAnswer(sent_s=sent, error="HTTP 500: boom")
        done = clock()
        return StreamedAnswer(sent_s=sent, token_times_s=(done,), text=f"ans({last})",
                              output_tokens=max_tokens)  # fmt: skip


def turn(session: str, k: int, delay: float, prefix: str | None = None) -> Turn:
    return Turn(session, k, delay, 10 + k, 3 + k, prefix, 5 if prefix else 0)


def run_replay(turns, client, limits: Limits | None = None) -> ReplayResult:
    return asyncio.run(replay(turns, client, FakeText(), limits))


def test_sessions_are_closed_loops_carrying_their_history():
    turns = [turn("a", 0, 0.0, "sys"), turn("a", 1, 0.1, "sys"), turn("b", 0, 0.05)]
    client = ScriptedClient(latency_s=0.05)
    result = run_replay(turns, client)
    assert [(o.session, o.turn) for o in result.outcomes] == [("a", 0), ("b", 0), ("a", 1)]
    by_key = {(o.session, o.turn): o for o in result.outcomes}
    a1_messages = next(m for m, _, _ in client.calls if m[-1]["content"] == "<a/1:11>")
    assert a1_messages == [
        {"role": "system", "content": "<prefix/sys:5>"},
        {"role": "user", "content": "<a/0:10>"},
        {"role": "assistant", "content": "ans(<a/0:10>)"},
        {"role": "user", "content": "<a/1:11>"},
    ]
    # Turn 1 waits for turn 0's answer plus its think time; session b starts on time.
    a0, a1 = by_key[("a", 0)].answer, by_key[("a", 1)].answer
    assert a1.sent_s >= a0.token_times_s[-1] + 0.1
    assert by_key[("b", 0)].answer.sent_s == pytest.approx(0.05, abs=0.04)
    assert [max_tokens for _, max_tokens, _ in client.calls] == [3, 3, 4]
    assert result.not_sent == 0


def test_a_failed_turn_ends_its_session_only():
    turns = [turn("a", 0, 0.0), turn("a", 1, 0.0), turn("b", 0, 0.0), turn("b", 1, 0.0)]
    result = run_replay(turns, ScriptedClient(fail={"<a/0:10>"}))
    assert sorted((o.session, o.turn, o.answer.ok) for o in result.outcomes) == [
        ("a", 0, False),
        ("b", 0, True),
        ("b", 1, True),
    ]
    assert result.not_sent == 1


def test_limits_bound_requests_and_time():
    turns = [turn(f"s{i}", k, 0.0 if k == 0 else 0.05) for i in range(4) for k in range(5)]
    assert len(run_replay(turns, ScriptedClient(), Limits(max_requests=7)).outcomes) == 7
    # Sessions start at 0, 0.3, ...: only those starting within 0.25 s send anything, and a
    # session thinking when the time is up stops instead of sleeping on.
    spread = [turn(f"s{i}", k, 0.3 * i if k == 0 else 10.0) for i in range(4) for k in range(2)]
    started = time.perf_counter()
    result = run_replay(spread, ScriptedClient(), Limits(duration_s=0.25))
    assert time.perf_counter() - started < 2
    assert [(o.session, o.turn) for o in result.outcomes] == [("s0", 0)]
    with pytest.raises(ValueError, match="max_requests"):
        Limits(max_requests=0)


# ----------------------------------------------------------------- report


def outcome(session: str, sent: float, ttft: float, tpot: float, n: int, cached=None, error=None):
    times = tuple(sent + ttft + i * tpot for i in range(n)) if error is None else ()
    answer = StreamedAnswer(sent_s=sent, token_times_s=times, text="x", prompt_tokens=100,
                            cached_tokens=cached, output_tokens=n, error=error)  # fmt: skip
    return TurnOutcome(session, 0, n, answer)


def test_report_counts_failures_as_missed_slos():
    outcomes = (
        outcome("a", 0.0, 0.1, 0.01, 11, cached=50),  # good
        outcome("b", 0.5, 0.9, 0.01, 11, cached=0),  # TTFT missed (900 ms > 500 ms)
        outcome("c", 1.0, 0.1, 0.05, 3, cached=100),  # TPOT missed (50 ms > 20 ms)
        outcome("d", 1.0, 0, 0, 0, error="HTTP 503: shed"),
    )
    report = summarize_replay(ReplayResult(outcomes, 5, 2.0), ttft_slo_ms=500, tpot_slo_ms=20)
    assert set(REPORT_KEYS) <= set(report)
    assert report["requests"] == 4 and report["failed_requests"] == 1 and report["not_sent"] == 1
    assert report["good_requests"] == 1 and report["slo_attainment"] == pytest.approx(0.25)
    assert report["ttft_attainment"] == pytest.approx(0.5)
    assert report["tpot_attainment"] == pytest.approx(0.5)
    assert report["tbt_attainment"] == pytest.approx(0.5)
    assert report["mean_tpot_slo_attainment"] == pytest.approx(0.25)
    assert report["prefix_hit_rate"] == pytest.approx(150 / 300)
    # Span: first send (a, 0.0) to last token (b: 0.5 + 0.9 + 10 * 0.01 = 1.5 s).
    assert report["duration_s"] == pytest.approx(1.5)
    assert report["goodput_rps"] == pytest.approx(1 / 1.5)
    assert report["throughput_tok_s"] == pytest.approx(25 / 1.5)
    assert report["errors"] == {"HTTP 503: shed": 1}
    assert [row["error"] for row in turn_rows(ReplayResult(outcomes, 5, 2.0))][
        -1
    ] == "HTTP 503: shed"


def test_report_judges_each_turn_by_its_worst_gaps_not_its_mean():
    steady = outcome("a", 0.0, 0.1, 0.01, 21)
    # One 150 ms stall in 20 gaps: mean TPOT (17 ms) meets 20 ms, the P99 gap does not.
    times = steady.answer.token_times_s
    stalled_times = (*times[:10], *(t + 0.14 for t in times[10:]))
    stalled = TurnOutcome("b", 0, 21, replace(steady.answer, token_times_s=stalled_times))
    report = summarize_replay(ReplayResult((steady, stalled), 2, 1.0), 500, 20)
    assert report["tpot_attainment"] == 1.0 and report["mean_tpot_slo_attainment"] == 1.0
    assert report["tbt_attainment"] == 0.5 and report["slo_attainment"] == 0.5
    assert report["tbt_p99_ms"] > 100


def test_report_without_cache_figures_or_answers():
    result = ReplayResult((outcome("a", 0.0, 0.1, 0.01, 5),), 1, 1.0)
    assert summarize_replay(result, 500, 20)["prefix_hit_rate"] is None
    failed = ReplayResult((outcome("a", 0.0, 0, 0, 0, error="boom"),), 1, 1.0)
    report = summarize_replay(failed, 500, 20)
    assert report["goodput_rps"] == 0 and report["slo_attainment"] == 0
    assert report["ttft_p99_ms"] is None and report["failed_requests"] == 1


# ------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def text_maker() -> TextMaker:
    from drift_sgl.tools.tiny_model import build_tokenizer

    return TextMaker(build_tokenizer(512))


@pytest.mark.parametrize("tokens", [1, 7, 64, 500])
def test_made_up_text_has_the_asked_token_count(text_maker, tokens):
    text = text_maker.text(f"s/{tokens}", tokens)
    assert abs(text_maker.count(text) - tokens) <= 1


def test_made_up_text_is_deterministic_per_key(text_maker):
    assert text_maker.text("prefix/sys", 40) == text_maker.text("prefix/sys", 40)
    assert text_maker.text("conv-1/0", 40) != text_maker.text("conv-2/0", 40)
    with pytest.raises(ValueError, match="tokens must be >= 1"):
        text_maker.text("x", 0)

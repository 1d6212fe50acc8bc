"""The figures of a replay, with the simulator's definitions and keys.

Answered turns become the simulator's ``RequestRecord``s, so goodput, SLO
attainment, throughput, percentiles and the prefix hit rate come from the
same ``drift_sgl.sim.metrics.summarize`` (its docstring defines them), which
counts a failed turn as a request that met neither target. A turn's gaps
between tokens are those between the stream's content events, as a client
sees them. Real runs add what a simulation cannot have: failures and their
reasons, answers shorter than asked (a server that ignored ``ignore_eos``),
and the P99 of all gaps pooled (``itl_p99_ms``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from drift_sgl.loadgen.replay import ReplayResult, TurnOutcome
from drift_sgl.sim.engine import RequestRecord
from drift_sgl.sim.metrics import percentile, summarize

#: The keys every report has (bench/goodput.py and the tests rely on them).
REPORT_KEYS = (
    "requests",
    "good_requests",
    "failed_requests",
    "goodput_rps",
    "slo_attainment",
    "ttft_attainment",
    "tbt_attainment",
    "tpot_attainment",
    "mean_tpot_slo_attainment",
    "throughput_tok_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "tbt_p50_ms",
    "tbt_p99_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "itl_p99_ms",
    "prefix_hit_rate",
    "duration_s",
)


def record(outcome: TurnOutcome) -> RequestRecord:
    """A successful turn as the simulator's metrics see a request (times in ms)."""
    a = outcome.answer
    gaps_ms = [gap * 1000 for gap in a.gaps_s]
    return RequestRecord(
        rid=f"{outcome.session}/{outcome.turn}",
        arrival_ms=a.sent_s * 1000,
        first_token_ms=a.token_times_s[0] * 1000,
        last_token_ms=a.token_times_s[-1] * 1000,
        prompt_tokens=a.prompt_tokens or 0,
        cached_tokens=a.cached_tokens or 0,
        output_tokens=a.output_tokens,
        decode_tokens=max(a.output_tokens - 1, 0),
        instance="server",
        tbt_p99_ms=percentile(gaps_ms, 99) if gaps_ms else None,
    )


def summarize_replay(
    result: ReplayResult, ttft_slo_ms: float, tpot_slo_ms: float
) -> dict[str, Any]:
    """The report's figures (``REPORT_KEYS`` and a few more) for one replay."""
    answered = [o for o in result.outcomes if o.answer.ok]
    failed = [o for o in result.outcomes if not o.answer.ok]
    extra = {
        "failed_requests": len(failed),
        "not_sent": result.not_sent,
        "wall_s": round(result.wall_s, 3),
        "errors": dict(Counter(o.answer.error for o in failed).most_common(5)),
        "short_outputs": sum(o.answer.output_tokens < o.expected_output_tokens for o in answered),
    }
    if not answered:
        empty: dict[str, Any] = dict.fromkeys(REPORT_KEYS)
        empty.update(dict.fromkeys(("good_requests", "goodput_rps", "throughput_tok_s"), 0))
        empty.update(dict.fromkeys((k for k in REPORT_KEYS if k.endswith("attainment")), 0.0))
        return _ordered({**empty, "requests": len(result.outcomes), **extra})
    records = [record(o) for o in answered]
    summary = summarize(records, ttft_slo_ms, tpot_slo_ms, gpus=1, failed=len(failed)).to_json()
    figures = {key: summary[key] for key in REPORT_KEYS if key in summary}
    gaps = [gap for o in answered for gap in o.answer.gaps_s]
    reported = [o for o in answered if o.answer.cached_tokens is not None]
    figures.update(
        itl_p99_ms=round(percentile(gaps, 99) * 1000, 3),
        # None when the server does not report cached tokens (SGLang needs
        # --enable-cache-report): 0 would claim that nothing was reused.
        prefix_hit_rate=summary["prefix_hit_rate"] if reported else None,
        duration_s=summary["sim_duration_s"],
    )
    return _ordered({**figures, **extra})


def _ordered(report: dict[str, Any]) -> dict[str, Any]:
    """``REPORT_KEYS`` first, in their order, then the rest."""
    first = {key: report[key] for key in REPORT_KEYS}
    return {**first, **{k: v for k, v in report.items() if k not in first}}


def turn_rows(result: ReplayResult) -> list[dict[str, Any]]:
    """One JSON row per sent turn (``--per-turn``); times in ms since the replay started."""
    rows = []
    for o in result.outcomes:
        a = o.answer
        ttft, tpot = a.ttft_s, a.tpot_s
        rows.append(
            {
                "session": o.session,
                "turn": o.turn,
                "sent_ms": round(a.sent_s * 1000, 3),
                "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
                "tpot_ms": None if tpot is None else round(tpot * 1000, 3),
                "prompt_tokens": a.prompt_tokens,
                "cached_tokens": a.cached_tokens,
                "output_tokens": a.output_tokens,
                "expected_output_tokens": o.expected_output_tokens,
                "error": a.error,
            }
        )
    return rows

"""What a run achieved: SLO attainment, goodput, latency percentiles, prefix reuse.

Per request: TTFT = first token - arrival; TBT = the 99th percentile of the
gaps between its consecutive tokens (what a user watching the stream feels
at its worst: one decode step that carries a long prefill chunk stalls every
running stream, and a mean over the request hides it); mean TPOT = (last token
- first token) / (output tokens - 1). A one-token request has no gaps and
meets any TBT or TPOT target. A request is *good* when its TTFT and its TBT
meet the targets (the time-between-tokens target is ``tpot_slo_ms``, the
server's ``--drift-tpot-slo-ms``, which the planner holds for every step).
``mean_tpot_slo_attainment`` is the older figure, TTFT and *mean* TPOT, kept
for comparison with earlier results. Rates are over the run's span, from the
first arrival to the last completion: goodput = good requests / span,
throughput = output tokens / span. ``*_p50_ms``/``*_p99_ms`` are percentiles
over requests of each request's figure. The prefix hit rate is cached prompt
tokens / all prompt tokens, counted when each prefill is admitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from drift_sgl.sim.engine import RequestRecord, percentile

__all__ = ["Summary", "meets_slo", "percentile", "summarize"]


@dataclass(frozen=True)
class Summary:
    """The figures of one run (``to_json`` gives the CLI's keys)."""

    requests: int
    good_requests: int
    goodput_rps: float
    goodput_rps_per_gpu: float
    slo_attainment: float
    ttft_attainment: float
    tbt_attainment: float
    tpot_attainment: float
    mean_tpot_slo_attainment: float
    throughput_tok_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tbt_p50_ms: float
    tbt_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    prefix_hit_rate: float
    sim_duration_s: float

    def to_json(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _within(value_ms: float | None, target_ms: float) -> bool:
    """A per-token figure meets its target; None (a one-token request) always does."""
    return value_ms is None or value_ms <= target_ms


def meets_slo(record: RequestRecord, ttft_slo_ms: float, tbt_slo_ms: float) -> bool:
    """A good request: its TTFT and its TBT (P99 gap between tokens) meet the targets."""
    return record.ttft_ms <= ttft_slo_ms and _within(record.tbt_p99_ms, tbt_slo_ms)


def summarize(
    records: Sequence[RequestRecord],
    ttft_slo_ms: float,
    tpot_slo_ms: float,
    gpus: int,
    failed: int = 0,
) -> Summary:
    """Figures of ``records`` against the two targets, for a cluster of ``gpus`` GPUs.

    ``failed`` requests (a real server's errors; they have no token times)
    count as requests that met neither target; every other figure is over
    ``records``.
    """
    if not records:
        raise ValueError("no requests to summarize")
    ttfts = [r.ttft_ms for r in records]
    tpots = [t for r in records if (t := r.tpot_ms) is not None]
    tbts = [t for r in records if (t := r.tbt_p99_ms) is not None]
    ttft_ok = [r.ttft_ms <= ttft_slo_ms for r in records]
    tbt_ok = [_within(r.tbt_p99_ms, tpot_slo_ms) for r in records]
    tpot_ok = [_within(r.tpot_ms, tpot_slo_ms) for r in records]
    good = sum(meets_slo(r, ttft_slo_ms, tpot_slo_ms) for r in records)
    good_by_mean = sum(a and b for a, b in zip(ttft_ok, tpot_ok, strict=True))
    start = min(r.arrival_ms for r in records)
    end = max(r.last_token_ms for r in records)
    span_s = max(end - start, 1e-9) / 1000
    prompt = sum(r.prompt_tokens for r in records)
    n = len(records) + failed
    goodput = good / span_s
    return Summary(
        requests=n,
        good_requests=good,
        goodput_rps=goodput,
        goodput_rps_per_gpu=goodput / gpus,
        slo_attainment=good / n,
        ttft_attainment=sum(ttft_ok) / n,
        tbt_attainment=sum(tbt_ok) / n,
        tpot_attainment=sum(tpot_ok) / n,
        mean_tpot_slo_attainment=good_by_mean / n,
        throughput_tok_s=sum(r.output_tokens for r in records) / span_s,
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        tbt_p50_ms=percentile(tbts, 50),
        tbt_p99_ms=percentile(tbts, 99),
        tpot_p50_ms=percentile(tpots, 50),
        tpot_p99_ms=percentile(tpots, 99),
        prefix_hit_rate=sum(r.cached_tokens for r in records) / prompt if prompt else 0.0,
        sim_duration_s=span_s,
    )

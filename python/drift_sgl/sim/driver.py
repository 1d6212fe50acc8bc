"""Replays a trace's sessions against a simulated cluster.

Turn 0 of a session arrives at its ``delay_s``; turn k > 0 arrives ``delay_s``
after turn k-1's last token, so a slow server delays the rest of the session.
Turn k's prompt is the chain of segments ``[shared:<id>] + [<s>:i0, <s>:o0,
..., <s>:i<k>]`` (see ``drift_sgl.sim.cache``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from drift_sgl.latency.model import LatencyModel
from drift_sgl.sim.engine import Request, RequestRecord, SimConfig, SimError, Simulator
from drift_sgl.sim.engine import stable_hash as _hash
from drift_sgl.sim.metrics import meets_slo
from drift_sgl.sim.policies import build_cluster
from drift_sgl.sim.trace import Turn, prompt_tokens, sessions


@dataclass(frozen=True)
class SimRun:
    """The outcome of one simulation."""

    records: tuple[RequestRecord, ...]
    #: Tokens generated: first tokens (by prefill) plus one per request per decode step.
    tokens_generated: int
    #: New (uncached) prompt tokens the prefills computed.
    prefill_tokens: int
    #: Highest KV occupancy of each pool (radix caches, then decode-only pools).
    max_kv_used: tuple[int, ...]
    kv_capacity_tokens: int
    end_ms: float
    #: Tokens evicted from the radix caches (all instances).
    evicted_tokens: int = 0
    #: Requests in the workload (all of them finish unless the run stopped early).
    total_requests: int = 0
    #: Requests known to miss an SLO when the run stopped (0 for a complete run).
    known_failures: int = 0
    #: Stopped once its SLO attainment could no longer reach ``stop_below``.
    stopped_early: bool = False


class _Stop(Exception):
    """Enough requests have failed: the attainment is known to be below the bound."""


def _requests(session: Sequence[Turn], ttft_slo_ms: float) -> list[tuple[Request, float]]:
    """Each turn as a request, with its delay in ms (arrival times are set on arrival)."""
    first = session[0]
    segments: list[tuple[str, int]] = []
    if first.shared_prefix_id is not None:
        segments.append((f"shared:{first.shared_prefix_id}", first.shared_prefix_tokens))
    name = first.session
    out = []
    for k, turn in enumerate(session):
        prompt = (*segments, (f"{name}:i{k}", turn.new_input_tokens))
        req = Request(
            rid=f"{name}#{k}",
            session=name,
            turn=k,
            segments=prompt,
            out_segment=(f"{name}:o{k}", turn.output_tokens),
            prompt_tokens=prompt_tokens(session, k),
            output_tokens=turn.output_tokens,
            arrival_ms=0.0,
            deadline_ms=ttft_slo_ms,
            group=_hash(prompt[0][0]),
        )
        out.append((req, turn.delay_s * 1000.0))
        segments = [*prompt, req.out_segment]
    return out


def simulate(
    turns: Sequence[Turn],
    config: SimConfig,
    latency: LatencyModel,
    stop_below: float | None = None,
) -> SimRun:
    """Run every turn of ``turns`` to completion; raises ``SimError`` if it cannot.

    With ``stop_below``, the run stops as soon as so many requests have missed
    an SLO (TTFT: no first token by the deadline; TBT: at the end) that the
    attainment must end below ``stop_below``: overloaded runs in a goodput
    search would otherwise spend most of the time on a queue that only grows.
    """
    sim = Simulator()
    by_session = [_requests(s, config.ttft_slo_ms) for s in sessions(turns)]
    need = max(r.kv_need(r.prompt_tokens) for s in by_session for r, _ in s)
    if need > config.kv_capacity_tokens:
        raise SimError(
            f"a request needs {need} KV tokens (prompt + output) but the KV capacity is "
            f"{config.kv_capacity_tokens} tokens; raise --kv-capacity-tokens"
        )
    records: list[RequestRecord] = []
    lookup = {s[0][0].session: s for s in by_session}
    total = sum(len(s) for s in by_session)
    allowed = total if stop_below is None else total - math.ceil(stop_below * total - 1e-9)
    failed: set[str] = set()

    def fail(req: Request) -> None:
        failed.add(req.rid)
        if len(failed) > allowed:
            raise _Stop

    def check_ttft(req: Request) -> None:
        if req.first_token_ms is None and req.rid not in failed:
            fail(req)

    def arrive(req: Request) -> None:
        req.arrival_ms = sim.now
        req.deadline_ms = sim.now + config.ttft_slo_ms
        cluster.submit(req)
        if stop_below is not None:
            sim.at(req.deadline_ms + 1e-6, lambda: check_ttft(req))

    def on_finish(req: Request, now: float) -> None:
        assert req.first_token_ms is not None and req.last_token_ms is not None
        records.append(
            RequestRecord(
                rid=req.rid,
                arrival_ms=req.arrival_ms,
                first_token_ms=req.first_token_ms,
                last_token_ms=req.last_token_ms,
                prompt_tokens=req.prompt_tokens,
                cached_tokens=req.cached_tokens,
                output_tokens=req.output_tokens,
                decode_tokens=req.decode_tokens,
                instance=req.instance,
                tbt_p99_ms=req.tbt_p99_ms,
            )
        )
        good = meets_slo(records[-1], config.ttft_slo_ms, config.tpot_slo_ms)
        if stop_below is not None and not good and req.rid not in failed:
            fail(req)
        k = req.turn + 1
        chain = lookup[req.session]
        if k < len(chain):
            follower, delay = chain[k]
            sim.at(now + delay, lambda: arrive(follower))

    cluster = build_cluster(sim, config, latency, on_finish)
    for chain in by_session:
        first, offset = chain[0]
        sim.at(offset, lambda r=first: arrive(r))
    try:
        sim.run()
    except _Stop:
        pass
    else:
        if len(records) != total:
            unfinished = total - len(records)
            raise SimError(f"simulation stalled: {unfinished} of {total} requests unfinished")
    batches = [i.batch for i in cluster.front] + [d.batch for d in cluster.decoders]
    return SimRun(
        records=tuple(sorted(records, key=lambda r: (r.arrival_ms, r.rid))),
        tokens_generated=len(records) + sum(b.tokens for b in batches),
        prefill_tokens=sum(i.prefill_tokens for i in cluster.front),
        max_kv_used=tuple(i.cache.max_used for i in cluster.front)
        + tuple(d.max_used for d in cluster.decoders),
        kv_capacity_tokens=config.kv_capacity_tokens,
        end_ms=sim.now,
        evicted_tokens=sum(i.cache.evicted_tokens for i in cluster.front),
        total_requests=total,
        known_failures=len(failed),
        stopped_early=len(records) < total,
    )

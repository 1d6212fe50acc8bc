"""The SLO planner: split, prefill layers and admission from the latency model.

Every step (docs/dispatcher.md walks through it):
  1. **Split.** Decode gets the smallest share whose worst-case step time (the
     co-run guard included) meets the tightest running TPOT target; prefill gets
     the rest. Without a target, decode gets the smallest share that is as fast
     as the whole device would be with a prefill beside it. If no share meets
     the target, decode gets the largest mixed share and prefill still advances.
  2. **Admission** (no gang in flight). Waiting requests come in deadline order
     (earliest TTFT deadline first). One joins the new gang if the gang, with it,
     still completes before every member's deadline, if the token budget and
     the free KV allow, and, beside decode, if one layer of the gang stays
     within the TPOT target (a block is at least one layer). A request whose
     prefix group is being computed by this gang for the first time waits for
     the next gang, which finds that prefix cached. Requests that cannot meet
     their TTFT even alone are "late": with ``overload="serve"`` they are
     admitted, best-effort, only when no request that can still make it is
     waiting, unless one is ``max_lateness_ms`` past its deadline: then the
     overdue go first (lateness is bounded, not starvation); with ``"shed"``
     they are returned in ``MuxDecision.shed`` for the scheduler to end.
  3. **Pre-emption** (a gang in flight). A waiting request that would miss its
     deadline behind the gang, but meets it if it runs now, and is short (less
     than half the gang's remaining time), starts a gang of its own that runs
     first, unless that would make the gang in flight miss a deadline it could
     still meet. Pre-emption does not nest.
  4. **Layers.** Beside a decode step, enough prefill layers to cover the step's
     predicted time, so neither partition idles, but no block longer than the
     TPOT target; with no decode, all layers. On
     a time-multiplexed backend the phases take turns, so the block gets what
     the TPOT target leaves after decode (at least one layer).
  5. **Re-plan** (``replan``). Once the scheduler has formed the admitted gang,
     the split and layers are decided again for the gang it really formed.
The planner is pure: the same state gives the same decision.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Protocol

from drift_sgl.policy.base import MuxDecision, MuxState, WaitingRequest

OVERLOAD_MODES = ("serve", "shed")
#: Prefill predictions remembered; past this, the older half is forgotten.
_MEMO_ENTRIES = 16384


class LatencyPredictor(Protocol):
    """The part of ``drift_sgl.latency.LatencyModel`` the planner uses.

    Prefill predictions never fall with more new or prefix tokens, and a
    worst case is never below the solo time (the admission's late floor
    relies on both; ``LatencyModel`` holds them by construction).
    """

    def prefill_ms(
        self,
        new_tokens: int,
        prefix_tokens: int,
        sm: float,
        worst_case: bool = False,
        batch_size: int = 1,
    ) -> float: ...

    def decode_ms(
        self, batch_size: int, kv_tokens: int, sm: float, worst_case: bool = False
    ) -> float: ...


@dataclass(frozen=True)
class _Step:
    """What the planner derived for this step before looking at prefill work."""

    #: Split used while a prefill runs (beside decode, or alone).
    split: int
    prefill_units: int
    #: The decode step's predicted time (0.0: no decode this step).
    decode_ms: float
    #: Prefill runs beside decode at the same time (so at its worst-case time).
    co_run: bool
    #: Prefill and decode take turns on the whole device.
    takes_turns: bool
    #: Prefill budget per step on a time-multiplexed backend (None: cover decode).
    turn_budget_ms: float | None


#: Waiting requests are sorted by it (a C function: the bisections call it ~20 times).
_deadline = operator.attrgetter("deadline_ms")


def _top_bits(tokens: int) -> int:
    """``tokens`` with all but its three highest bits cleared (at most 1/4 less).

    Called twice per request an admission walks: a shift, not a mask built with
    ``max`` (half an admission's walk went to this function's calls).
    """
    shift = tokens.bit_length() - 3
    return tokens >> shift << shift if shift > 0 else tokens


def _first_meeting(
    time_at: Callable[[int], float], target: float, lo: int, hi: int, hint: int | None
) -> int:
    """The smallest index in [lo, hi] whose time meets ``target`` (hi if none does).

    Times never rise with the index (more decode units). Starting from last
    step's split, a walk usually settles in two predictions (the hint meets,
    the one below does not); without a usable hint, bisection.
    """
    if hint is not None and lo <= hint <= hi:
        index = hint
        if time_at(index) <= target:
            while index > lo and time_at(index - 1) <= target:
                index -= 1
            return index
        while index < hi:
            index += 1
            if time_at(index) <= target:
                return index
        return hi
    if time_at(hi) > target:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if time_at(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass(frozen=True)
class SloPlanner:
    """Decides each step from the latency model and the requests' SLO targets."""

    latency: LatencyPredictor
    #: What happens to requests that can no longer meet their TTFT.
    overload: str = "serve"
    #: Let a short prefill pre-empt a long one at a layer boundary.
    preemption: bool = True
    #: Waiting requests examined per step for pre-emption.
    preempt_candidates: int = 4
    #: With ``overload="serve"``, a request this far past its TTFT deadline is
    #: admitted before requests that can still make theirs: overload delays it
    #: by a bounded amount instead of starving it.
    max_lateness_ms: float = 10_000.0
    #: It chooses the requests every gang admits (``MuxPolicy.chooses_requests``).
    chooses_requests: ClassVar[bool] = True
    #: Prefill predictions already made (a cache: decisions do not depend on it).
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.overload not in OVERLOAD_MODES:
            raise ValueError(f"overload must be one of {OVERLOAD_MODES}, got {self.overload!r}")

    # ------------------------------------------------------------- decision

    def decide(self, state: MuxState) -> MuxDecision:
        if not state.has_prefill and not state.waiting:
            # Nothing to prefill or admit: decode keeps the whole device. Said
            # first, it skips the split search, most of a light load's cost.
            return MuxDecision(split_index=len(state.splits) - 1, prefill_layers=0)
        step = self._step(state)
        admit: tuple[WaitingRequest, ...] = ()
        shed: tuple[str, ...] = ()
        preempt = False
        if state.has_prefill:
            if self.preemption and not state.prefill_preempting and state.waiting:
                admit = self._preemptor(state, step)
                preempt = bool(admit)
        elif state.waiting:
            admit, shed = self._admission(state, step)

        if admit:
            layers_left = state.num_layers
            work = (
                sum(r.new_tokens for r in admit),
                sum(r.prefix_tokens for r in admit),
                len(admit),
            )
        elif state.has_prefill:
            layers_left = state.prefill_layers_left
            work = (state.prefill_new_tokens, state.prefill_prefix_tokens, state.prefill_batch_size)
        else:
            return MuxDecision(split_index=len(state.splits) - 1, prefill_layers=0, shed=shed)

        layers = self._layers_per_step(state, step, *work) if state.has_decode else layers_left
        return MuxDecision(
            split_index=step.split,
            prefill_layers=min(layers, layers_left),
            admit=tuple(r.rid for r in admit),
            preempt=preempt,
            shed=shed,
        )

    def replan(self, decision: MuxDecision, formed: MuxState) -> MuxDecision:
        """``decision`` with its split and layers re-decided for the gang admission formed.

        Admission can form another gang than the one planned: fewer requests
        fit, or one's allocation evicted the cached prefix of the next, whose
        prefill then grows (a planned 1,100 new tokens became 4,562 in a
        simulated conversation trace, and the planned 20 layers ran 74 ms
        against a 50 ms target). ``formed`` is the state with that gang in
        flight; its waiting requests are ignored, so nothing more is admitted
        and nothing read depends on the clock.
        """
        again = self.decide(replace(formed, waiting=()))
        return replace(decision, split_index=again.split_index, prefill_layers=again.prefill_layers)

    # ---------------------------------------------------------------- split

    def _step(self, state: MuxState) -> _Step:
        splits = state.splits
        last = len(splits) - 1
        if not state.has_decode:
            return _Step(0, splits[0].prefill_units, 0.0, False, False, None)
        batch, kv = state.decode_batch_size, state.decode_kv_tokens
        mixed = range(1, last)
        if not state.concurrent or not mixed:
            # Phases take turns on the whole device: decode runs solo, and the
            # prefill block gets what the TPOT target leaves.
            split = 1 if mixed else last
            units = splits[split].decode_units or splits[last].decode_units
            decode = self.latency.decode_ms(batch, kv, units)
            budget = None
            if state.decode_tpot_ms is not None:
                budget = state.decode_tpot_ms - decode
            prefill_units = splits[split].prefill_units or splits[0].prefill_units
            return _Step(split, prefill_units, decode, False, True, budget)

        target = state.decode_tpot_ms
        if target is None:
            target = self.latency.decode_ms(batch, kv, splits[last].decode_units, worst_case=True)
        times: dict[int, float] = {}

        def worst(i: int) -> float:
            if i not in times:
                times[i] = self.latency.decode_ms(
                    batch, kv, splits[i].decode_units, worst_case=True
                )
            return times[i]

        split = _first_meeting(worst, target, 1, last - 1, state.previous_split)
        return _Step(split, splits[split].prefill_units, worst(split), True, False, None)

    # --------------------------------------------------------------- layers

    def _layers_per_step(
        self, state: MuxState, step: _Step, new: int, prefix: int, seqs: int
    ) -> int:
        per_layer = self._prefill_ms(step, new, prefix, seqs) / state.num_layers
        if per_layer <= 0:
            return state.num_layers
        if step.turn_budget_ms is not None:
            return max(1, math.floor(step.turn_budget_ms / per_layer))
        layers = math.ceil(step.decode_ms / per_layer)
        if state.decode_tpot_ms is not None:
            # Covering the decode step must not make the block itself longer than
            # the TPOT target: the next decode step waits for the partition's
            # previous block (at least one layer, whatever it costs).
            layers = min(layers, math.floor(state.decode_tpot_ms / per_layer))
        return max(1, layers)

    def _prefill_ms(self, step: _Step, new: int, prefix: int, seqs: int) -> float:
        return self._predicted(new, prefix, seqs, step.prefill_units, step.co_run)

    def _predicted(self, new: int, prefix: int, seqs: int, units: int, worst: bool) -> float:
        # The same questions recur step after step (the gang in flight, the
        # waiting requests at the head of the queue): remember the answers.
        key = (new if new > 1 else 1, prefix, seqs if seqs > 1 else 1, units, worst)
        known = self._memo.get(key)
        if known is None:
            if len(self._memo) >= _MEMO_ENTRIES:
                # Forget the older half (dicts keep insertion order): a full
                # clear would also drop the queue's head, asked again next step.
                for old in list(itertools.islice(self._memo, _MEMO_ENTRIES // 2)):
                    del self._memo[old]
            known = self._memo[key] = self.latency.prefill_ms(
                key[0], prefix, units, worst_case=worst, batch_size=key[2]
            )
        return known

    def _gang_ms(self, state: MuxState, step: _Step, new: int, prefix: int, seqs: int) -> float:
        """Predicted time from launching a gang to its completion."""
        prefill = self._predicted(new, prefix, seqs, step.prefill_units, step.co_run)
        if not step.takes_turns:
            return prefill
        # Taking turns: every block waits for one decode step.
        layers = self._layers_per_step(state, step, new, prefix, seqs)
        return prefill + math.ceil(state.num_layers / layers) * step.decode_ms

    # ------------------------------------------------------------ admission

    def _first_possible(self, state: MuxState, step: _Step) -> int:
        """Index of the first waiting request whose deadline a 1-token prefill could meet."""
        floor_ms = state.now_ms + self._gang_ms(state, step, 1, 0, 1)
        return bisect.bisect_left(state.waiting, floor_ms, key=_deadline)

    def _admission(
        self, state: MuxState, step: _Step
    ) -> tuple[tuple[WaitingRequest, ...], tuple[str, ...]]:
        """The new gang, and the rids to shed (``overload="shed"``: the late)."""
        now, waiting, tpot = state.now_ms, state.waiting, state.decode_tpot_ms
        start = self._first_possible(state, step)
        if self.overload == "serve":
            overdue = bisect.bisect_left(waiting, now - self.max_lateness_ms, key=_deadline)
            if overdue:
                return tuple(self._best_effort(state, itertools.islice(waiting, overdue))), ()
        # The late: the head before ``start`` and those the walk finds. The head
        # (~100 requests on a busy server) is read only to shed them or to serve
        # them best-effort: touching every request costs an admission more than
        # its arithmetic.
        walked_late: list[WaitingRequest] = []
        picked: list[WaitingRequest] = []
        new = prefix = kv = 0
        earliest = math.inf
        cold_groups: set[int] = set()
        known = self._memo.get
        units = step.prefill_units
        max_requests = state.prefill_max_requests
        # By index: a slice would copy the ~1,000-request tail, touching every request.
        for index in range(start, len(waiting)):
            request = waiting[index]
            if len(picked) >= max_requests:
                break
            # Late requests at the head of the queue, each new to the planner
            # as the clock moves on, are shown late without predicting their
            # time where possible: a lower bound on a request's gang time is
            # its solo prefill with the new and prefix tokens rounded down to
            # their top three bits. Predictions never fall with more tokens
            # (latency.forms), a co-run only slows (guard factors are >= 1) and
            # taking turns only adds decode time; the rounded sizes recur, so
            # the bound is almost always remembered (read here, without a call:
            # this walk is most of an admission step's cost).
            deadline = request.deadline_ms
            floor_key = (
                _top_bits(request.new_tokens) or 1,
                _top_bits(request.prefix_tokens),
                1,
                units,
                False,
            )
            floor_ms = known(floor_key)
            if floor_ms is None:
                floor_ms = self._predicted(*floor_key)
            if (
                now + floor_ms > deadline
                or now + self._gang_ms(state, step, request.new_tokens, request.prefix_tokens, 1)
                > deadline
            ):
                walked_late.append(request)
                continue
            if request.group is not None and request.group in cold_groups:
                continue
            if kv + request.kv_tokens > state.kv_free_tokens:
                break
            if picked and new + request.new_tokens > state.prefill_token_budget:
                break
            together = self._gang_ms(
                state,
                step,
                new + request.new_tokens,
                prefix + request.prefix_tokens,
                len(picked) + 1,
            )
            if picked and now + together > min(earliest, request.deadline_ms):
                break
            if picked and step.co_run and together / state.num_layers > (tpot or math.inf):
                # One layer of the gang would outlast the TBT target beside decode
                # (blocks are at least one layer): the gang is big enough.
                break
            picked.append(request)
            new += request.new_tokens
            prefix += request.prefix_tokens
            kv += request.kv_tokens
            earliest = min(earliest, request.deadline_ms)
            if request.group is not None and request.prefix_tokens == 0:
                cold_groups.add(request.group)
        if picked and self.overload == "serve":
            return tuple(picked), ()
        late = itertools.chain(waiting[:start], walked_late)  # deadline order
        if self.overload == "shed":
            return tuple(picked), tuple(r.rid for r in late)
        return tuple(self._best_effort(state, late)), ()

    @staticmethod
    def _best_effort(state: MuxState, late: Iterable[WaitingRequest]) -> list[WaitingRequest]:
        """Late requests in deadline order, as many as the budget and KV take."""
        picked: list[WaitingRequest] = []
        new = kv = 0
        for request in late:
            if len(picked) >= state.prefill_max_requests:
                break
            if kv + request.kv_tokens > state.kv_free_tokens:
                break
            if picked and new + request.new_tokens > state.prefill_token_budget:
                break
            picked.append(request)
            new += request.new_tokens
            kv += request.kv_tokens
        return picked

    # ---------------------------------------------------------- pre-emption

    def _preemptor(self, state: MuxState, step: _Step) -> tuple[WaitingRequest, ...]:
        """A short request that should run before the gang in flight, if any."""
        now = state.now_ms
        gang_ms = self._gang_ms(
            state,
            step,
            state.prefill_new_tokens,
            state.prefill_prefix_tokens,
            state.prefill_batch_size,
        )
        remaining = gang_ms * state.prefill_layers_left / state.num_layers
        start = self._first_possible(state, step)
        for request in state.waiting[start : start + self.preempt_candidates]:
            if request.kv_tokens > state.kv_free_tokens:
                continue
            alone = self._gang_ms(state, step, request.new_tokens, request.prefix_tokens, 1)
            can_wait = now + remaining + alone <= request.deadline_ms
            if can_wait or now + alone > request.deadline_ms or 2 * alone > remaining:
                continue
            gang_meets = now + remaining <= state.prefill_deadline_ms
            if gang_meets and now + remaining + alone > state.prefill_deadline_ms:
                continue
            return (request,)
        return ()

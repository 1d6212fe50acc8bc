"""SloPlanner on hand-built states: SLOs, idle partitions, KV, overload, pre-emption."""

import math
from dataclasses import replace
from pathlib import Path

import pytest

from drift_sgl.latency import LatencyModel
from drift_sgl.partition.base import SmSplit
from drift_sgl.policy import MuxDecision, MuxState, SloPlanner, WaitingRequest

ROOT = Path(__file__).resolve().parents[2]
H100 = ROOT / "bench" / "profiles" / "llama-3.1-8b-h100.estimate.json"
LAYERS = 32
GUARD = 1.2


class LinearModel:
    """A latency model simple enough to check decisions by hand.

    Prefill is compute-bound (time ~ 1/SM); decode saturates at 40 units.
    """

    def prefill_ms(self, new_tokens, prefix_tokens, sm, worst_case=False, batch_size=1):
        solo = (1.0 + 0.01 * new_tokens + 0.001 * prefix_tokens) * 100.0 / sm
        return solo * (GUARD if worst_case else 1.0)

    def decode_ms(self, batch_size, kv_tokens, sm, worst_case=False):
        solo = (1.0 + 0.02 * batch_size + 1e-5 * kv_tokens) * max(1.0, 40.0 / sm)
        return solo * (GUARD if worst_case else 1.0)


def splits(total=100, step=10):
    mixed = [SmSplit(total - d, d) for d in range(step, total, step)]
    return (SmSplit(total, 0), *mixed, SmSplit(0, total))


def waiting(rid, new, deadline, prefix=0, kv=None, group=None):
    return WaitingRequest(
        rid=rid,
        new_tokens=new,
        prefix_tokens=prefix,
        deadline_ms=deadline,
        kv_tokens=new + 100 if kv is None else kv,
        group=group,
    )


def state(**fields):
    base = dict(
        decode_batch_size=0,
        prefill_new_tokens=0,
        prefill_layers_left=0,
        num_layers=LAYERS,
        splits=splits(),
        kv_free_tokens=1_000_000,
    )
    base.update(fields)
    if "waiting" in base:
        base["waiting"] = tuple(sorted(base["waiting"], key=lambda r: r.deadline_ms))
    return MuxState(**base)


def decode_state(**fields):
    """A decode batch of 32 beside a gang of 2,000 new tokens halfway through."""
    base = dict(
        decode_batch_size=32,
        decode_kv_tokens=32 * 1000,
        prefill_new_tokens=2000,
        prefill_batch_size=1,
        prefill_layers_left=16,
    )
    base.update(fields)
    return state(**base)


planner = SloPlanner(LinearModel())


# ------------------------------------------------------------------ the split


@pytest.mark.parametrize("target", [2.5, 3.0, 4.0, 8.0, 20.0])
def test_decode_gets_the_smallest_share_meeting_its_tpot(target):
    s = decode_state(decode_tpot_ms=target)
    decision = planner.decide(s)
    model = LinearModel()
    chosen = s.splits[decision.split_index]
    assert 1 <= decision.split_index <= len(s.splits) - 2
    assert model.decode_ms(32, 32000, chosen.decode_units, worst_case=True) <= target
    smaller = s.splits[decision.split_index - 1]
    if decision.split_index > 1:
        assert model.decode_ms(32, 32000, smaller.decode_units, worst_case=True) > target


def test_unmeetable_tpot_gives_decode_the_largest_mixed_share_and_prefill_advances():
    s = decode_state(decode_tpot_ms=0.1)
    decision = planner.decide(s)
    assert decision.split_index == len(s.splits) - 2
    assert decision.prefill_layers >= 1


def test_without_target_decode_is_as_fast_as_on_the_whole_device():
    s = decode_state()
    decision = planner.decide(s)
    model = LinearModel()
    full = model.decode_ms(32, 32000, 100, worst_case=True)
    chosen = s.splits[decision.split_index].decode_units
    assert model.decode_ms(32, 32000, chosen, worst_case=True) <= full
    assert chosen == 40  # decode saturates at 40 units: prefill gets the other 60


@pytest.mark.parametrize("previous", [None, 1, 3, 5, 9])
def test_the_previous_split_hint_never_changes_the_decision(previous):
    for target in (2.5, 3.0, 5.0, 50.0, 0.1):
        s = decode_state(decode_tpot_ms=target)
        assert planner.decide(replace(s, previous_split=previous)) == planner.decide(s)


def test_real_h100_profile_meets_tpot_with_the_smallest_share():
    model = LatencyModel.load(H100)
    table = (SmSplit(132, 0), *[SmSplit(132 - d, d) for d in range(8, 132, 8)], SmSplit(0, 132))
    for batch, target in ((16, 12.0), (128, 40.0), (256, 60.0)):
        kv = batch * 3000
        s = decode_state(
            splits=table, decode_batch_size=batch, decode_kv_tokens=kv, decode_tpot_ms=target
        )
        decision = SloPlanner(model).decide(s)
        units = table[decision.split_index].decode_units
        assert model.decode_ms(batch, kv, units, worst_case=True) <= target
        if decision.split_index > 1:
            below = table[decision.split_index - 1].decode_units
            assert model.decode_ms(batch, kv, below, worst_case=True) > target


# ---------------------------------------------------------- layers, no idling


def test_prefill_layers_cover_the_decode_step_so_no_partition_idles():
    model = LinearModel()
    for target in (3.0, 4.0, 10.0, None):
        s = decode_state(decode_tpot_ms=target, prefill_layers_left=LAYERS)
        decision = planner.decide(s)
        split = s.splits[decision.split_index]
        decode = model.decode_ms(32, 32000, split.decode_units, worst_case=True)
        per_layer = model.prefill_ms(2000, 0, split.prefill_units, worst_case=True) / LAYERS
        assert decision.prefill_layers * per_layer >= decode
        assert decision.prefill_layers == 1 or (decision.prefill_layers - 1) * per_layer < decode


def test_a_block_never_outlasts_the_tpot_target():
    """Covering the 2.35 ms decode step takes 2 layers of 1.31 ms, but 2.62 ms > 2.5 ms."""
    model = LinearModel()
    s = decode_state(decode_tpot_ms=2.5, prefill_layers_left=LAYERS)
    decision = planner.decide(s)
    split = s.splits[decision.split_index]
    assert split.decode_units == 40
    per_layer = model.prefill_ms(2000, 0, split.prefill_units, worst_case=True) / LAYERS
    assert 2 * per_layer > 2.5 >= model.decode_ms(32, 32000, 40, worst_case=True) > per_layer
    assert decision.prefill_layers == 1


def test_replan_fits_the_layers_to_the_gang_admission_formed():
    """Planned for 200 new tokens; the allocation evicted the prefix, so 4,000 came."""
    model = LinearModel()
    ask = decode_state(
        decode_tpot_ms=4.0,
        prefill_new_tokens=0,
        prefill_batch_size=0,
        prefill_layers_left=0,
        waiting=(waiting("a", 200, 1e9, prefix=3800),),
    )
    decision = planner.decide(ask)
    assert decision.admit == ("a",)
    formed = replace(ask, prefill_new_tokens=4000, prefill_batch_size=1, prefill_layers_left=LAYERS)
    again = planner.replan(decision, formed)
    assert (again.admit, again.preempt, again.shed) == (decision.admit, False, ())
    split = formed.splits[again.split_index]
    per_layer = model.prefill_ms(4000, 0, split.prefill_units, worst_case=True) / LAYERS
    assert again.prefill_layers * per_layer <= 4.0 < decision.prefill_layers * per_layer
    # The gang that was planned gets the planned layers back: re-planning changes nothing.
    planned = replace(formed, prefill_new_tokens=200, prefill_prefix_tokens=3800)
    assert planner.replan(decision, planned) == decision


def test_layers_are_capped_at_what_is_left():
    decision = planner.decide(decode_state(prefill_new_tokens=10, prefill_layers_left=2))
    assert decision.prefill_layers == 2


def test_prefill_alone_launches_every_layer_on_the_prefill_only_split():
    decision = planner.decide(state(prefill_new_tokens=5000, prefill_layers_left=20))
    assert decision == MuxDecision(split_index=0, prefill_layers=20)


def test_decode_alone_takes_the_decode_only_split():
    s = state(decode_batch_size=8, decode_kv_tokens=8000)
    assert planner.decide(s) == MuxDecision(split_index=len(s.splits) - 1, prefill_layers=0)


def test_idle_state_decides_nothing():
    s = state()
    assert planner.decide(s) == MuxDecision(split_index=len(s.splits) - 1, prefill_layers=0)


def test_time_multiplexed_block_fits_in_what_the_tpot_leaves():
    table = (SmSplit(100, 0), SmSplit(100, 100), SmSplit(0, 100))
    model = LinearModel()
    s = decode_state(splits=table, concurrent=False, decode_tpot_ms=20.0, prefill_layers_left=32)
    decision = planner.decide(s)
    assert decision.split_index == 1
    decode = model.decode_ms(32, 32000, 100)
    per_layer = model.prefill_ms(2000, 0, 100) / LAYERS
    assert decode + decision.prefill_layers * per_layer <= 20.0
    assert decode + (decision.prefill_layers + 1) * per_layer > 20.0


# ------------------------------------------------------------------ admission


def test_admission_takes_requests_in_deadline_order_while_every_deadline_holds():
    now = 1000.0
    # Alone, 1,000 new tokens take (1 + 10) * 100 / 100 = 11 ms on the whole device.
    reqs = [waiting(f"r{i}", 1000, now + 30.0 + 15.0 * i) for i in range(6)]
    decision = planner.decide(state(now_ms=now, waiting=reqs))
    assert decision.admit, "a request that can meet its deadline must be admitted"
    assert decision.admit == tuple(f"r{i}" for i in range(len(decision.admit)))
    model = LinearModel()
    total = model.prefill_ms(1000 * len(decision.admit), 0, 100)
    assert now + total <= now + 30.0  # the earliest deadline still holds
    more = model.prefill_ms(1000 * (len(decision.admit) + 1), 0, 100)
    assert now + more > now + 30.0  # one more would break it
    assert decision.split_index == 0 and decision.prefill_layers == LAYERS


def test_admission_respects_kv_capacity():
    reqs = [waiting(f"r{i}", 100, math.inf, kv=400) for i in range(5)]
    decision = planner.decide(state(waiting=reqs, kv_free_tokens=1000))
    assert decision.admit == ("r0", "r1")
    assert planner.decide(state(waiting=reqs, kv_free_tokens=399)).admit == ()


def test_admission_respects_the_token_budget_but_always_takes_one():
    reqs = [waiting(f"r{i}", 3000, math.inf) for i in range(4)]
    assert planner.decide(state(waiting=reqs, prefill_token_budget=7000)).admit == ("r0", "r1")
    assert planner.decide(state(waiting=reqs, prefill_token_budget=10)).admit == ("r0",)


def test_beside_decode_a_gang_stops_growing_when_one_layer_would_outlast_the_tpot():
    model = LinearModel()
    reqs = [waiting(f"r{i}", 3000, math.inf) for i in range(4)]
    s = decode_state(
        decode_tpot_ms=4.0, prefill_new_tokens=0, prefill_batch_size=0, prefill_layers_left=0
    )
    decision = planner.decide(replace(s, waiting=tuple(reqs)))
    split = s.splits[decision.split_index]

    def layer_ms(count):
        return model.prefill_ms(3000 * count, 0, split.prefill_units, True) / LAYERS

    taken = len(decision.admit)
    assert taken >= 1 and layer_ms(taken) <= 4.0 < layer_ms(taken + 1)
    # Without decode beside it, the token budget alone bounds the gang.
    assert len(planner.decide(state(waiting=reqs)).admit) == 4
    # The first request is always taken, even when one of its layers is too long.
    huge = (waiting("big", 100_000, math.inf), *reqs)
    assert planner.decide(replace(s, waiting=huge)).admit == ("big",)


def test_requests_sharing_a_cold_prefix_wait_for_the_first_to_cache_it():
    reqs = [
        waiting("a", 500, math.inf, group=7),
        waiting("b", 500, math.inf, group=7),
        waiting("c", 500, math.inf, group=8),
        waiting("d", 500, math.inf, prefix=400, group=8),
    ]
    decision = planner.decide(state(waiting=reqs))
    assert decision.admit == ("a", "c")


def test_warm_prefix_group_members_are_admitted_together():
    reqs = [waiting(r, 500, math.inf, prefix=2000, group=7) for r in "abc"]
    assert planner.decide(state(waiting=reqs)).admit == ("a", "b", "c")


def test_overload_serve_admits_late_requests_only_when_none_can_make_it():
    now = 500.0
    late = waiting("late", 1000, now + 1.0)  # needs 11 ms alone
    ok = waiting("ok", 1000, now + 100.0)
    assert planner.decide(state(now_ms=now, waiting=[late, ok])).admit == ("ok",)
    decision = planner.decide(state(now_ms=now, waiting=[late]))
    assert decision.admit == ("late",) and decision.shed == ()


def test_overload_serve_bounds_lateness_instead_of_starving():
    now = 50_000.0
    bound = planner.max_lateness_ms
    overdue = [waiting(f"old{i}", 1000, now - bound - 100.0 * (i + 1)) for i in range(2)]
    recent = waiting("recent", 1000, now - bound / 2)  # late, but within the bound
    ok = waiting("ok", 1000, now + 100.0)
    decision = planner.decide(state(now_ms=now, waiting=[*overdue, recent, ok]))
    # The overdue go first, oldest first; the rest wait for the next gang.
    assert decision.admit == ("old1", "old0")
    assert planner.decide(state(now_ms=now, waiting=[recent, ok])).admit == ("ok",)
    # Budget and KV still bound the overdue gang.
    tight = state(now_ms=now, waiting=[*overdue, ok], prefill_token_budget=1500)
    assert planner.decide(tight).admit == ("old1",)


def test_overload_shed_ends_late_requests_and_never_admits_them():
    shedder = SloPlanner(LinearModel(), overload="shed")
    now = 500.0
    reqs = [waiting("late", 1000, now + 1.0), waiting("gone", 10, now - 5.0)]
    reqs.append(waiting("ok", 1000, now + 100.0))
    decision = shedder.decide(state(now_ms=now, waiting=reqs))
    assert decision.admit == ("ok",)
    assert set(decision.shed) == {"late", "gone"}
    decision = shedder.decide(state(now_ms=now, waiting=reqs[:2]))
    assert decision.admit == () and set(decision.shed) == {"late", "gone"}


def test_late_requests_are_served_and_shed_in_deadline_order():
    # "gone" is late before the walk starts (past even a 1-token prefill),
    # "late" is found late by the walk: both lists read them in deadline order.
    now = 500.0
    reqs = [waiting("gone", 10, now - 5.0), waiting("late", 1000, now + 1.0)]
    shedder = SloPlanner(LinearModel(), overload="shed")
    assert shedder.decide(state(now_ms=now, waiting=reqs)).shed == ("gone", "late")
    assert planner.decide(state(now_ms=now, waiting=reqs)).admit == ("gone", "late")
    tight = state(now_ms=now, waiting=reqs, prefill_token_budget=1005)
    assert planner.decide(tight).admit == ("gone",)


def test_unknown_overload_mode_is_refused():
    with pytest.raises(ValueError, match="overload"):
        SloPlanner(LinearModel(), overload="drop")


# ---------------------------------------------------------------- pre-emption


def long_gang(now, **fields):
    # 20,000 new tokens: (1 + 200) * 100 / 60 * 1.2 = 402 ms on 60 units, all layers left.
    return decode_state(
        now_ms=now,
        prefill_new_tokens=20000,
        prefill_layers_left=LAYERS,
        prefill_deadline_ms=now + 10_000.0,
        **fields,
    )


def test_a_short_urgent_request_pre_empts_a_long_gang():
    now = 0.0
    s = long_gang(now, waiting=(waiting("short", 100, now + 50.0),))
    decision = planner.decide(s)
    assert decision.admit == ("short",) and decision.preempt
    # The layers are the new gang's: 100 tokens need far fewer layers per step... or all.
    assert 1 <= decision.prefill_layers <= LAYERS


def test_no_pre_emption_when_the_request_can_wait_or_is_long_or_nested():
    now = 0.0
    can_wait = long_gang(now, waiting=(waiting("w", 100, now + 5000.0),))
    assert planner.decide(can_wait).admit == ()
    # Alone 242 ms: it cannot wait 402 ms, but it is not short beside them.
    too_long = long_gang(now, waiting=(waiting("l", 12000, now + 300.0),))
    assert planner.decide(too_long).admit == ()
    nested = long_gang(now, waiting=(waiting("s", 100, now + 50.0),), prefill_preempting=True)
    assert planner.decide(nested).admit == ()
    off = SloPlanner(LinearModel(), preemption=False)
    assert off.decide(long_gang(now, waiting=(waiting("s", 100, now + 50.0),))).admit == ()


def test_no_pre_emption_that_would_make_the_gang_in_flight_miss_its_deadline():
    now = 0.0
    s = long_gang(now, waiting=(waiting("s", 100, now + 50.0),))
    # The gang meets a 403 ms deadline alone; 4 ms for the short one breaks it.
    assert planner.decide(replace(s, prefill_deadline_ms=now + 403.0)).admit == ()
    # Already late anyway: the short request goes first.
    assert planner.decide(replace(s, prefill_deadline_ms=now + 300.0)).admit == ("s",)


# ---------------------------------------------------------------- determinism


def test_decisions_are_deterministic_and_independent_of_the_memo():
    now = 100.0
    reqs = [waiting(f"r{i}", 200 + 37 * i, now + 20.0 * i, group=i % 3) for i in range(40)]
    s = decode_state(now_ms=now, waiting=tuple(reqs), prefill_layers_left=0, decode_tpot_ms=4.0)
    first = planner.decide(s)
    assert first == planner.decide(s)
    assert first == SloPlanner(LinearModel()).decide(s)


def test_decision_rejects_inconsistent_values():
    with pytest.raises(ValueError):
        MuxDecision(split_index=0, prefill_layers=1, preempt=True)
    with pytest.raises(ValueError):
        MuxDecision(split_index=0, prefill_layers=1, admit=("a",), shed=("a",))


# ------------------------------------------------------- the admission's speed


@pytest.mark.parametrize("overload", ["serve", "shed"])
@pytest.mark.parametrize("concurrent", [True, False])
def test_the_late_floor_changes_no_decision_on_the_h100_profile(overload, concurrent, monkeypatch):
    import random

    from drift_sgl.policy import planner as planner_module

    rng = random.Random(7)
    model = LatencyModel.load(H100)
    fast, exact = SloPlanner(model, overload=overload), SloPlanner(model, overload=overload)
    table = tuple(SmSplit(132 - d, d) for d in range(0, 133, 12))
    for i in range(60):
        now = 1000.0 * i
        queue = [
            waiting(
                f"r{j}",
                rng.randint(1, 9000),
                now + rng.uniform(-300.0, 3000.0),
                prefix=rng.choice((0, 0, rng.randint(1, 30000))),
                group=rng.randrange(6),
            )
            for j in range(rng.randint(1, 120))
        ]
        s = state(
            now_ms=now,
            splits=table,
            concurrent=concurrent,
            decode_batch_size=rng.choice((0, 8, 128)),
            decode_kv_tokens=rng.randint(1000, 400_000),
            decode_tpot_ms=rng.choice((None, 25.0, 50.0)),
            waiting=tuple(queue),
        )
        decided = fast.decide(s)
        # With every size rounded to nothing, the floor is a 1-token prefill:
        # it shows no request late, so every request's time is predicted.
        with monkeypatch.context() as patch:
            patch.setattr(planner_module, "_top_bits", lambda tokens: 0)
            assert exact.decide(s) == decided


def test_top_bits_keeps_the_three_highest_bits():
    from drift_sgl.policy.planner import _top_bits

    for tokens in [*range(0, 4096), 12_345, 65_537, 1 << 40, (1 << 40) + 12_345]:
        bits = bin(tokens)[2:]
        expected = int(bits[:3] + "0" * (len(bits) - 3), 2) if len(bits) > 3 else tokens
        assert _top_bits(tokens) == expected


def test_the_late_floor_is_below_every_exact_gang_time():
    import random

    from drift_sgl.policy.planner import _top_bits

    rng = random.Random(3)
    model = LatencyModel.load(H100)
    planner = SloPlanner(model)
    for _ in range(400):
        new, prefix = rng.randint(1, 20000), rng.choice((0, rng.randint(1, 60000)))
        assert 0.75 * new <= _top_bits(new) <= new
        s = state(
            now_ms=0.0,
            splits=tuple(SmSplit(132 - d, d) for d in range(0, 133, 12)),
            concurrent=rng.random() < 0.7,
            decode_batch_size=rng.choice((0, 16, 256)),
            decode_kv_tokens=100_000,
            decode_tpot_ms=50.0,
        )
        step = planner._step(s)
        exact = planner._gang_ms(s, step, new, prefix, 1)
        units = step.prefill_units
        floor = planner._predicted(_top_bits(new) or 1, _top_bits(prefix), 1, units, False)
        assert floor <= exact
        # A request due exactly at its exact time can make it: it is not shown late.
        request = waiting("r", new, exact, prefix=prefix)
        assert planner.decide(replace(s, waiting=(request,))).admit == ("r",)


def test_the_split_search_finds_the_first_meeting_index_from_any_hint():
    import random

    from drift_sgl.policy.planner import _first_meeting

    rng = random.Random(5)
    for _ in range(300):
        size = rng.randint(1, 14)
        times = sorted((rng.uniform(1.0, 100.0) for _ in range(size)), reverse=True)
        target = rng.choice((0.5, 150.0, rng.uniform(1.0, 100.0), *times))
        lo, hi = 0, size - 1
        meeting = [i for i in range(lo, hi + 1) if times[i] <= target]
        expected = meeting[0] if meeting else hi
        for hint in (None, -1, size, *range(size)):
            asked: list[int] = []

            def time_at(i, asked=asked, times=times):
                asked.append(i)
                return times[i]

            found = _first_meeting(time_at, target, lo, hi, hint)
            assert found == expected, (times, target, hint)
            assert all(lo <= i <= hi for i in asked)


def test_a_full_memo_forgets_its_older_half_and_keeps_the_recent_questions():
    from drift_sgl.policy.planner import _MEMO_ENTRIES

    fresh = SloPlanner(LinearModel())
    for new in range(1, _MEMO_ENTRIES + 1):
        fresh._predicted(new, 0, 1, 50, False)
    assert len(fresh._memo) == _MEMO_ENTRIES
    fresh._predicted(_MEMO_ENTRIES + 1, 0, 1, 50, False)
    assert len(fresh._memo) == _MEMO_ENTRIES // 2 + 1
    assert (_MEMO_ENTRIES, 0, 1, 50, False) in fresh._memo  # the newest stay
    assert (1, 0, 1, 50, False) not in fresh._memo
    # A remembered answer is the model's answer.
    assert fresh._predicted(_MEMO_ENTRIES, 0, 1, 50, False) == LinearModel().prefill_ms(
        _MEMO_ENTRIES, 0, 50
    )

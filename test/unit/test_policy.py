"""LayerBudgetRule: the per-step split and prefill-layer decision."""

import pytest

from drift_sgl.partition import SmSplit, TimeMultiplexedBackend
from drift_sgl.policy import LayerBudgetRule, MuxDecision, MuxState

NUM_LAYERS = 32


def split_table(n):
    """A table of ``n`` splits following the convention of partition/base.py."""
    units = 100
    table = [SmSplit(prefill_units=units, decode_units=0)]
    for i in range(1, n - 1):
        decode = units * i // (n - 1)
        table.append(SmSplit(prefill_units=units - decode, decode_units=decode))
    table.append(SmSplit(prefill_units=0, decode_units=units))
    return tuple(table)


def state(decode=0, new_tokens=0, layers_left=0, splits=None):
    return MuxState(
        decode_batch_size=decode,
        prefill_new_tokens=new_tokens,
        prefill_layers_left=layers_left,
        num_layers=NUM_LAYERS,
        splits=split_table(5) if splits is None else splits,
    )


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_decode_only_takes_last_split_without_prefill(n):
    decision = LayerBudgetRule().decide(state(decode=8, splits=split_table(n)))
    assert decision == MuxDecision(split_index=n - 1, prefill_layers=0)


def test_idle_state_runs_no_prefill_layers():
    assert LayerBudgetRule().decide(state()).prefill_layers == 0


@pytest.mark.parametrize("layers_left", [1, 7, NUM_LAYERS])
def test_prefill_only_takes_split_zero_with_all_remaining_layers(layers_left):
    rule = LayerBudgetRule(layer_budget_tokens=16)  # budget would allow far fewer layers
    decision = rule.decide(state(new_tokens=4096, layers_left=layers_left))
    assert decision == MuxDecision(split_index=0, prefill_layers=layers_left)


@pytest.mark.parametrize(
    ("budget", "new_tokens", "layers_left", "expected"),
    [
        (32768, 4096, 32, 8),  # budget // new_tokens
        (32768, 1000, 32, 32),  # 32 layers, exactly what is left
        (32768, 100, 5, 5),  # 327 layers, capped at the 5 left
        (32, 4096, 32, 1),  # 0 by division: at least one layer
        (32, 33, 32, 1),
        (32, 16, 32, 2),
        (10, 0, 3, 3),  # no new tokens (fully cached): budget // 1, capped
    ],
)
def test_both_phases_layers_follow_budget(budget, new_tokens, layers_left, expected):
    rule = LayerBudgetRule(layer_budget_tokens=budget)
    decision = rule.decide(state(decode=4, new_tokens=new_tokens, layers_left=layers_left))
    assert decision.prefill_layers == expected


@pytest.mark.parametrize("n", range(3, 11))
@pytest.mark.parametrize("full_batch", [1, 7, 64])
def test_mixed_split_is_always_a_mixed_index(n, full_batch):
    rule = LayerBudgetRule(decode_full_batch=full_batch)
    splits = split_table(n)
    seen = set()
    for batch in [*range(1, 300), 1000, 10**6]:
        index = rule.decide(state(decode=batch, new_tokens=64, layers_left=4, splits=splits))
        assert 1 <= index.split_index <= n - 2, (n, batch)
        seen.add(index.split_index)
    # Once the batch reaches decode_full_batch, decode gets the largest mixed share.
    assert max(seen) == n - 2


def test_table_without_mixed_splits_falls_back_to_decode_only():
    decision = LayerBudgetRule().decide(
        state(decode=3, new_tokens=64, layers_left=4, splits=split_table(2))
    )
    assert decision.split_index == 1
    assert decision.prefill_layers >= 1


@pytest.mark.parametrize("n", [3, 4, 6, 10])
def test_decode_share_is_non_decreasing_in_batch_size(n):
    rule = LayerBudgetRule(decode_full_batch=64)
    splits = split_table(n)
    indices = [
        rule.decide(state(decode=b, new_tokens=64, layers_left=4, splits=splits)).split_index
        for b in range(1, 200)
    ]
    assert indices == sorted(indices)
    shares = [splits[i].decode_units for i in indices]
    assert shares == sorted(shares)


def test_time_mux_table_uses_its_single_mixed_split():
    splits = TimeMultiplexedBackend(8).splits
    decision = LayerBudgetRule().decide(
        state(decode=5, new_tokens=64, layers_left=4, splits=splits)
    )
    assert decision.split_index == 1


def test_decision_is_deterministic():
    rule = LayerBudgetRule(layer_budget_tokens=500)
    for kwargs in [
        dict(decode=3),
        dict(new_tokens=70, layers_left=9),
        dict(decode=17, new_tokens=70, layers_left=9),
    ]:
        first = rule.decide(state(**kwargs))
        again = LayerBudgetRule(layer_budget_tokens=500).decide(state(**kwargs))
        assert first == again == rule.decide(state(**kwargs))
        assert hash(first) == hash(again)


@pytest.mark.parametrize(("split_index", "prefill_layers"), [(-1, 0), (0, -1), (-3, -3)])
def test_decision_rejects_negative_values(split_index, prefill_layers):
    with pytest.raises(ValueError):
        MuxDecision(split_index=split_index, prefill_layers=prefill_layers)


def test_decision_accepts_zero():
    assert MuxDecision(split_index=0, prefill_layers=0).prefill_layers == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layer_budget_tokens=0),
        dict(layer_budget_tokens=-5),
        dict(decode_full_batch=0),
        dict(decode_full_batch=-1),
    ],
)
def test_rule_rejects_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        LayerBudgetRule(**kwargs)


def test_state_properties():
    assert state(decode=1).has_decode and not state(decode=1).has_prefill
    assert state(new_tokens=5, layers_left=1).has_prefill
    assert not state(new_tokens=5, layers_left=0).has_prefill

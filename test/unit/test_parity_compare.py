"""The e2e parity comparison: exact on tokens and text, tolerant on floats."""

from e2e.parity import differences, normalized


def test_floats_a_hair_apart_across_a_rounding_boundary_are_equal():
    # round(x, 3) put these on different sides (-5.662 vs -5.663): the old comparison failed.
    assert differences([-5.66249, 205], [-5.66251, 205]) == []


def test_a_different_token_is_a_difference():
    found = differences({"output_ids": [205, 21]}, {"output_ids": [205, 214]})
    assert found == [".output_ids[1]: 21 != 214"]


def test_far_apart_floats_missing_keys_and_lengths_are_differences():
    assert differences(-5.6, -5.9)
    assert differences({"a": 1}, {"a": 1, "b": 2})
    assert differences([1, 2], [1, 2, 3])
    assert differences("yes", "no")


def test_volatile_fields_are_ignored():
    ours = normalized({"id": "a", "meta_info": {"e2e_latency": 1.0, "cached_tokens": 3, "x": 1}})
    theirs = normalized({"id": "b", "meta_info": {"e2e_latency": 9.0, "cached_tokens": 0, "x": 1}})
    assert differences(ours, theirs) == []

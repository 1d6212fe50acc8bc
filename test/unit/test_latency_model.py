"""The latency model: fitting known ground truth, predictions, the guard, storage, samples."""

import itertools
import json
import random

import pytest

from drift_sgl.latency import (
    DeviceIdentity,
    FitError,
    LatencyModel,
    ModelIdentity,
    ProfileError,
    Sample,
    SampleError,
    fit_latency_model,
    read_samples,
    write_sample,
)
from drift_sgl.latency.fit import UNMEASURED_GUARD
from drift_sgl.latency.forms import decode_features, prefill_features
from drift_sgl.latency.samples import parse_samples

TOTAL_SM = 132
SHARES = (16, 32, 64, 96, 132)
DEVICE = DeviceIdentity("cuda", "Test GPU", TOTAL_SM)
MODEL = ModelIdentity("LlamaForCausalLM", 32, 4096, 32, 8, "bfloat16")


def true_prefill_ms(new, prefix, seqs, sm):
    """A roofline-shaped truth: a weight read floor, then compute scaling with 1/SM."""
    compute = (0.02 * new + 4e-6 * new * new / seqs + 2e-6 * new * prefix / seqs) * TOTAL_SM / sm
    memory = 5.0 * 66 / min(sm, 66) + 1e-4 * prefix
    return 0.5 + 0.05 * seqs + max(compute, memory)


def true_decode_ms(batch, kv, sm):
    return 1.0 + (4.0 + 0.02 * batch + 2e-4 * kv) * 66 / min(sm, 66)


def make_samples(rng, noise=0.03, shares=SHARES, co_run_slowdown=None):
    samples = []
    for sm in shares:
        for _ in range(80):
            seqs = rng.choice((1, 2, 4))
            new = seqs * rng.choice((16, 64, 128, 256, 512, 1024, 2048, 4096))
            prefix = new * rng.choice((0, 0, 1, 3))
            latency = true_prefill_ms(new, prefix, seqs, sm) * rng.gauss(1, noise)
            samples.append(Sample("prefill", sm, TOTAL_SM, new, prefix, seqs, 0, False, latency))
        for _ in range(60):
            batch = rng.choice((1, 2, 4, 8, 16, 32, 64, 128, 256))
            kv = batch * rng.choice((128, 512, 2048, 8192))
            latency = true_decode_ms(batch, kv, sm) * rng.gauss(1, noise)
            samples.append(Sample("decode", sm, TOTAL_SM, batch, 0, batch, kv, False, latency))
    if co_run_slowdown:
        for sm in shares[:2]:
            for batch in (1, 8, 64):
                kv = batch * 1024
                latency = true_decode_ms(batch, kv, sm) * co_run_slowdown
                samples.append(Sample("decode", sm, TOTAL_SM, batch, 0, batch, kv, True, latency))
    return samples


@pytest.fixture(scope="module")
def fitted():
    samples = make_samples(random.Random(7), co_run_slowdown=1.3)
    return fit_latency_model(samples, DEVICE, MODEL, holdout=0.2, seed=1)


def test_fit_recovers_ground_truth_within_the_error_bound(fitted):
    for phase in ("prefill", "decode"):
        errors = fitted.errors[phase]
        assert errors["held_out"] is True
        assert errors["n"] >= 50
        # 3% noise: a correct form leaves about 1.96 * 3% at the 95th percentile.
        assert errors["p95_ape"] <= 0.08, (phase, errors)


@pytest.mark.parametrize("sm", [16, 48, 80, 132])
def test_predictions_at_unseen_points_and_interpolated_shares(fitted, sm):
    for new, prefix, seqs in ((100, 0, 1), (700, 700, 1), (3000, 9000, 3), (6000, 0, 2)):
        truth = true_prefill_ms(new, prefix, seqs, sm)
        got = fitted.prefill_ms(new, prefix, sm, batch_size=seqs)
        assert got == pytest.approx(truth, rel=0.08), (new, prefix, seqs, sm)
    for batch, kv in ((3, 3000), (48, 48 * 700), (200, 200 * 3000)):
        truth = true_decode_ms(batch, kv, sm)
        assert fitted.decode_ms(batch, kv, sm) == pytest.approx(truth, rel=0.08), (batch, kv, sm)


def test_predictions_never_increase_with_more_sms():
    # Noisier data with a slower measurement at more SMs must still be monotone.
    samples = make_samples(random.Random(3), noise=0.10, shares=(8, 16, 24, 32, 64, 132))
    model = fit_latency_model(samples, DEVICE, MODEL, holdout=0.0)
    for new, prefix in ((64, 0), (1024, 2048), (8192, 0)):
        values = [model.prefill_ms(new, prefix, sm) for sm in range(1, TOTAL_SM + 1)]
        assert all(b <= a + 1e-9 for a, b in itertools.pairwise(values))
    for batch in (1, 32, 256):
        values = [model.decode_ms(batch, batch * 1000, sm) for sm in range(1, TOTAL_SM + 1)]
        assert all(b <= a + 1e-9 for a, b in itertools.pairwise(values))


def test_a_prediction_at_a_profiled_count_is_the_smallest_of_the_counts_up_to_it():
    # The running minimum, against its definition from the public per-count prediction.
    samples = make_samples(random.Random(3), noise=0.10, shares=(8, 16, 24, 32, 64, 132))
    model = fit_latency_model(samples, DEVICE, MODEL, holdout=0.0)
    rng = random.Random(4)
    for phase, features in (
        (model.prefill, lambda: prefill_features(rng.randint(1, 9000), rng.randint(0, 9000), 2)),
        (model.decode, lambda: decode_features(rng.randint(1, 256), rng.randint(0, 400_000))),
    ):
        counts = phase.sm_counts
        for _ in range(200):
            x = features()
            for i, sm in enumerate(counts):
                expected = min(phase.solo_at(c, x) for c in counts[: i + 1])
                assert phase.predict(sm, x) == pytest.approx(expected, rel=1e-12)


def test_shares_between_counts_interpolate_in_one_over_sm_whatever_the_order_asked():
    # The model caches per share how it reads the counts, and the guard per
    # region: answers in a shuffled order must match the definition.
    samples = make_samples(random.Random(3), noise=0.10, shares=(8, 16, 24, 32, 64, 132))
    model = fit_latency_model(samples, DEVICE, MODEL, holdout=0.0)
    rng = random.Random(5)
    phase, counts = model.decode, model.decode.sm_counts
    queries = [(sm / 2, rng.randint(1, 256), rng.randint(0, 400_000)) for sm in range(1, 300)]
    for _ in range(3):
        rng.shuffle(queries)
        for sm, batch, kv in queries:
            x = decode_features(batch, kv)
            if sm <= counts[0]:
                expected = phase.predict(counts[0], x) * counts[0] / sm
            elif sm >= counts[-1]:
                expected = phase.predict(counts[-1], x)
            else:
                hi = next(i for i, c in enumerate(counts) if c >= sm)
                lo = counts[hi - 1]
                low, high = phase.predict(lo, x), phase.predict(counts[hi], x)
                weight = (1 / lo - 1 / sm) / (1 / lo - 1 / counts[hi])
                expected = high if counts[hi] == sm else low + weight * (high - low)
            assert phase.predict(sm, x) == pytest.approx(expected, rel=1e-12)
            fresh = type(model.guard)(model.guard.ratios, model.guard.default, model.guard.expected)
            assert model.guard.factor("decode", sm, batch) == fresh.factor("decode", sm, batch)


def test_the_per_share_caches_stay_bounded_and_correct(fitted, monkeypatch):
    from drift_sgl.latency import model as model_module

    monkeypatch.setattr(model_module, "_CACHE_ENTRIES", 8)
    fresh = LatencyModel.from_json(fitted.to_json())
    shares = [1 + 0.7 * i for i in range(60)]
    expected = [fresh.decode_ms(8, 8000, sm, worst_case=True) for sm in shares]
    for _ in range(2):
        assert [fresh.decode_ms(8, 8000, sm, worst_case=True) for sm in shares] == expected
        assert len(fresh.decode._plans) <= 8 and len(fresh.guard._factors) <= 8


def test_predictions_grow_with_work(fitted):
    assert fitted.prefill_ms(2048, 0, 64) > fitted.prefill_ms(1024, 0, 64)
    assert fitted.prefill_ms(1024, 8192, 64) >= fitted.prefill_ms(1024, 0, 64)
    assert fitted.decode_ms(64, 64 * 4096, 64) >= fitted.decode_ms(64, 64 * 128, 64)


def test_worst_case_applies_the_measured_guard(fitted):
    for sm in (16, 32, 64, 132):
        for batch in (1, 8, 64, 256):
            solo = fitted.decode_ms(batch, batch * 1024, sm)
            worst = fitted.decode_ms(batch, batch * 1024, sm, worst_case=True)
            assert worst >= solo
        assert fitted.prefill_ms(512, 0, sm, worst_case=True) >= fitted.prefill_ms(512, 0, sm)
    # Co-run decode ran 1.3x its solo truth at 16 and 32 SMs.
    ratio = fitted.decode_ms(8, 8 * 1024, 16, True) / fitted.decode_ms(8, 8 * 1024, 16)
    assert ratio == pytest.approx(1.3, rel=0.1)
    # Prefill had no co-run samples: the documented assumption stands in.
    assert fitted.guard.factor("prefill", 64, 512) == UNMEASURED_GUARD


def test_worst_case_is_monotone_like_solo():
    rng = random.Random(11)
    samples = make_samples(rng, shares=(16, 32, 64, 132))
    # Uneven slowdowns: larger at more SMs and at small sizes, which a raw
    # per-bucket table would turn into predictions that rise with SMs or fall with size.
    for sm, batch, slowdown in ((16, 64, 1.1), (64, 2, 1.6), (132, 8, 1.4), (32, 256, 1.2)):
        kv = batch * 512
        latency = true_decode_ms(batch, kv, sm) * slowdown
        samples.append(Sample("decode", sm, TOTAL_SM, batch, 0, batch, kv, True, latency))
    model = fit_latency_model(samples, DEVICE, MODEL, holdout=0.0)
    for batch in (1, 2, 8, 64, 256, 512):
        values = [model.decode_ms(batch, batch * 512, sm, True) for sm in range(1, TOTAL_SM + 1)]
        assert all(b <= a + 1e-9 for a, b in itertools.pairwise(values)), batch
    for sm in (8, 16, 40, 64, 100, 132):
        values = [model.decode_ms(b, b * 512, sm, True) for b in range(1, 600, 7)]
        assert all(b >= a - 1e-9 for a, b in itertools.pairwise(values)), sm
    # The observed slowdowns are still covered where they were measured.
    assert model.decode_ms(2, 1024, 64, True) >= 1.6 * model.decode_ms(2, 1024, 64) * 0.9


def test_guard_without_co_runs_is_the_documented_assumption():
    model = fit_latency_model(make_samples(random.Random(1)), DEVICE, MODEL, holdout=0.0)
    assert model.guard.default == UNMEASURED_GUARD
    assert model.decode_ms(4, 4000, 64, worst_case=True) == pytest.approx(
        UNMEASURED_GUARD * model.decode_ms(4, 4000, 64)
    )


def test_typical_slowdown_is_the_median_and_the_worst_the_max():
    samples = make_samples(random.Random(3), shares=(16, 32, 64, 132))
    for slowdown in (1.1, 1.2, 1.6):  # three co-runs in one region
        kv = 8 * 1024
        latency = true_decode_ms(8, kv, 32) * slowdown
        samples.append(Sample("decode", 32, TOTAL_SM, 8, 0, 8, kv, True, latency))
    model = fit_latency_model(samples, DEVICE, MODEL, holdout=0.0)
    assert model.co_run_slowdown("decode", 32, 8) == pytest.approx(1.2, rel=0.05)
    assert model.guard.factor("decode", 32, 8) == pytest.approx(1.6, rel=0.05)
    # No co-run of prefill observed: the typical slowdown is the (assumed) worst.
    assert model.co_run_slowdown("prefill", 32, 512) == UNMEASURED_GUARD
    # Stored and read back; a profile from before it was stored falls back to the worst.
    row = model.to_json()
    assert LatencyModel.from_json(row).co_run_slowdown("decode", 32, 8) == pytest.approx(
        model.co_run_slowdown("decode", 32, 8)
    )
    del row["contention_guard"]["expected"]
    older = LatencyModel.from_json(row)
    assert older.co_run_slowdown("decode", 32, 8) == older.guard.factor("decode", 32, 8)


def test_save_load_round_trip(fitted, tmp_path):
    path = tmp_path / "profile.json"
    fitted.save(path)
    loaded = LatencyModel.load(path)
    assert loaded.to_json() == fitted.to_json()
    assert loaded.model == MODEL and loaded.device == DEVICE
    for sm in (10, 50, 132):
        assert loaded.prefill_ms(900, 300, sm, True) == fitted.prefill_ms(900, 300, sm, True)
        assert loaded.decode_ms(17, 9000, sm) == fitted.decode_ms(17, 9000, sm)
    row = json.loads(path.read_text())
    assert row["version"] == 1 and row["estimated"] is False
    assert set(row["errors"]) == {"prefill", "decode"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(format="other"), "not a drift-sgl latency profile"),
        (lambda r: r.update(version=99), "version 99 is not supported"),
        (lambda r: r.pop("decode"), "malformed profile"),
        (lambda r: r["contention_guard"].update(default=0.5), "must be >= 1"),
    ],
)
def test_load_refuses_bad_profiles(fitted, tmp_path, edit, message):
    row = fitted.to_json()
    edit(row)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(row))
    with pytest.raises(ProfileError, match=message):
        LatencyModel.load(path)


def test_bad_queries_are_refused(fitted):
    with pytest.raises(ValueError, match="sm must be > 0"):
        fitted.decode_ms(1, 10, 0)
    with pytest.raises(ValueError, match="new_tokens must be >= 0"):
        fitted.prefill_ms(-1, 0, 10)


def test_fit_needs_both_phases():
    samples = [s for s in make_samples(random.Random(2)) if s.phase == "decode"]
    with pytest.raises(FitError, match=r"no solo .* prefill samples"):
        fit_latency_model(samples, DEVICE, MODEL)


def test_fit_refuses_samples_of_another_device_size():
    samples = make_samples(random.Random(2))
    with pytest.raises(FitError, match="total_sm"):
        fit_latency_model(samples, DeviceIdentity("cuda", "x", 108), MODEL)


# --- samples -------------------------------------------------------------------

GOOD = {
    "phase": "decode",
    "sm": 8,
    "total_sm": 132,
    "new_tokens": 4,
    "prefix_tokens": 0,
    "batch_size": 4,
    "kv_tokens": 4000,
    "co_run": False,
    "latency_ms": 6.5,
}


def test_samples_round_trip_and_keep_extra_keys(tmp_path):
    path = tmp_path / "s.jsonl"
    with open(path, "w") as out:
        write_sample(out, Sample.from_json({**GOOD, "point": "p1", "cost_s": 0.2}))
        write_sample(out, Sample.from_json(GOOD))
    first, second = read_samples(path)
    assert first.extra == {"point": "p1", "cost_s": 0.2}
    assert first.to_json() == {**GOOD, "latency_ms": 6.5, "point": "p1", "cost_s": 0.2}
    assert second == first  # extras are not part of a sample's identity


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phase": "both"}, "phase must be one of"),
        ({"sm": 0}, "sm must be in 1..total_sm"),
        ({"sm": 200}, "sm must be in 1..total_sm"),
        ({"batch_size": 2.0}, "batch_size must be an integer"),
        ({"co_run": "no"}, "co_run must be true or false"),
        ({"latency_ms": -1}, "latency_ms must be a positive"),
        ({"latency_ms": "fast"}, "latency_ms must be a number"),
        ({"new_tokens": 5}, "decode rows need new_tokens == batch_size"),
        ({"kv_tokens": -3}, "kv_tokens must be >= 0"),
    ],
)
def test_schema_errors_name_the_line(change, message):
    lines = [json.dumps(GOOD), "", json.dumps({**GOOD, **change})]
    with pytest.raises(SampleError, match=message) as info:
        parse_samples(lines, source="s.jsonl")
    assert str(info.value).startswith("s.jsonl:3: ")


def test_schema_errors_for_missing_keys_and_bad_json():
    row = dict(GOOD)
    del row["kv_tokens"]
    with pytest.raises(SampleError, match=r"^x:1: missing key\(s\) kv_tokens"):
        parse_samples([json.dumps(row)], source="x")
    with pytest.raises(SampleError, match=r"^x:2: not valid JSON"):
        parse_samples([json.dumps(GOOD), "{oops"], source="x")
    with pytest.raises(SampleError, match=r"^x:1: expected a JSON object"):
        parse_samples(["[1, 2]"], source="x")

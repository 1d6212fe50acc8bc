"""The roofline's physics: small-chunk cost, soft bandwidth saturation, shared HBM in co-runs.

Checked against the public figures docs/latency-model.md cites, with margins
wide enough that only a change of the physics (not of a constant within its
source's spread) fails them.
"""

import json
from pathlib import Path

import pytest

from drift_sgl.latency import DeviceIdentity, ModelIdentity
from drift_sgl.latency.fit import UNMEASURED_GUARD
from drift_sgl.latency.roofline import (
    CENTRAL_PHYSICS,
    GPU_SPECS,
    ModelShape,
    Physics,
    Roofline,
    estimate_profile,
)

LLAMA_8B = Path(__file__).resolve().parents[2] / "bench" / "models" / "llama-3.1-8b"
CONFIG = json.loads((LLAMA_8B / "config.json").read_text())


@pytest.fixture(scope="module")
def h100():
    return Roofline(ModelShape.from_hf_config(CONFIG, "bfloat16"), GPU_SPECS["h100"])


def test_short_chunks_cost_more_per_token(h100):
    per_token = {n: h100.prefill_ms(n, 0, 1, 132) / n for n in (128, 256, 2048)}
    # Near the ridge compute and memory do not overlap fully (a 256-row GEMM
    # runs at ~69% of a large one's rate, vllm#17126): 256 tokens pay 20-50% more.
    assert 1.2 < per_token[256] / per_token[2048] < 1.5
    assert per_token[128] > per_token[256]
    without = Roofline(h100.shape, h100.spec, Physics(overlap_loss=0.0))
    assert without.prefill_ms(256, 0, 1, 132) < h100.prefill_ms(256, 0, 1, 132)


def test_decode_bandwidth_saturates_softly(h100):
    # Green contexts on an H200, decode batch 16 against the whole GPU
    # (sglang-omni#1934): 1.33x at 32 SMs, 1.21x at 48, 1.09x at 64, 1.06x at 96.
    h200 = Roofline(h100.shape, GPU_SPECS["h200"])
    whole = h200.decode_ms(16, 16 * 1024, 132)
    for sm, published in ((32, 1.33), (48, 1.21), (64, 1.09), (96, 1.06)):
        assert h200.decode_ms(16, 16 * 1024, sm) / whole == pytest.approx(published, abs=0.06)
    assert CENTRAL_PHYSICS.bandwidth_fraction(1.0) == pytest.approx(1.0)
    assert CENTRAL_PHYSICS.bandwidth_fraction(0.0) == 0.0


def test_co_runs_share_bandwidth(h100):
    def slowdown(new, batch, prefill_sm):
        prefill, decode = h100.prefill_work(new, 0, 1), h100.decode_work(batch, batch * 1024)
        both = h100.corun_ms(prefill, prefill_sm, decode, 132 - prefill_sm)
        alone = (
            h100.prefill_ms(new, 0, 1, prefill_sm),
            h100.decode_ms(batch, batch * 1024, 132 - prefill_sm),
        )
        return [b / a for a, b in zip(alone, both, strict=True)]

    # A long prefill is compute-bound and leaves decode the bandwidth.
    assert slowdown(8192, 64, 88) == [1.0, 1.0]
    # A short chunk streams the weights too: both slow, neither below its solo time.
    prefill, decode = slowdown(128, 64, 88)
    assert prefill > 1.2 and decode > 1.2
    for new in (128, 512, 2048):
        for sm in (40, 66, 100):
            assert min(slowdown(new, 16, sm)) >= 1.0


def test_an_estimate_keeps_the_assumed_margin_and_the_modelled_typical_slowdown():
    model = ModelIdentity.from_hf_config(CONFIG, "bfloat16")
    spec = GPU_SPECS["h100"]
    profile = estimate_profile(
        CONFIG, model, spec, DeviceIdentity("cuda", spec.name, spec.sms), "estimate:h100"
    )
    # The simulator's typical slowdown is the model's: heavy for short chunks only.
    assert profile.co_run_slowdown("prefill", 66, 128) > 1.2
    assert profile.co_run_slowdown("prefill", 66, 4096) == pytest.approx(1.0)
    assert 1.0 <= profile.co_run_slowdown("decode", 66, 32) < UNMEASURED_GUARD
    # The planner's worst case is the assumed margin, or the typical slowdown
    # where that is higher: the plan never expects less than the simulation charges.
    assert profile.decode_ms(32, 32 * 1024, 66, worst_case=True) == pytest.approx(
        UNMEASURED_GUARD * profile.decode_ms(32, 32 * 1024, 66)
    )
    for sm in (8, 40, 66, 100, 124):
        for new in (128, 256, 700, 2048, 16384):
            typical = profile.co_run_slowdown("prefill", sm, new)
            # (at least: fewer SMs are never guarded less than more)
            assert profile.guard.factor("prefill", sm, new) >= max(UNMEASURED_GUARD, typical)
    # A long prefill is not charged a short chunk's margin.
    assert (
        profile.guard.factor("prefill", 66, 4096)
        == UNMEASURED_GUARD
        < (profile.guard.factor("prefill", 66, 128))
    )
    assert profile.info["assumptions"]["overlap_loss"] == CENTRAL_PHYSICS.overlap_loss


def test_physics_overrides_are_checked():
    assert CENTRAL_PHYSICS.with_overrides({"overlap_loss": 0.5}).overlap_loss == 0.5
    with pytest.raises(ValueError, match="unknown physics constants"):
        CENTRAL_PHYSICS.with_overrides({"overlap": 0.5})


def test_fixed_cost_scale_multiplies_the_fixed_cost_of_every_forward(h100):
    spec, layers = h100.spec, h100.shape.layers
    fixed = spec.fixed_ms + spec.per_layer_ms * layers
    scaled = Roofline(h100.shape, spec, CENTRAL_PHYSICS.with_overrides({"fixed_cost_scale": 4.0}))
    for prefill_args in ((128, 0, 1, 132), (4096, 2000, 2, 66)):
        added = scaled.prefill_ms(*prefill_args) - h100.prefill_ms(*prefill_args)
        assert added == pytest.approx(3 * fixed)
    assert scaled.decode_ms(1, 1024, 132) - h100.decode_ms(1, 1024, 132) == pytest.approx(3 * fixed)

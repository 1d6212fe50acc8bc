"""A latency profile before any measurement: a roofline from shapes and peak figures.

Every forward is charged its compute time and its memory time, the longer in
full and a fraction (``Physics.overlap_loss``) of the shorter, which models the
imperfect overlap of the two near the ridge point (it is what makes a
256-token chunk cost more per token than a 4096-token one), plus a fixed
launch cost. Compute scales with the SM share; bandwidth rises with the share
and saturates softly. When prefill and decode run on complementary partitions
they share the HBM: if their demands exceed it, each gets it in proportion to
its demand. The numbers are sampled on a grid, solo and co-run, and fitted with
the same fitter as measured samples, so an estimate is an ordinary profile,
flagged ``estimated``. Every constant and its source is in
docs/latency-model.md; a measured profile replaces all of them.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from drift_sgl.latency.fit import UNMEASURED_GUARD, fit_latency_model
from drift_sgl.latency.identity import DeviceIdentity, ModelIdentity, text_config
from drift_sgl.latency.model import LatencyModel
from drift_sgl.latency.samples import Sample


@dataclass(frozen=True)
class Physics:
    """The unmeasured constants of the roofline, at their central values.

    Sources and plausible ranges: docs/latency-model.md, "Where each constant
    comes from"; ``bench/sim_sensitivity.py`` sweeps them.
    """

    #: Fraction of peak dense FLOP/s that large GEMMs reach (vendor peak is never met).
    compute_efficiency: float = 0.7
    #: Fraction of peak memory bandwidth that streaming kernels reach.
    bandwidth_efficiency: float = 0.85
    #: SM share at which a partition reaches half of the whole GPU's bandwidth
    #: gain: bandwidth(share) = share * (1 + h) / (share + h) of the whole's.
    bandwidth_half_share: float = 0.13
    #: Fraction of the shorter of compute and memory time not hidden under the longer.
    overlap_loss: float = 0.3
    #: Slowdown of a co-running phase beyond sharing HBM (L2, scheduling): none known.
    co_run_extra: float = 1.0
    #: Multiplier on the device's fixed cost per forward and per layer
    #: (``DeviceSpec.fixed_ms``, ``per_layer_ms``): no public figure isolates it.
    fixed_cost_scale: float = 1.0

    def bandwidth_fraction(self, share: float) -> float:
        """Fraction of the whole GPU's streaming bandwidth that ``share`` of its SMs reach."""
        h = self.bandwidth_half_share
        return min(1.0, share * (1 + h) / (share + h)) if share > 0 else 0.0

    def with_overrides(self, overrides: dict[str, float]) -> Physics:
        unknown = set(overrides) - set(asdict(self))
        if unknown:
            known = list(asdict(self))
            raise ValueError(f"unknown physics constants {sorted(unknown)}; known: {known}")
        return Physics(**{**asdict(self), **overrides})


#: The central values (docs/latency-model.md).
CENTRAL_PHYSICS = Physics()


@dataclass(frozen=True)
class DeviceSpec:
    """Published peak figures: dense 16-bit tensor FLOP/s and memory bandwidth."""

    name: str
    sms: int
    peak_tflops: float
    bandwidth_gbs: float
    #: Fixed cost of one forward pass plus per layer, in ms (launches, syncs).
    fixed_ms: float = 0.15
    per_layer_ms: float = 0.01
    #: SM share step (green-context granularity).
    granularity: int = 8


#: Dense BF16 tensor-core peaks without sparsity, from the vendors' data sheets.
GPU_SPECS = {
    "h100": DeviceSpec("NVIDIA H100 80GB HBM3", 132, 989.4, 3350),
    "h100-pcie": DeviceSpec("NVIDIA H100 PCIe", 114, 756.0, 2000),
    "h100-nvl": DeviceSpec("NVIDIA H100 NVL", 132, 835.0, 3900),
    "h200": DeviceSpec("NVIDIA H200", 132, 989.4, 4800),
    "h20": DeviceSpec("NVIDIA H20", 78, 148.0, 4000),
    "b200": DeviceSpec("NVIDIA B200", 148, 2250.0, 8000),
    "a100": DeviceSpec("NVIDIA A100-SXM4-80GB", 108, 312.0, 2039, granularity=2),
    "a100-40gb": DeviceSpec("NVIDIA A100-SXM4-40GB", 108, 312.0, 1555, granularity=2),
    "l40s": DeviceSpec("NVIDIA L40S", 142, 362.0, 864, granularity=2),
    "a10g": DeviceSpec("NVIDIA A10G", 80, 125.0, 600, granularity=2),
    "l4": DeviceSpec("NVIDIA L4", 58, 121.0, 300, granularity=2),
}


def gpu_key_for(device_name: str) -> str | None:
    """The ``GPU_SPECS`` key of a CUDA device name (``NVIDIA H100 80GB HBM3`` -> h100)."""
    name = device_name.lower()
    if "h100" in name:
        return "h100-pcie" if "pcie" in name else "h100-nvl" if "nvl" in name else "h100"
    if "a100" in name:
        return "a100-40gb" if "40gb" in name else "a100"
    # Whole words only: "L40" is not an "L4", "H200" is not an "H20".
    words = set(re.split(r"[^a-z0-9]+", name))
    return next(
        (key for key in ("h200", "h20", "b200", "l40s", "a10g", "l4") if key in words), None
    )


@dataclass(frozen=True)
class ModelShape:
    """What the roofline needs from config.json."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    #: MLP width a token passes through (MoE: its routed and shared experts).
    intermediate: int
    #: MLP width of all weights (MoE: every expert), which a forward may read.
    stored_intermediate: int
    vocab: int
    dtype_bytes: int

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], dtype: str) -> ModelShape:
        text = text_config(config)
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        routed = int(text.get("num_experts_per_tok") or 0)
        expert_size = int(text.get("moe_intermediate_size") or text.get("intermediate_size") or 0)
        shared = int(text.get("shared_expert_intermediate_size") or 0)
        experts = int(
            text.get("num_experts") or text.get("num_local_experts") or text.get("n_routed_experts")
            or routed
        )  # fmt: skip
        # Mixture-of-experts: the experts a token is routed to do its MLP work,
        # but the weights of all of them are stored (and read by large batches).
        if routed:
            intermediate = routed * expert_size + shared
            stored = experts * expert_size + shared
        else:
            intermediate = stored = int(text["intermediate_size"])
        return cls(
            layers=int(text["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            intermediate=intermediate,
            stored_intermediate=stored,
            vocab=int(text.get("vocab_size") or 32000),
            dtype_bytes=2 if dtype in ("float16", "bfloat16") else 1 if "8" in dtype else 4,
        )

    @property
    def attention_params(self) -> int:
        return self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)

    @property
    def layer_params(self) -> int:
        """Parameters one token passes through per layer."""
        return self.attention_params + 3 * self.hidden * self.intermediate

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        """All stored weights (every expert of an MoE), read once per forward."""
        per_layer = self.attention_params + 3 * self.hidden * self.stored_intermediate
        return (self.layers * per_layer + 2 * self.hidden * self.vocab) * self.dtype_bytes


def memory_info(config: dict[str, Any], dtype: str) -> dict[str, int]:
    """A profile's ``info`` entries for the model's memory, from config.json's shapes:
    its stored weights and KV bytes per token, which size the simulator's KV pool
    (``sim.cli.derive_kv_capacity``; the profile's identity has no head size)."""
    shape = ModelShape.from_hf_config(config, dtype)
    return {"weight_bytes": shape.weight_bytes, "kv_bytes_per_token": shape.kv_bytes_per_token}


@dataclass(frozen=True)
class Work:
    """What one forward asks of the GPU: FLOPs and bytes moved."""

    flops: float
    nbytes: float


class Roofline:
    """Analytic latency of one forward pass on ``sm`` of the device's SMs."""

    def __init__(
        self, shape: ModelShape, spec: DeviceSpec, physics: Physics = CENTRAL_PHYSICS
    ) -> None:
        self.shape = shape
        self.spec = spec
        self.physics = physics

    # ------------------------------------------------------------- work

    def prefill_work(self, new: int, prefix: int, seqs: int) -> Work:
        s = self.shape
        attention = 4 * s.heads * s.head_dim * (new * new / (2 * seqs) + new * prefix / seqs)
        flops = s.layers * (2 * s.layer_params * new + attention) + 2 * s.hidden * s.vocab * seqs
        return Work(flops, s.weight_bytes + (prefix + new) * s.kv_bytes_per_token)

    def decode_work(self, batch: int, kv: int) -> Work:
        s = self.shape
        flops = s.layers * (2 * s.layer_params * batch + 4 * s.heads * s.head_dim * kv)
        flops += 2 * s.hidden * s.vocab * batch
        return Work(flops, s.weight_bytes + kv * s.kv_bytes_per_token)

    # ------------------------------------------------------------- time

    @property
    def _fixed_ms(self) -> float:
        """Launch cost of one forward, whatever its size."""
        spec = self.spec
        return (
            spec.fixed_ms + spec.per_layer_ms * self.shape.layers
        ) * self.physics.fixed_cost_scale

    def _bandwidth(self, share: float) -> float:
        """Bytes per ms that ``share`` of the SMs stream from memory."""
        whole = self.spec.bandwidth_gbs * 1e6 * self.physics.bandwidth_efficiency
        return whole * self.physics.bandwidth_fraction(share)

    def _time_ms(self, work: Work, sm: int, bandwidth: float | None = None) -> float:
        """Time on ``sm`` SMs, streaming at ``bandwidth`` bytes/ms (default: the share's)."""
        share = sm / self.spec.sms
        compute_ms = work.flops / (
            self.spec.peak_tflops * 1e9 * self.physics.compute_efficiency * share
        )
        memory_ms = work.nbytes / (bandwidth or self._bandwidth(share))
        longer, shorter = max(compute_ms, memory_ms), min(compute_ms, memory_ms)
        return self._fixed_ms + longer + self.physics.overlap_loss * shorter

    def prefill_ms(self, new: int, prefix: int, seqs: int, sm: int) -> float:
        return self._time_ms(self.prefill_work(new, prefix, seqs), sm)

    def decode_ms(self, batch: int, kv: int, sm: int) -> float:
        return self._time_ms(self.decode_work(batch, kv), sm)

    def corun_ms(
        self, prefill: Work, prefill_sm: int, decode: Work, decode_sm: int
    ) -> tuple[float, float]:
        """(prefill ms, decode ms) with both on their partitions at once, sharing HBM.

        Each phase alone draws its bytes over its solo time. When the two draws
        exceed what the whole GPU streams, each gets the whole in proportion to
        its draw, and runs as if its partition streamed that much. Decode, which
        draws nearly all its partition can, is slowed most beside a short
        prefill chunk, which draws a lot; a long prefill is compute-bound and
        hardly draws at all.
        """
        solo = (self._time_ms(prefill, prefill_sm), self._time_ms(decode, decode_sm))
        busy = [t - self._fixed_ms for t in solo]  # the time its bytes are drawn over
        draws = [w.nbytes / b for w, b in zip((prefill, decode), busy, strict=True)]
        whole, extra = self._bandwidth(1.0), self.physics.co_run_extra
        if sum(draws) <= whole:
            return extra * solo[0], extra * solo[1]
        scale = whole / sum(draws)
        return (
            extra * max(solo[0], self._time_ms(prefill, prefill_sm, draws[0] * scale)),
            extra * max(solo[1], self._time_ms(decode, decode_sm, draws[1] * scale)),
        )


def share_grid(total: int, granularity: int) -> list[int]:
    """SM shares a device can be split into: multiples of the granularity, and all."""
    return sorted({*range(granularity, total, granularity), total})


_DECODE_BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def roofline_samples(roofline: Roofline, sms: list[int], max_tokens: int) -> list[Sample]:
    """Noise-free samples of the roofline on a log grid, up to ``max_tokens`` per forward."""
    total = roofline.spec.sms
    sizes = [m * 2**k for k in range(4, int(math.log2(max_tokens))) for m in (2, 3)]
    samples = []
    for sm, new, ratio, seqs in itertools.product(sms, sizes, (0, 1, 4), (1, 4)):
        if new >= seqs and new * (1 + ratio) <= max_tokens:
            latency = roofline.prefill_ms(new, new * ratio, seqs, sm)
            samples.append(Sample("prefill", sm, total, new, new * ratio, seqs, 0, False, latency))
    for sm, batch, per_seq in itertools.product(sms, _DECODE_BATCHES, (256, 1024, 4096, 16384)):
        if batch * per_seq <= max_tokens * 8:
            latency = roofline.decode_ms(batch, batch * per_seq, sm)
            samples.append(
                Sample("decode", sm, total, batch, 0, batch, batch * per_seq, False, latency)
            )
    return samples


#: The modelled co-runs: each phase at every power-of-two size (one per size
#: region of the guard table), beside partners of the other phase from small
#: to large; a region's typical slowdown is the median over its partners.
_CO_RUN_PREFILLS = tuple(2**k for k in range(7, 15))  # 128 .. 16384 new tokens
_CO_RUN_DECODES = tuple(2**k for k in range(0, 10))  # 1 .. 512 sequences
_PREFILL_PARTNERS = (4, 16, 64, 256)
_DECODE_PARTNERS = (128, 512, 2048, 8192)
_CO_RUN_CONTEXT = 1024


def roofline_co_run_samples(roofline: Roofline, sms: list[int]) -> list[Sample]:
    """Both phases on every split in ``sms`` (prefill's share), each beside its partners."""
    total = roofline.spec.sms

    def decode_work(batch: int) -> Work:
        return roofline.decode_work(batch, batch * _CO_RUN_CONTEXT)

    samples = []
    for sm in (s for s in sms if s < total):
        for new, batch in itertools.product(_CO_RUN_PREFILLS, _PREFILL_PARTNERS):
            work = roofline.prefill_work(new, 0, 1)
            latency = roofline.corun_ms(work, sm, decode_work(batch), total - sm)[0]
            samples.append(Sample("prefill", sm, total, new, 0, 1, 0, True, latency))
        for batch, new in itertools.product(_CO_RUN_DECODES, _DECODE_PARTNERS):
            work = roofline.prefill_work(new, 0, 1)
            latency = roofline.corun_ms(work, sm, decode_work(batch), total - sm)[1]
            kv = batch * _CO_RUN_CONTEXT
            samples.append(Sample("decode", total - sm, total, batch, 0, batch, kv, True, latency))
    return samples


def estimate_profile(
    config: dict[str, Any],
    model: ModelIdentity,
    spec: DeviceSpec,
    device: DeviceIdentity,
    source: str,
    max_tokens: int = 32768,
    physics: Physics = CENTRAL_PHYSICS,
) -> LatencyModel:
    """An ``estimated`` profile: the roofline of ``spec`` fitted into the model's form.

    Its typical co-run slowdowns come from the roofline's shared-bandwidth
    co-runs; its worst case, the planner's margin, is the assumed
    ``UNMEASURED_GUARD`` or the typical slowdown where that is higher
    (``fit.fit_guard``): modelled co-runs are no measurement of a worst case.
    """
    shape = ModelShape.from_hf_config(config, model.dtype)
    roofline = Roofline(shape, spec, physics)
    # Every 8th share is enough: between them predictions interpolate in 1/SM,
    # which is exact for the compute-bound part of a roofline.
    shares = share_grid(spec.sms, max(spec.granularity, 8))
    samples = roofline_samples(roofline, shares, max_tokens)
    samples += roofline_co_run_samples(roofline, shares)
    info = {
        "peak_tflops": spec.peak_tflops,
        "bandwidth_gbs": spec.bandwidth_gbs,
        "assumptions": {**asdict(physics), "contention_guard": UNMEASURED_GUARD},
        "note": "errors are of the fitted form against the roofline, not against measurements",
        **memory_info(config, model.dtype),
    }
    return fit_latency_model(
        samples,
        device,
        model,
        holdout=0.2,
        source=source,
        estimated=True,
        info=info,
        sm_granularity=spec.granularity,
        co_runs_measured=False,
    )


def measure_cpu_spec(threads: int, name: str) -> DeviceSpec:
    """Peak figures of this CPU (float32 matmul FLOP/s, copy bandwidth) in ~0.5 s."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(512, 512)
        b = torch.randn(512, 512)
        flops = _best_rate(lambda: torch.mm(a, b), 2 * 512**3)
        src = torch.empty(8 * 2**20)  # 32 MiB: beyond the caches
        dst = torch.empty_like(src)
        bandwidth = _best_rate(lambda: dst.copy_(src), 2 * src.numel() * 4)
    finally:
        torch.set_num_threads(previous)
    # Python and framework overhead dominate small forwards on a CPU.
    return DeviceSpec(
        name=name,
        sms=threads,
        peak_tflops=flops / 1e12 / CENTRAL_PHYSICS.compute_efficiency,
        bandwidth_gbs=bandwidth / 1e9 / CENTRAL_PHYSICS.bandwidth_efficiency,
        fixed_ms=2.0,
        per_layer_ms=0.5,
        granularity=1,
    )


def _best_rate(work: Callable[[], object], amount: float, repeats: int = 5) -> float:
    work()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return amount / best

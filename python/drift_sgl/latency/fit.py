"""Fit a ``LatencyModel`` to samples.

Per phase and profiled SM count, the coefficients are a non-negative least
squares fit weighted by 1/latency, i.e. it minimises *relative* error, the
error the dispatcher cares about (a 2 ms miss matters on a 10 ms decode step,
not on a 2 s prefill). Co-run samples are not fitted: they measure the
contention guard against the solo fit.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares, nnls

from drift_sgl.latency.forms import (
    FEATURES,
    decode_features,
    prefill_features,
    size_bucket,
)
from drift_sgl.latency.identity import DeviceIdentity, ModelIdentity
from drift_sgl.latency.model import ContentionGuard, LatencyModel, PhaseFit
from drift_sgl.latency.samples import PHASES, Sample

#: Guard factor where no co-run was measured: an assumption (docs/latency-model.md).
UNMEASURED_GUARD = 1.25
#: A phase needs this many solo samples to hold some out; fewer are scored in-sample.
MIN_SAMPLES_FOR_HOLDOUT = 10


class FitError(ValueError):
    """The samples cannot produce a model; the message says what is missing."""


@dataclass(frozen=True)
class PhaseError:
    """Absolute percentage error of predictions (fractions: 0.05 = 5%)."""

    mean_ape: float
    p95_ape: float
    max_ape: float
    n: int
    held_out: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "mean_ape": self.mean_ape,
            "p95_ape": self.p95_ape,
            "max_ape": self.max_ape,
            "n": self.n,
            "held_out": self.held_out,
        }


def features_of(sample: Sample) -> tuple[float, ...]:
    if sample.phase == "prefill":
        return prefill_features(sample.new_tokens, sample.prefix_tokens, sample.batch_size)
    return decode_features(sample.batch_size, sample.kv_tokens)


def size_of(sample: Sample) -> int:
    """A sample's size: new tokens (prefill) or batch size (decode); picks its guard region."""
    return sample.new_tokens if sample.phase == "prefill" else sample.batch_size


def predict_solo(model: LatencyModel, sample: Sample) -> float:
    fit = model.prefill if sample.phase == "prefill" else model.decode
    return fit.predict(sample.sm, features_of(sample))


def _relative_design(rows: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Features divided by latency (so the target is 1) and column-scaled; and the scale."""
    a = np.array([features_of(s) for s in rows], dtype=np.float64)
    a = a / np.array([s.latency_ms for s in rows], dtype=np.float64)[:, None]
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    return a / scale, scale


def _nnls_relative(rows: Sequence[Sample]) -> tuple[float, ...]:
    a, scale = _relative_design(rows)
    try:
        coefs, _ = nnls(a, np.ones(len(rows)), maxiter=50 * a.shape[1])
    except RuntimeError as err:  # scipy: "Maximum number of iterations reached"
        raise FitError(f"the least-squares fit did not converge ({err})") from None
    return tuple(float(c) for c in coefs / scale)


def _linear(form: tuple[float, ...], sample: Sample) -> float:
    return sum(c * x for c, x in zip(form, features_of(sample), strict=True))


def _relative_sse(forms: Sequence[tuple[float, ...]], rows: Sequence[Sample]) -> float:
    total = 0.0
    for sample in rows:
        predicted = max(_linear(form, sample) for form in forms)
        total += (predicted / sample.latency_ms - 1) ** 2
    return total


def fit_branches(rows: Sequence[Sample]) -> tuple[tuple[float, ...], ...]:
    """One linear form, or two whose maximum fits better (a roofline-like kink).

    The two-branch fit alternates: each row goes to the branch that predicts it
    larger (the binding one), each branch is refitted on its rows, until the
    assignment settles. Alternation finds a local optimum only, so it starts
    from several splits (by size quantile, and by the sign of the one-form
    residual) and keeps the best.
    """
    single = (_nnls_relative(rows),)
    best, best_error = single, _relative_sse(single, rows)
    minimum = len(features_of(rows[0])) + 1
    if len(rows) < 2 * minimum:
        return best
    sizes = sorted(size_of(s) for s in rows)
    starts = []
    for quantile in (0.25, 0.5, 0.75):
        cut = sizes[int(quantile * (len(sizes) - 1))]
        starts.append([int(size_of(s) > cut) for s in rows])
    starts.append([int(_linear(single[0], s) < s.latency_ms) for s in rows])
    for start in starts:
        forms, error = _alternate(rows, start, minimum)
        if forms:
            # Alternation stalls where the kink is shallow: polish both forms
            # together (non-negative least squares on the max itself).
            forms, error = _polish(rows, forms)
        if error < best_error * (1 - 1e-9):
            best, best_error = forms, error
    return best


def _polish(
    rows: Sequence[Sample], forms: tuple[tuple[float, ...], ...]
) -> tuple[tuple[tuple[float, ...], ...], float]:
    a, scale = _relative_design(rows)
    width = a.shape[1]

    def residuals(theta: np.ndarray) -> np.ndarray:
        return np.maximum(a @ theta[:width], a @ theta[width:]) - 1.0

    start = np.concatenate([np.asarray(f) * scale for f in forms])
    result = least_squares(residuals, start, bounds=(0.0, np.inf), method="trf", max_nfev=200)
    theta = result.x / np.concatenate([scale, scale])
    polished = (tuple(float(c) for c in theta[:width]), tuple(float(c) for c in theta[width:]))
    return polished, _relative_sse(polished, rows)


def _alternate(
    rows: Sequence[Sample], binding: list[int], minimum: int
) -> tuple[tuple[tuple[float, ...], ...], float]:
    best: tuple[tuple[float, ...], ...] = ()
    best_error = math.inf
    for _ in range(30):
        groups = [[s for s, b in zip(rows, binding, strict=True) if b == i] for i in range(2)]
        if min(len(g) for g in groups) < minimum:
            break
        forms = tuple(_nnls_relative(g) for g in groups)
        error = _relative_sse(forms, rows)
        if error < best_error:
            best, best_error = forms, error
        regrouped = [int(_linear(forms[1], s) > _linear(forms[0], s)) for s in rows]
        if regrouped == binding:
            break
        binding = regrouped
    return best, best_error


def fit_phase(phase: str, rows: Sequence[Sample]) -> PhaseFit:
    """Coefficients per profiled SM count."""
    by_sm: dict[int, list[Sample]] = defaultdict(list)
    for sample in rows:
        by_sm[sample.sm].append(sample)
    branches = {sm: fit_branches(group) for sm, group in sorted(by_sm.items())}
    return PhaseFit(features=FEATURES[phase], branches=branches)


def phase_error(model: LatencyModel, rows: Sequence[Sample], held_out: bool) -> PhaseError:
    errors = np.array([abs(predict_solo(model, s) - s.latency_ms) / s.latency_ms for s in rows])
    return PhaseError(
        mean_ape=float(errors.mean()),
        p95_ape=float(np.percentile(errors, 95)),
        max_ape=float(errors.max()),
        n=len(rows),
        held_out=held_out,
    )


def fit_guard(
    model: LatencyModel, co_runs: Sequence[Sample], measured: bool = True
) -> ContentionGuard:
    """Co-run/solo ratios per phase, SM count and size bucket: worst and median.

    The median (never below 1) is kept as observed: the typical slowdown a
    simulation charges. The worst (never below 1) is filled and made monotone,
    so worst-case predictions are monotone like the solo ones: per SM count, a
    bucket takes the worst ratio of any bucket up to it (a bucket below every
    observation takes the first one); per bucket, an SM count takes the worst
    ratio of any count from it up (fewer SMs are never guarded less). A phase
    without co-runs uses ``UNMEASURED_GUARD``.

    Modelled co-runs (``measured=False``, an estimate) are no measurement of
    the worst case: the planner's margin there is the assumed
    ``UNMEASURED_GUARD``, raised to the typical slowdown where that is higher
    (short prefills beside decode), so that the plan never expects less than
    the simulation charges. Such a table is only made monotone across SM
    counts: along sizes it falls where the model says short chunks suffer most,
    and filling it upwards would charge every long prefill a short chunk's
    slowdown.
    """
    observed: dict[str, dict[int, dict[int, list[float]]]] = {}
    for sample in co_runs:
        ratio = max(1.0, sample.latency_ms / predict_solo(model, sample))
        buckets = observed.setdefault(sample.phase, {}).setdefault(sample.sm, {})
        buckets.setdefault(size_bucket(size_of(sample)), []).append(ratio)

    def reduce(how: Callable[[list[float]], float]) -> dict[str, dict[int, dict[int, float]]]:
        return {
            phase: {
                sm: {b: how(ratios) for b, ratios in buckets.items()}
                for sm, buckets in by_sm.items()
            }
            for phase, by_sm in observed.items()
        }

    if measured:
        worst = reduce(lambda ratios: max(1.0, *ratios))
        ratios = {p: _never_less_with_fewer_sms(_filled_up(t)) for p, t in worst.items()}
    else:
        margin = reduce(lambda ratios: max(UNMEASURED_GUARD, statistics.median(ratios)))
        ratios = {p: _never_less_with_fewer_sms(t) for p, t in margin.items()}
    return ContentionGuard(
        ratios=ratios, default=UNMEASURED_GUARD, expected=reduce(statistics.median)
    )


def _filled_up(by_sm: dict[int, dict[int, float]]) -> dict[int, dict[int, float]]:
    """Per SM count, every bucket: the worst of any bucket up to it."""
    buckets = sorted({b for row in by_sm.values() for b in row})
    table: dict[int, dict[int, float]] = {}
    for sm, row in by_sm.items():
        first = row[min(row)]
        worst, filled = 1.0, {}
        for bucket in buckets:
            worst = max(worst, row.get(bucket, first if bucket < min(row) else worst))
            filled[bucket] = worst
        table[sm] = filled
    return table


def _never_less_with_fewer_sms(table: dict[int, dict[int, float]]) -> dict[int, dict[int, float]]:
    """Per bucket, an SM count takes the worst factor of any count from it up."""
    above: dict[int, float] = {}
    out: dict[int, dict[int, float]] = {}
    for sm in sorted(table, reverse=True):
        out[sm] = {}
        for bucket, factor in sorted(table[sm].items()):
            above[bucket] = max(above.get(bucket, 1.0), factor)
            out[sm][bucket] = above[bucket]
    return out


def split_holdout(
    rows: Sequence[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, held out); the same seed always holds out the same rows."""
    if fraction <= 0 or len(rows) < MIN_SAMPLES_FOR_HOLDOUT:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    count = min(len(rows) - 1, max(1, math.floor(fraction * len(rows) + 0.5)))
    held = set(order[:count])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def fit_latency_model(
    samples: Sequence[Sample],
    device: DeviceIdentity,
    model: ModelIdentity,
    holdout: float = 0.2,
    seed: int = 0,
    source: str = "measured",
    estimated: bool = False,
    info: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    sm_granularity: int | None = None,
    co_runs_measured: bool = True,
) -> LatencyModel:
    """Fit both phases and the guard; errors are measured on held-out solo samples.

    The held-out error belongs to a fit on the remaining samples; the returned
    model is then refitted on all of them. ``sm_granularity`` defaults to the
    largest step that divides every profiled share. With
    ``co_runs_measured=False`` (an estimate's modelled co-runs) the worst case
    is the assumed margin, or the typical slowdown where that is higher.
    """
    if not 0 <= holdout < 1:
        raise FitError(f"holdout must be in [0, 1), got {holdout}")
    totals = {s.total_sm for s in samples}
    if len(totals) > 1:
        raise FitError(f"samples come from devices of different sizes (total_sm {totals})")
    if totals and totals != {device.total_sm}:
        raise FitError(f"samples have total_sm {totals.pop()}, the device has {device.total_sm}")
    solo = {phase: [s for s in samples if s.phase == phase and not s.co_run] for phase in PHASES}
    for phase, rows in solo.items():
        if not rows:
            raise FitError(f"no solo (co_run false) {phase} samples to fit")

    solo_count = sum(map(len, solo.values()))
    co_run_count = len(samples) - solo_count
    facts = {**(info or {}), "solo_samples": solo_count, "co_run_samples": co_run_count}

    def build(fits: dict[str, PhaseFit], guard: ContentionGuard, errors: dict) -> LatencyModel:
        return LatencyModel(
            device=device,
            model=model,
            prefill=fits["prefill"],
            decode=fits["decode"],
            guard=guard,
            sm_granularity=sm_granularity or math.gcd(*{s.sm for s in samples}),
            estimated=estimated,
            source=source,
            errors=errors,
            info=facts,
        )

    placeholder = ContentionGuard(ratios={}, default=UNMEASURED_GUARD)
    splits = {phase: split_holdout(rows, holdout, seed) for phase, rows in solo.items()}
    fits = {p: fit_phase(p, rows) for p, rows in solo.items()}
    final = build(fits, placeholder, {})
    if any(held for _, held in splits.values()):
        trained = build({p: fit_phase(p, t) for p, (t, _) in splits.items()}, placeholder, {})
    else:
        trained = final
    errors = {}
    for phase, (_, held) in splits.items():
        if held:
            scored = phase_error(trained, held, held_out=True)
        else:
            scored = phase_error(final, solo[phase], held_out=False)
        errors[phase] = scored.to_json()
        if progress:
            where = "held-out" if scored.held_out else "in-sample (too few to hold out)"
            progress(
                f"{phase}: {where} error over {scored.n} samples: mean {scored.mean_ape:.1%}, "
                f"p95 {scored.p95_ape:.1%}, max {scored.max_ape:.1%}"
            )
    co_runs = [s for s in samples if s.co_run]
    return build(fits, fit_guard(final, co_runs, co_runs_measured), errors)

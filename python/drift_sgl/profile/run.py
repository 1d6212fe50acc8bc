"""``profile run``: measure, append every sample as it is taken, then fit.

The budget covers the whole profile, across interrupted runs: every sample
stores what it cost (``cost_s``), and a resumed run subtracts what earlier
runs spent and skips the points they measured.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from drift_sgl.latency.fit import FitError, fit_latency_model
from drift_sgl.latency.identity import DeviceIdentity, ModelIdentity
from drift_sgl.latency.model import LatencyModel
from drift_sgl.latency.samples import Sample, read_samples, write_sample
from drift_sgl.profile.plan import Limits, Point, plan_points

logger = logging.getLogger(__name__)

#: Refit the cost model after this many new samples.
REFIT_EVERY = 8
#: A prefill sample is the fastest of this many runs; a decode sample the fastest
#: of this many passes, each the median of this many steps (see the harness).
PREFILL_REPEATS = 3
DECODE_PASSES = 2
DECODE_STEPS = 5


class ProfileRunError(RuntimeError):
    """The run cannot go on (the message says why)."""


@dataclass(frozen=True)
class RunSettings:
    samples_path: Path
    budget_s: float
    max_tokens: int
    co_run: bool
    seed: int = 0


def existing_samples(path: Path, device: DeviceIdentity, model: ModelIdentity) -> list[Sample]:
    """Samples of an earlier, interrupted run of the same model and device."""
    if not path.exists():
        return []
    samples = read_samples(path)
    for sample in samples:
        if sample.extra.get("device") not in (None, device.name) or sample.extra.get(
            "model"
        ) not in (None, model.to_json()):
            raise ProfileRunError(
                f"{path} holds samples of another model or device; pass another --samples path"
            )
    return samples


class ShareControl:
    """Runs this process's forwards on a share of the device (CPU: threads on cores)."""

    def __init__(self, device: DeviceIdentity) -> None:
        self.device = device
        self.cores = sorted(os.sched_getaffinity(0))

    def shares(self) -> list[int]:
        if self.device.kind == "cpu":
            return list(range(1, len(self.cores) + 1))
        # Per-SM-share GPU profiling needs the green-context partitions.
        return [self.device.total_sm]

    def co_run_shares(self) -> list[int]:
        if self.device.kind != "cpu" or len(self.cores) < 2:
            return []
        return [len(self.cores) // 2]

    def use(self, sm: int) -> None:
        if self.device.kind == "cpu":
            import torch

            torch.set_num_threads(sm)
            os.sched_setaffinity(0, self.cores[:sm])

    def other_cores(self, sm: int) -> list[int]:
        return self.cores[sm:]


def predicted_cost_s(model: LatencyModel | None, point: Point) -> float:
    """Wall time a point will take (untimed setup and repeats included), from the current fit."""
    if model is None:
        return 0.0
    sm, seqs, worst = point.sm, point.seqs, point.co_run
    if point.phase == "prefill":
        prefix = seqs * point.prefix_per_seq
        setup = model.prefill_ms(prefix, 0, sm, batch_size=seqs) if prefix else 0.0
        timed = model.prefill_ms(seqs * point.new_per_seq, prefix, sm, worst, batch_size=seqs)
        total = PREFILL_REPEATS * (setup + timed)
    else:
        kv = seqs * point.kv_per_seq
        setup = model.prefill_ms(kv, 0, sm, batch_size=seqs)
        total = DECODE_PASSES * (setup + (DECODE_STEPS + 1) * model.decode_ms(seqs, kv, sm, worst))
    return 1.5 * total / 1e3


def measure(harness: Any, point: Point) -> tuple[float, int, int, int, int]:
    if point.phase == "prefill":
        new, prefix = [point.new_per_seq] * point.seqs, [point.prefix_per_seq] * point.seqs
        t = harness.prefill(new, prefix, repeats=PREFILL_REPEATS)
    else:
        t = harness.decode([point.kv_per_seq] * point.seqs, DECODE_STEPS, DECODE_PASSES)
    return t.latency_ms, t.new_tokens, t.prefix_tokens, t.batch_size, t.kv_tokens


def run_profile(
    harness: Any,
    device: DeviceIdentity,
    model: ModelIdentity,
    settings: RunSettings,
    make_co_runner: Callable[[list[int]], Any] | None,
    progress: Callable[[int, float, str], None],
) -> list[Sample]:
    """Measure until the budget or the candidates run out; returns every sample."""
    shares = ShareControl(device)
    samples = existing_samples(settings.samples_path, device, model)
    done = {s.extra.get("point") for s in samples}
    spent = sum(float(s.extra.get("cost_s", 0.0)) for s in samples)
    co_shares = shares.co_run_shares() if settings.co_run and make_co_runner else []
    limits = Limits(
        max_tokens=min(settings.max_tokens, harness.capacity_tokens),
        max_requests=harness.max_requests,
        max_seq_len=harness.max_seq_len,
    )
    points = plan_points(shares.shares(), co_shares, limits, settings.seed)
    todo = [p for p in points if p.key not in done]
    if samples:
        logger.info("resuming: %d samples (%.0f s) already measured", len(samples), spent)
    deadline = time.monotonic() + settings.budget_s - spent
    co_runner = None
    cost_model = _fit_quietly(samples, device, model)
    new_since_fit = 0
    try:
        with open(settings.samples_path, "a", encoding="utf-8") as out:
            for point in todo:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if predicted_cost_s(cost_model, point) > left:
                    continue
                started = time.monotonic()
                shares.use(point.sm)
                if point.co_run:
                    co_runner = co_runner or make_co_runner(shares.other_cores(point.sm))
                    from drift_sgl.profile.corun import CoRunShape

                    beside = CoRunShape.beside(point.phase)
                    co_runner.start(beside)
                elif co_runner is not None:
                    co_runner.pause()
                try:
                    latency, new, prefix, batch, kv = measure(harness, point)
                except (RuntimeError, torch.OutOfMemoryError) as err:
                    # One failed shape (out of memory, a backend limit) skips that
                    # point only; the run and the samples so far are kept.
                    logger.warning("skipped %s: %s", point.key, str(err).splitlines()[0])
                    continue
                finally:
                    if point.co_run:
                        co_runner.pause()
                cost = time.monotonic() - started
                extra = {
                    "point": point.key,
                    "cost_s": round(cost, 4),
                    "device": device.name,
                    "model": model.to_json(),
                }
                if point.co_run:
                    extra["co_phase"] = beside.phase
                    extra["co_sm"] = len(shares.other_cores(point.sm))
                sample = Sample(
                    point.phase, point.sm, device.total_sm, new, prefix, batch, kv,
                    point.co_run, latency, extra=extra,
                )  # fmt: skip
                write_sample(out, sample)
                samples.append(sample)
                progress(len(samples), max(0.0, deadline - time.monotonic()), point.key)
                new_since_fit += 1
                if new_since_fit >= REFIT_EVERY:
                    cost_model = _fit_quietly(samples, device, model) or cost_model
                    new_since_fit = 0
    finally:
        if co_runner is not None:
            co_runner.close()
    return samples


def _fit_quietly(
    samples: list[Sample], device: DeviceIdentity, model: ModelIdentity
) -> LatencyModel | None:
    try:
        return fit_latency_model(samples, device, model, holdout=0.0)
    except FitError:
        return None

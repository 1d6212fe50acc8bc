"""``profile run``: measure, append every sample as it is taken, then fit.

The budget is measuring time, across interrupted runs: every sample stores
what it cost (``cost_s``), and a resumed run subtracts what earlier runs spent
and skips the points they measured. Fixed overheads (loading the model, the
warm-up, starting the co-runner, fitting) come on top.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
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
        self._threads = None

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
        """Run this thread's forwards on ``sm`` threads pinned to the first ``sm`` cores.

        Best effort: OpenMP workers created earlier keep their own affinity.
        """
        if self.device.kind == "cpu":
            if self._threads is None:
                self._threads = torch.get_num_threads()
            torch.set_num_threads(sm)
            os.sched_setaffinity(0, self.cores[:sm])

    def restore(self) -> None:
        """Undo ``use``: all cores, the original thread count."""
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            os.sched_setaffinity(0, self.cores)

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


class CoRunSlot:
    """The co-runner process: started the first time a co-run point comes up."""

    def __init__(self, factory: Callable[[list[int]], Any] | None, shares: ShareControl) -> None:
        self._factory = factory
        self._shares = shares
        self._runner: Any | None = None
        #: Time spent starting the process: overhead, not charged to the budget.
        self.startup_s = 0.0

    @contextlib.contextmanager
    def beside(self, point: Point) -> Iterator[dict[str, Any]]:
        """Run the other phase while ``point`` is measured; yields the sample's extra keys."""
        if not point.co_run:
            yield {}
            return
        from drift_sgl.profile.corun import CoRunShape

        if self._runner is None:
            started = time.monotonic()
            self._runner = self._factory(self._shares.other_cores(point.sm))
            self.startup_s += time.monotonic() - started
        shape = CoRunShape.beside(point.phase)
        self._runner.start(shape)
        try:
            yield {"co_phase": shape.phase, "co_sm": len(self._runner.cores)}
        except BaseException:
            # Do not let a failed pause hide what is already going wrong.
            with contextlib.suppress(Exception):
                self._runner.pause()
            raise
        self._runner.pause()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()


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
    co_runs = CoRunSlot(make_co_runner, shares)
    cost_model = _fit_quietly(samples, device, model)
    try:
        with open(settings.samples_path, "a", encoding="utf-8") as out:
            for point in todo:
                left = settings.budget_s - spent
                if left <= 0:
                    break
                if predicted_cost_s(cost_model, point) > left:
                    continue
                sample, cost = _take_sample(harness, point, device, model, shares, co_runs)
                spent += cost
                if sample is None:
                    continue
                write_sample(out, sample)
                samples.append(sample)
                progress(len(samples), max(0.0, settings.budget_s - spent), point.key)
                if len(samples) % REFIT_EVERY == 0:
                    cost_model = _fit_quietly(samples, device, model) or cost_model
    finally:
        co_runs.close()
        shares.restore()
    return samples


def _take_sample(
    harness: Any,
    point: Point,
    device: DeviceIdentity,
    model: ModelIdentity,
    shares: ShareControl,
    co_runs: CoRunSlot,
) -> tuple[Sample | None, float]:
    """The sample (None if the shape failed) and the measuring time it cost."""
    started, startup_before = time.monotonic(), co_runs.startup_s
    shares.use(point.sm)
    measured = None
    with co_runs.beside(point) as co_extra:
        try:
            measured = measure(harness, point)
        except (RuntimeError, torch.OutOfMemoryError) as err:
            # One failed shape (out of memory, a backend limit) skips that point
            # only; the run and the samples so far are kept.
            logger.warning("skipped %s: %s", point.key, str(err).splitlines()[0])
    cost = time.monotonic() - started - (co_runs.startup_s - startup_before)
    if measured is None:
        return None, cost
    latency, new, prefix, batch, kv = measured
    extra = {
        "point": point.key,
        "cost_s": round(cost, 4),
        "device": device.name,
        "model": model.to_json(),
        **co_extra,
    }
    sample = Sample(
        point.phase, point.sm, device.total_sm, new, prefix, batch, kv, point.co_run, latency,
        extra=extra,
    )  # fmt: skip
    return sample, cost


def _fit_quietly(
    samples: list[Sample], device: DeviceIdentity, model: ModelIdentity
) -> LatencyModel | None:
    try:
        return fit_latency_model(samples, device, model, holdout=0.0)
    except FitError:
        return None

"""``LatencyModel``: predicted prefill and decode time per SM share.

Each phase keeps fitted coefficients per profiled SM count (see
``drift_sgl.latency.forms`` for the form). A query at another SM count interpolates between the
profiled counts linearly in 1/SM (time of compute-bound work is proportional
to 1/SM), after taking a running minimum over the profiled counts, so
predictions never increase with more SMs. Below the smallest profiled count
time scales as 1/SM; above the largest it stays flat.

``worst_case=True`` multiplies by the contention guard: the largest slowdown
observed when the other phase ran on the complementary partition, per phase,
SM count and size region (the planner's margin). ``co_run_slowdown`` is the
typical one (the median), which a simulation charges.
"""

from __future__ import annotations

import bisect
import json
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drift_sgl.latency.forms import (
    FEATURES,
    decode_features,
    prefill_features,
    size_bucket,
)
from drift_sgl.latency.identity import DeviceIdentity, ModelIdentity

PROFILE_FORMAT = "drift-sgl-latency-profile"
PROFILE_VERSION = 1
#: Entries of each per-share cache (the server asks at a dozen shares).
_CACHE_ENTRIES = 4096


class ProfileError(ValueError):
    """A profile file cannot be used; the message says why."""


def _dot(coefficients: tuple[float, ...], features: tuple[float, ...]) -> float:
    return sum(map(operator.mul, coefficients, features))


def _dominated(forms: tuple[tuple[float, ...], ...], by: tuple[tuple[float, ...], ...]) -> bool:
    """Whether max(forms . x) <= max(by . x) for every x >= 0 (each form is below one of ``by``)."""
    return all(any(all(a <= b for a, b in zip(f, g, strict=True)) for g in by) for f in forms)


def _running_min_candidates(forms: tuple) -> tuple[tuple[int, ...], ...]:
    """Per SM count i, the counts j <= i that can hold the running minimum.

    A count whose prediction is at least another's for every size never holds
    it, so a query evaluates only the rest (usually one or a few of ~17 counts:
    the planner asks dozens of questions per step, and this keeps each a few µs).
    """
    out = []
    for i in range(len(forms)):
        out.append(
            tuple(
                j
                for j in range(i + 1)
                if not any(
                    # k is never above j; of two equal counts, keep the larger.
                    k != j
                    and _dominated(forms[k], forms[j])
                    and (k > j or not _dominated(forms[j], forms[k]))
                    for k in range(i + 1)
                )
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class PhaseFit:
    """Coefficients of one phase: ``branches[sm]`` holds one or two linear forms."""

    features: tuple[str, ...]
    branches: dict[int, tuple[tuple[float, ...], ...]]
    _counts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    #: Per SM count, the forms of the counts that can hold its running minimum.
    _candidate_forms: tuple = field(init=False, repr=False, compare=False)
    #: Per queried SM share, ``_plan``'s answer (a cache).
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.branches:
            raise ProfileError("a phase needs coefficients for at least one SM count")
        for sm, forms in self.branches.items():
            if sm < 1 or not 1 <= len(forms) <= 2:
                raise ProfileError(f"SM count {sm}: needs one or two coefficient vectors")
            for coefs in forms:
                if len(coefs) != len(self.features) or min(coefs) < 0:
                    raise ProfileError(f"SM count {sm}: bad coefficients {coefs}")
        counts = tuple(sorted(self.branches))
        forms = tuple(self.branches[count] for count in counts)
        object.__setattr__(self, "_counts", counts)
        object.__setattr__(
            self,
            "_candidate_forms",
            tuple(tuple(forms[j] for j in c) for c in _running_min_candidates(forms)),
        )

    @property
    def sm_counts(self) -> tuple[int, ...]:
        return self._counts

    def solo_at(self, sm: int, features: tuple[float, ...]) -> float:
        """Prediction at a profiled SM count: the binding (larger) branch."""
        return max(_dot(coefs, features) for coefs in self.branches[sm])

    # The planner asks dozens of questions per step: the running minimum is one
    # method with plain loops, no call per form or per candidate (with argument
    # checks only on bad input, a quarter off a prediction: 4.8 -> 3.5 us).

    def _running_min(self, index: int, features: tuple[float, ...]) -> float:
        """The smallest prediction at the counts up to ``index`` (its candidates only)."""
        value = math.inf
        for forms in self._candidate_forms[index]:
            solo = -math.inf  # the binding (larger) branch at this count
            for coefs in forms:
                dot = sum(map(operator.mul, coefs, features))
                if dot > solo:
                    solo = dot
            if solo < value:
                value = solo
        return value

    def predict(self, sm: float, features: tuple[float, ...]) -> float:
        plan = self._plans.get(sm)
        if plan is None:
            if len(self._plans) >= _CACHE_ENTRIES:
                self._plans.clear()  # a caller asking at arbitrary shares: stay bounded
            plan = self._plans[sm] = self._plan(sm)
        low_index, high_index, weight, times, over = plan
        low = self._running_min(low_index, features)
        if high_index is None:
            return low * times / over
        high = self._running_min(high_index, features)
        return low + weight * (high - low)

    def _plan(self, sm: float) -> tuple[int, int | None, float, float, float]:
        """How a query at ``sm`` reads the counts: (low, high or None, weight, times, over).

        The planner asks at the split table's dozen SM shares over and over, so
        the bisection and the interpolation weight are worked out once per share.
        """
        counts = self._counts
        if sm <= counts[0]:
            # The smallest count's running minimum is its own prediction, scaled
            # as x * counts[0] / sm (times and over, not one factor: the same rounding).
            return 0, None, 0.0, counts[0], sm
        if sm >= counts[-1]:
            return len(counts) - 1, None, 0.0, 1.0, 1.0
        hi = bisect.bisect_left(counts, sm)
        if counts[hi] == sm:
            return hi, None, 0.0, 1.0, 1.0
        lo = hi - 1
        weight = (1 / counts[lo] - 1 / sm) / (1 / counts[lo] - 1 / counts[hi])
        return lo, hi, weight, 1.0, 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "branches": {
                str(sm): [list(c) for c in forms] for sm, forms in sorted(self.branches.items())
            },
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> PhaseFit:
        return cls(
            features=tuple(row["features"]),
            branches={
                int(sm): tuple(tuple(float(c) for c in coefs) for coefs in forms)
                for sm, forms in row["branches"].items()
            },
        )


def _sorted_tables(by_phase: dict[str, dict[int, dict[int, float]]]) -> dict:
    """``{phase: (sorted SM counts, [(sorted buckets, factors)] per count)}`` for bisection."""
    return {
        phase: (
            sorted(by_sm),
            [
                (sorted(by_sm[sm]), [by_sm[sm][b] for b in sorted(by_sm[sm])])
                for sm in sorted(by_sm)
            ],
        )
        for phase, by_sm in by_phase.items()
        if by_sm
    }


def _lookup(table: tuple, sm: float, size: int) -> float:
    counts, rows = table
    # The largest profiled count <= sm (its factor also holds up to the next one).
    buckets, factors = rows[max(0, bisect.bisect_right(counts, sm) - 1)]
    # The largest bucket <= the size's (the smallest one below them all).
    return factors[max(0, bisect.bisect_right(buckets, size_bucket(size)) - 1)]


def _table_to_json(by_phase: dict[str, dict[int, dict[int, float]]]) -> dict[str, Any]:
    return {
        phase: {
            str(sm): {str(b): r for b, r in sorted(buckets.items())}
            for sm, buckets in sorted(by_sm.items())
        }
        for phase, by_sm in by_phase.items()
    }


def _table_from_json(row: dict[str, Any], what: str) -> dict[str, dict[int, dict[int, float]]]:
    table = {
        phase: {
            int(sm): {int(b): float(r) for b, r in buckets.items()} for sm, buckets in by_sm.items()
        }
        for phase, by_sm in row.items()
    }
    values = [r for by_sm in table.values() for b in by_sm.values() for r in b.values()]
    if any(r < 1 for r in values):
        raise ProfileError(f"contention guard: {what} factors must be >= 1")
    if any(not buckets for by_sm in table.values() for buckets in by_sm.values()):
        raise ProfileError(f"contention guard: {what} has an SM count without size buckets")
    return table


@dataclass(frozen=True)
class ContentionGuard:
    """Co-run slowdowns (>= 1) per phase, SM count and size bucket: worst and typical.

    The worst (``ratios``) is the planner's margin. From measured co-runs,
    ``fit.fit_guard`` stores a full table per phase that never rises with more
    SMs and never falls with a larger size, and the lookup keeps both, so
    ``worst_case`` predictions stay monotone like the solo ones (an estimate's
    table is monotone across SM counts only; see ``fit.fit_guard``). The
    typical (``expected``, the median of the co-runs in a region) is what the
    simulator charges as the actual time of a phase that runs beside the other;
    where none was observed it falls back to the worst, the old behaviour and
    the cautious one.
    """

    #: ``ratios[phase][sm][bucket]``
    ratios: dict[str, dict[int, dict[int, float]]]
    #: Used for a phase with no co-run observed (see docs/latency-model.md).
    default: float
    #: ``expected[phase][sm][bucket]``: median co-run slowdown in the region.
    expected: dict[str, dict[int, dict[int, float]]] = field(default_factory=dict)
    _tables: dict = field(init=False, repr=False, compare=False)
    _expected_tables: dict = field(init=False, repr=False, compare=False)
    #: ``factor``'s answers per (phase, SM share, size bucket): a cache, as the
    #: planner asks at the split table's dozen shares on every query.
    _factors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Sorted keys for bisection.
        object.__setattr__(self, "_tables", _sorted_tables(self.ratios))
        object.__setattr__(self, "_expected_tables", _sorted_tables(self.expected))

    def factor(self, phase: str, sm: float, size: int) -> float:
        """Worst co-run slowdown of ``phase`` on ``sm`` SMs at ``size``."""
        key = (phase, sm, size_bucket(size))
        known = self._factors.get(key)
        if known is None:
            if len(self._factors) >= _CACHE_ENTRIES:
                self._factors.clear()  # a caller asking at arbitrary shares: stay bounded
            table = self._tables.get(phase)
            known = self._factors[key] = self.default if table is None else _lookup(table, sm, size)
        return known

    def expected_factor(self, phase: str, sm: float, size: int) -> float:
        """Typical co-run slowdown; the worst where no co-run of the phase was observed."""
        table = self._expected_tables.get(phase)
        return self.factor(phase, sm, size) if table is None else _lookup(table, sm, size)

    def to_json(self) -> dict[str, Any]:
        return {
            "default": self.default,
            "ratios": _table_to_json(self.ratios),
            "expected": _table_to_json(self.expected),
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ContentionGuard:
        guard = cls(
            ratios=_table_from_json(row["ratios"], "worst-case"),
            default=float(row["default"]),
            # Profiles written before the typical slowdown was kept have none.
            expected=_table_from_json(row.get("expected", {}), "expected"),
        )
        if guard.default < 1:
            raise ProfileError("contention guard factors must be >= 1")
        return guard


@dataclass(frozen=True)
class LatencyModel:
    """Predicts solo and worst-case (co-run) latency of prefill and decode."""

    device: DeviceIdentity
    model: ModelIdentity
    prefill: PhaseFit
    decode: PhaseFit
    guard: ContentionGuard
    #: Step between SM shares the device can be split into.
    sm_granularity: int = 1
    #: True for a profile computed from peak figures rather than measured.
    estimated: bool = False
    #: How it was made (``measured``, ``estimate:h100``, ``cpu-calibration``...).
    source: str = "measured"
    #: Held-out errors per phase: mean_ape, p95_ape, n, held_out.
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Free-form facts (sample counts, creation time, peak figures...).
    info: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------- predictions

    def prefill_ms(
        self,
        new_tokens: int,
        prefix_tokens: int,
        sm: float,
        worst_case: bool = False,
        batch_size: int = 1,
    ) -> float:
        """Time of a full prefill (all layers) of ``batch_size`` sequences on ``sm`` SMs."""
        if not (sm > 0 and new_tokens >= 0 and prefix_tokens >= 0 and batch_size >= 0):
            _check_query(sm, new_tokens=new_tokens, prefix_tokens=prefix_tokens, batch=batch_size)
        features = prefill_features(new_tokens, prefix_tokens, batch_size)
        solo = self.prefill.predict(sm, features)
        return solo * self.guard.factor("prefill", sm, new_tokens) if worst_case else solo

    def decode_ms(
        self, batch_size: int, kv_tokens: int, sm: float, worst_case: bool = False
    ) -> float:
        """Time of one decode step of ``batch_size`` sequences holding ``kv_tokens`` in all."""
        if not (sm > 0 and batch_size >= 0 and kv_tokens >= 0):
            _check_query(sm, batch=batch_size, kv_tokens=kv_tokens)
        solo = self.decode.predict(sm, decode_features(batch_size, kv_tokens))
        return solo * self.guard.factor("decode", sm, batch_size) if worst_case else solo

    def co_run_slowdown(self, phase: str, sm: float, size: int) -> float:
        """Typical slowdown of ``phase`` (size: new tokens or batch) beside the other phase.

        What a simulation charges as actual time; planning uses ``worst_case``.
        """
        return self.guard.expected_factor(phase, sm, size)

    def describe(self) -> str:
        kind = "ESTIMATED (not measured)" if self.estimated else "measured"
        errors = ", ".join(
            f"{phase} p95 error {row['p95_ape']:.1%}"
            for phase, row in self.errors.items()
            if row.get("n")
        )
        return (
            f"{kind} latency profile [{self.source}] for {self.model.architecture} "
            f"({self.model.num_layers} layers, {self.model.dtype}) on {self.device.name} "
            f"({self.device.total_sm} {'threads' if self.device.kind == 'cpu' else 'SMs'})"
            + (f"; {errors}" if errors else "")
        )

    # ------------------------------------------------------------ storage

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "estimated": self.estimated,
            "source": self.source,
            "device": self.device.to_json(),
            "model": self.model.to_json(),
            "sm_granularity": self.sm_granularity,
            "prefill": self.prefill.to_json(),
            "decode": self.decode.to_json(),
            "contention_guard": self.guard.to_json(),
            "errors": self.errors,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> LatencyModel:
        if not isinstance(row, dict) or row.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"not a drift-sgl latency profile (format != {PROFILE_FORMAT!r})")
        if row.get("version") != PROFILE_VERSION:
            raise ProfileError(
                f"profile version {row.get('version')!r} is not supported "
                f"(this drift-sgl reads version {PROFILE_VERSION}); re-run `profile fit`"
            )
        try:
            prefill = PhaseFit.from_json(row["prefill"])
            decode = PhaseFit.from_json(row["decode"])
            for phase, fit in (("prefill", prefill), ("decode", decode)):
                if fit.features != FEATURES[phase]:
                    raise ProfileError(f"{phase} features {fit.features} are not this version's")
            return cls(
                device=DeviceIdentity.from_json(row["device"]),
                model=ModelIdentity.from_json(row["model"]),
                prefill=prefill,
                decode=decode,
                guard=ContentionGuard.from_json(row["contention_guard"]),
                sm_granularity=int(row["sm_granularity"]),
                estimated=bool(row["estimated"]),
                source=str(row["source"]),
                errors=dict(row.get("errors") or {}),
                info=dict(row.get("info") or {}),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            if isinstance(err, ProfileError):
                raise
            raise ProfileError(f"malformed profile: {type(err).__name__}: {err}") from None

    def save(self, path: str | Path) -> None:
        """Write the profile JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> LatencyModel:
        """Read a profile; raises ``ProfileError`` (or ``OSError``) with the reason."""
        try:
            row = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ProfileError(f"{path}: not valid JSON ({err.msg})") from None
        except UnicodeDecodeError:
            raise ProfileError(f"{path}: not a text file") from None
        try:
            return cls.from_json(row)
        except ProfileError as err:
            raise ProfileError(f"{path}: {err}") from None


def _check_query(sm: float, **sizes: int) -> None:
    """Raise naming the first bad argument (called only when one is bad: it is slow)."""
    if not sm > 0:
        raise ValueError(f"sm must be > 0, got {sm}")
    for name, value in sizes.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


__all__ = [
    "ContentionGuard",
    "LatencyModel",
    "PhaseFit",
    "ProfileError",
]

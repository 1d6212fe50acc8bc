"""Time-multiplexed backend: one device, phases take turns, no real concurrency.

Used on CPUs and on GPUs without green contexts. The loop runs the same code
and the same order of events as on a partitioned GPU; only the overlap is
missing, because both phases run on all units, one after the other.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from drift_sgl.partition.base import PartitionBackend, PhaseEvent, SmSplit


class _CompletedEvent(PhaseEvent):
    """Work launched on a time-multiplexed device has finished when launch returns."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None


class TimeMultiplexedBackend(PartitionBackend):
    """Both phases on all units; the mixed split means 'take turns'."""

    name = "time-mux"
    concurrent = False

    def __init__(self, total_units: int) -> None:
        if total_units < 1:
            raise ValueError(f"total_units must be >= 1, got {total_units}")
        self._total_units = total_units
        self._splits = (
            SmSplit(prefill_units=total_units, decode_units=0),
            SmSplit(prefill_units=total_units, decode_units=total_units),
            SmSplit(prefill_units=0, decode_units=total_units),
        )

    @property
    def total_units(self) -> int:
        return self._total_units

    @property
    def splits(self) -> tuple[SmSplit, ...]:
        return self._splits

    def decode_scope(self, split_index: int) -> AbstractContextManager[None]:
        self._check(split_index)
        return nullcontext()

    def prefill_scope(self, split_index: int) -> AbstractContextManager[None]:
        self._check(split_index)
        return nullcontext()

    def record_prefill_event(self, split_index: int) -> PhaseEvent:
        self._check(split_index)
        return _CompletedEvent()

    def wait_decode(self, split_index: int) -> None:
        self._check(split_index)

    def _check(self, split_index: int) -> None:
        if not 0 <= split_index < len(self._splits):
            raise IndexError(f"split index {split_index} outside 0..{len(self._splits) - 1}")

"""The partition interface the multiplexing loop talks to.

A backend owns the execution resources of one GPU (or CPU) and offers a fixed
table of splits. Each split says how many compute units (SMs on a GPU, threads
on a CPU) prefill and decode get while they run side by side. The loop picks a
split per step, launches decode work inside ``decode_scope`` and prefill layer
blocks inside ``prefill_scope``, and polls ``PhaseEvent`` s to learn when a
launched prefill block has completed.

Split table convention (every backend follows it, so split indices are
meaningful to the policy):
  index 0        prefill only: all units to prefill
  1 .. n-2       mixed splits, decode share ascending
  index n-1      decode only: all units to decode
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass


@dataclass(frozen=True)
class SmSplit:
    """Compute units given to each phase while they run side by side."""

    prefill_units: int
    decode_units: int

    def __post_init__(self) -> None:
        if self.prefill_units < 0 or self.decode_units < 0:
            raise ValueError(f"negative unit count in {self}")
        if self.prefill_units == 0 and self.decode_units == 0:
            raise ValueError("a split must give units to at least one phase")


class PhaseEvent(ABC):
    """Marks the completion of work launched in a phase's scope."""

    @abstractmethod
    def query(self) -> bool:
        """True once all work recorded before the event has finished."""

    @abstractmethod
    def synchronize(self) -> None:
        """Block until the event has completed."""


class PartitionBackend(ABC):
    """Runs decode and prefill work on (possibly) disjoint compute partitions."""

    #: Short name shown in the startup log and in /server_info.
    name: str = "base"
    #: Whether decode and prefill really execute at the same time.
    concurrent: bool = False
    #: Facts for the startup log and /server_info (how the partitions were made).
    notes: tuple[str, ...] = ()

    @property
    @abstractmethod
    def total_units(self) -> int:
        """Compute units of the whole device (SMs, or CPU threads)."""

    @property
    @abstractmethod
    def splits(self) -> tuple[SmSplit, ...]:
        """The split table, in the order described in the module docstring."""

    @abstractmethod
    def decode_scope(self, split_index: int) -> AbstractContextManager[None]:
        """Context in which the decode step of split ``split_index`` is launched."""

    @abstractmethod
    def prefill_scope(self, split_index: int) -> AbstractContextManager[None]:
        """Context in which prefill layer blocks of split ``split_index`` are launched."""

    @abstractmethod
    def record_prefill_event(self, split_index: int) -> PhaseEvent:
        """An event after the prefill work launched so far on ``split_index``."""

    @abstractmethod
    def wait_decode(self, split_index: int) -> None:
        """Block until the decode work launched on ``split_index`` has finished."""

    def close(self) -> None:
        """Release what the backend holds (green contexts); nothing by default."""
        return None

    def describe(self) -> str:
        """One line for the startup log."""
        table = ", ".join(f"{s.prefill_units}:{s.decode_units}" for s in self.splits)
        mode = "concurrent" if self.concurrent else "time-multiplexed"
        return f"{self.name} ({mode}, {self.total_units} units, splits prefill:decode {table})"

"""The decision interface between the multiplexing loop and its policy.

Each step the loop builds a ``MuxState`` from the scheduler, asks the policy,
and executes the returned ``MuxDecision``. The policy is pure: no torch, no
I/O, the same state always gives the same decision (so every TP rank decides
alike). The SLO-aware dispatcher will implement the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from drift_sgl.partition.base import SmSplit


@dataclass(frozen=True)
class MuxState:
    """What the policy sees of the scheduler at the start of a step."""

    #: Requests in the decode step about to run (0: no decode this step).
    decode_batch_size: int
    #: New (uncached) tokens of the prefill gang in flight (0: no gang).
    prefill_new_tokens: int
    #: Transformer layers the gang has not launched yet.
    prefill_layers_left: int
    #: Layers of the model.
    num_layers: int
    #: The backend's split table (see ``drift_sgl.partition.base``).
    splits: tuple[SmSplit, ...]

    @property
    def has_decode(self) -> bool:
        return self.decode_batch_size > 0

    @property
    def has_prefill(self) -> bool:
        return self.prefill_layers_left > 0


@dataclass(frozen=True)
class MuxDecision:
    """What one step runs: which split, and how many prefill layers beside decode."""

    split_index: int
    prefill_layers: int

    def __post_init__(self) -> None:
        if self.split_index < 0:
            raise ValueError(f"split_index must be >= 0, got {self.split_index}")
        if self.prefill_layers < 0:
            raise ValueError(f"prefill_layers must be >= 0, got {self.prefill_layers}")


class MuxPolicy(Protocol):
    """Chooses the split and the prefill layers of one step."""

    def decide(self, state: MuxState) -> MuxDecision:
        """Return the decision for ``state``; must be deterministic."""
        ...

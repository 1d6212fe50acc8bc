"""The prefill gang in flight: one batch of requests prefilled layer block by block."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from drift_sgl.partition.base import PhaseEvent


@dataclass
class PrefillGang:
    """A SPLIT_PREFILL batch and its progress through the model's layers.

    ``batch`` is SGLang's ``ScheduleBatch``; its ``split_index`` is the number
    of layers launched so far (SGLang's model runner reads it).
    """

    batch: Any
    num_layers: int
    #: The result of the last block (carries the sampled tokens after the last layer).
    result: Any = None
    #: Completion event of the last layer block, once launched.
    done_event: PhaseEvent | None = None
    rids: frozenset[str] = field(default_factory=frozenset)
    #: Runs block by block of layers (SGLang's SPLIT_PREFILL); False: the whole
    #: model in one ordinary extend (a batch that only prefills, see the scheduler).
    layer_split: bool = True
    #: ``time.monotonic()`` when the gang started (its duration is a metric).
    started_s: float = field(default_factory=time.monotonic)

    @property
    def layers_done(self) -> int:
        return self.batch.split_index

    @property
    def layers_left(self) -> int:
        return self.num_layers - self.batch.split_index

    @property
    def new_tokens(self) -> int:
        return int(self.batch.extend_num_tokens or 0)

    @property
    def fully_launched(self) -> bool:
        return self.layers_left == 0

    def next_block(self, layers: int) -> int:
        """Layers the next block runs when the policy asks for ``layers``."""
        return min(layers, self.layers_left) if self.layer_split else self.layers_left

    def is_complete(self) -> bool:
        """All layers launched and the last block has finished on the device."""
        return self.fully_launched and self.done_event is not None and self.done_event.query()

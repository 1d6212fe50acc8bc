"""The foundation's rule: a fixed prefill budget per decode step.

Until the latency model and the SLO dispatcher exist, each step:
  * decode only   -> the decode-only split, no prefill layers;
  * prefill only  -> the prefill-only split, every remaining layer at once
                     (nothing runs beside it, so splitting would only add launches);
  * both          -> a mixed split, and max(1, budget // new_tokens) layers,
                     capped at the layers left. The mixed split is chosen by the
                     decode batch size: decode's share grows linearly with the
                     batch until ``decode_full_batch`` requests, where it takes the
                     mixed split with the largest decode share.
A split index is always chosen from the table, whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from drift_sgl.policy.base import MuxDecision, MuxState


@dataclass(frozen=True)
class LayerBudgetRule:
    """Launch ``layer_budget_tokens // new_tokens`` prefill layers per decode step."""

    layer_budget_tokens: int = 32768
    decode_full_batch: int = 64
    #: The engine's own admission (SGLang's FCFS) starts gangs.
    chooses_requests: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.layer_budget_tokens < 1:
            raise ValueError("layer_budget_tokens must be >= 1")
        if self.decode_full_batch < 1:
            raise ValueError("decode_full_batch must be >= 1")

    def decide(self, state: MuxState) -> MuxDecision:
        last = len(state.splits) - 1
        if not state.has_prefill:
            return MuxDecision(split_index=last, prefill_layers=0)
        if not state.has_decode:
            return MuxDecision(split_index=0, prefill_layers=state.prefill_layers_left)
        layers = self.layer_budget_tokens // max(1, state.prefill_new_tokens)
        layers = max(1, min(layers, state.prefill_layers_left))
        return MuxDecision(split_index=self._mixed_split(state), prefill_layers=layers)

    def replan(self, decision: MuxDecision, formed: MuxState) -> MuxDecision:
        """Never called (``chooses_requests`` is False): the decision stands."""
        return decision

    def _mixed_split(self, state: MuxState) -> int:
        num_mixed = len(state.splits) - 2
        if num_mixed < 1:
            # A table without mixed splits: let decode keep the device.
            return len(state.splits) - 1
        filled = min(state.decode_batch_size, self.decode_full_batch)
        return 1 + (filled * (num_mixed - 1)) // self.decode_full_batch

"""Policies that decide each multiplexing step."""

from drift_sgl.policy.base import MuxDecision, MuxPolicy, MuxState
from drift_sgl.policy.layer_budget import LayerBudgetRule

__all__ = ["LayerBudgetRule", "MuxDecision", "MuxPolicy", "MuxState"]

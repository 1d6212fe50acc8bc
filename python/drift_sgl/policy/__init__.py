"""Policies that decide each multiplexing step."""

from drift_sgl.policy.base import MuxDecision, MuxPolicy, MuxState, WaitingRequest
from drift_sgl.policy.layer_budget import LayerBudgetRule
from drift_sgl.policy.planner import OVERLOAD_MODES, LatencyPredictor, SloPlanner

__all__ = [
    "OVERLOAD_MODES",
    "LatencyPredictor",
    "LayerBudgetRule",
    "MuxDecision",
    "MuxPolicy",
    "MuxState",
    "SloPlanner",
    "WaitingRequest",
]

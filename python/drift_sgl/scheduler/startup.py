"""What DriftScheduler builds at start-up, apart from SGLang's own state.

Small functions with explicit inputs, so that ``DriftScheduler.__init__`` reads as
a list of steps (docs/architecture.md, section 4).
"""

from __future__ import annotations

import torch
from sglang.srt.runtime_context import get_device, get_parallel

from drift_sgl.config import DriftConfig
from drift_sgl.latency.model import LatencyModel
from drift_sgl.mux.decision_log import DecisionLog
from drift_sgl.partition import (
    BackendChoice,
    PartitionBackend,
    create_partition_backend,
    device_units,
)
from drift_sgl.policy import LayerBudgetRule, MuxPolicy, SloPlanner
from drift_sgl.scheduler.timeline import StepTimeline


def choose_partition(config: DriftConfig) -> BackendChoice:
    """The partition backend for this process's device (``--drift-partition``)."""
    device = get_device().device
    return create_partition_backend(
        config.partition,
        device,
        device_units(device),
        splits=config.splits,
        gpu_id=get_device().gpu_id or 0,
    )


def build_policy(config: DriftConfig, latency_model: object) -> MuxPolicy:
    """``--drift-policy``: the SLO planner, or the layer-budget rule."""
    if config.policy == "slo":
        return SloPlanner(latency_model, overload=config.overload)
    return LayerBudgetRule(layer_budget_tokens=config.layer_budget_tokens)


def _rank_path(path: str) -> str:
    """``path`` for this rank: ranks other than 0 append ``.tpN`` / ``.dpN``."""
    parallel = get_parallel()
    if parallel.tp_rank:
        path += f".tp{parallel.tp_rank}"
    if parallel.dp_rank:
        path += f".dp{parallel.dp_rank}"
    return path


def open_timeline(path: str | None, backend: PartitionBackend, device: str) -> StepTimeline | None:
    """The ``--drift-timeline`` file of this rank (ranks other than 0 get a suffix)."""
    if path is None:
        return None
    on_device = backend.concurrent and device == "cuda"
    return StepTimeline(open(_rank_path(path), "w"), torch.cuda if on_device else None)


def open_decision_log(
    path: str | None, policy: MuxPolicy, latency: LatencyModel
) -> DecisionLog | None:
    """The ``--drift-decision-log`` file; only TP rank 0 decides, so only it writes."""
    if path is None or get_parallel().tp_rank:
        return None
    return DecisionLog(open(_rank_path(path), "w"), policy, latency)


def check_graph_memory(bound_gb: float | None, num_splits: int, graph_memory_gb: float) -> None:
    """``--drift-max-graph-memory-gb``: the per-split decode graphs must fit."""
    if bound_gb is not None and graph_memory_gb > bound_gb:
        raise RuntimeError(
            f"drift-sgl: --drift-max-graph-memory-gb: the decode CUDA graphs of "
            f"{num_splits} splits take {graph_memory_gb:.2f} GiB, "
            f"more than {bound_gb:g}; use fewer --drift-splits or a lower --cuda-graph-max-bs"
        )


def require_split_prefill(model: object) -> None:
    """The loaded model must have SGLang's layer-split prefill (the launcher read
    SGLang's sources already; this catches what they did not settle)."""
    if not hasattr(model, "forward_split_prefill"):
        raise RuntimeError(
            f"drift-sgl: {type(model).__name__} has no layer-split prefill "
            "(forward_split_prefill); drift serves Llama, Qwen, Gemma, GLM-4 and other "
            "architectures that SGLang can split by layers"
        )


def startup_line(
    config: DriftConfig, backend: PartitionBackend, backend_reason: str, latency_reason: str
) -> str:
    """The one log line that says what this scheduler runs with."""
    if config.policy == "slo":
        table = config.slo_table()
        targets = f"TTFT {_ms(table.default.ttft_ms)}, TPOT {_ms(table.default.tpot_ms)}"
        policy = f"slo (targets {targets}; {len(table.classes)} SLO classes; "
        policy += f"overload {config.overload})"
    else:
        policy = f"{config.policy} ({config.layer_budget_tokens} token-layers per step)"
    return (
        f"drift: serving with partition backend {backend.describe()} [{backend_reason}]; "
        f"policy {policy}; latency model: {latency_reason}"
    )


def _ms(value: float | None) -> str:
    return "none" if value is None else f"{value:g} ms"

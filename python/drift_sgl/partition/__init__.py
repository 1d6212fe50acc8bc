"""Partition backends: how decode and prefill share one device."""

from __future__ import annotations

from dataclasses import dataclass

from drift_sgl.partition.base import PartitionBackend, PhaseEvent, SmSplit
from drift_sgl.partition.time_mux import TimeMultiplexedBackend

__all__ = [
    "BackendChoice",
    "PartitionBackend",
    "PhaseEvent",
    "SmSplit",
    "TimeMultiplexedBackend",
    "create_partition_backend",
]

BACKEND_NAMES = ("auto", "time-mux")


@dataclass(frozen=True)
class BackendChoice:
    """The backend in use and why it was chosen (for the startup log)."""

    backend: PartitionBackend
    reason: str


def create_partition_backend(requested: str, device: str, cpu_threads: int) -> BackendChoice:
    """Pick the partition backend for this scheduler process.

    ``auto`` chooses green-context partitions on a capable NVIDIA GPU once that
    backend exists (a later milestone), and the time-multiplexed backend
    everywhere else.
    """
    if requested not in BACKEND_NAMES:
        raise ValueError(f"unknown partition backend {requested!r}; choose from {BACKEND_NAMES}")
    if requested == "time-mux":
        units = cpu_threads if device == "cpu" else _gpu_sm_count()
        return BackendChoice(TimeMultiplexedBackend(units), "requested")
    if device == "cpu":
        return BackendChoice(TimeMultiplexedBackend(cpu_threads), "CPU device: no SM partitions")
    return BackendChoice(
        TimeMultiplexedBackend(_gpu_sm_count()),
        "green-context partitions are not implemented yet on this build",
    )


def _gpu_sm_count() -> int:
    import torch

    if not torch.cuda.is_available():
        return 1
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count

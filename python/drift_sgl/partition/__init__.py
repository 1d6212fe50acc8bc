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
    "device_units",
]

BACKEND_NAMES = ("auto", "time-mux")


@dataclass(frozen=True)
class BackendChoice:
    """The backend in use and why it was chosen (for the startup log)."""

    backend: PartitionBackend
    reason: str


def create_partition_backend(requested: str, device: str, units: int) -> BackendChoice:
    """Pick the partition backend for this scheduler process.

    Args:
        requested: ``auto`` or a backend name from ``BACKEND_NAMES``.
        device: SGLang's device (``cpu``, ``cuda``, ...).
        units: the device's compute units (``device_units(device)``).

    ``auto`` chooses green-context partitions on a capable NVIDIA GPU once that
    backend exists (a later milestone), and the time-multiplexed backend
    everywhere else.
    """
    if requested not in BACKEND_NAMES:
        raise ValueError(f"unknown partition backend {requested!r}; choose from {BACKEND_NAMES}")
    if requested == "time-mux":
        reason = "requested"
    elif device == "cpu":
        reason = "CPU device: no SM partitions"
    else:
        reason = "green-context partitions are not implemented yet on this build"
    return BackendChoice(TimeMultiplexedBackend(units), reason)


def device_units(device: str) -> int:
    """Compute units of this process's device: SMs of the current GPU, or CPU threads."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return torch.get_num_threads()
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count

"""Partition backends: how decode and prefill share one device."""

from __future__ import annotations

from dataclasses import dataclass

from drift_sgl.partition.base import PartitionBackend, PhaseEvent, SmSplit
from drift_sgl.partition.green_ctx import GreenContextUnavailable, build_green_context_backend
from drift_sgl.partition.sm_layout import parse_splits
from drift_sgl.partition.stream_pairs import StreamPair, StreamPairBackend, cpu_stream_backend
from drift_sgl.partition.time_mux import TimeMultiplexedBackend

__all__ = [
    "BACKEND_NAMES",
    "BackendChoice",
    "GreenContextUnavailable",
    "PartitionBackend",
    "PhaseEvent",
    "SmSplit",
    "StreamPair",
    "StreamPairBackend",
    "TimeMultiplexedBackend",
    "check_backend_device",
    "create_partition_backend",
    "device_units",
]

BACKEND_NAMES = ("auto", "green-ctx", "time-mux", "cpu-streams")


@dataclass(frozen=True)
class BackendChoice:
    """The backend in use and why it was chosen (for the startup log)."""

    backend: PartitionBackend
    reason: str
    #: The choice fell back from what was wanted (the log shows it as a warning).
    fallback: bool = False


def create_partition_backend(
    requested: str, device: str, units: int, splits: str = "auto", gpu_id: int = 0
) -> BackendChoice:
    """Pick the partition backend for this scheduler process.

    Args:
        requested: a name from ``BACKEND_NAMES``.
        device: SGLang's device (``cpu``, ``cuda``, ...).
        units: the device's compute units (``device_units(device)``).
        splits: ``--drift-splits``: ``auto`` or ``"p1:d1,p2:d2,..."`` (SMs).
        gpu_id: the CUDA device index of this process.

    ``auto`` takes green-context partitions on an NVIDIA GPU that has them and
    falls back to the time-multiplexed backend, with the reason, where it has
    not (old driver, MIG, no provider). ``green-ctx`` raises
    ``GreenContextUnavailable`` instead of falling back.
    """
    if requested not in BACKEND_NAMES:
        raise ValueError(f"unknown partition backend {requested!r}; choose from {BACKEND_NAMES}")
    check_backend_device(requested, device)
    pairs = parse_splits(splits)
    if requested == "time-mux":
        return BackendChoice(TimeMultiplexedBackend(units), "requested")
    if requested == "cpu-streams":
        backend = cpu_stream_backend(units, pairs)
        return BackendChoice(backend, "; ".join(backend.notes))
    if device != "cuda":
        where = "CPU" if device == "cpu" else f"{device!r}"
        return BackendChoice(TimeMultiplexedBackend(units), f"{where} device: no SM partitions")
    try:
        backend = build_green_context_backend(gpu_id, pairs)
    except GreenContextUnavailable as err:
        if requested == "green-ctx":
            raise
        reason = f"green contexts unavailable ({err}); prefill and decode take turns"
        return BackendChoice(TimeMultiplexedBackend(units), reason, fallback=True)
    return BackendChoice(backend, "; ".join(backend.notes))


def check_backend_device(requested: str, device: str) -> None:
    """Refuse a backend that cannot run on ``device`` at all (the launcher calls
    this before any process starts; the scheduler again when it builds one).

    Raises ``GreenContextUnavailable`` for ``green-ctx`` off an NVIDIA GPU and
    ``ValueError`` for ``cpu-streams`` off a CPU.
    """
    if requested == "green-ctx" and device != "cuda":
        message = f"green-ctx needs an NVIDIA GPU; this server runs on {device}"
        raise GreenContextUnavailable(message)
    if requested == "cpu-streams" and device != "cpu":
        raise ValueError(f"cpu-streams runs on a CPU device; this server runs on {device}")


def device_units(device: str) -> int:
    """Compute units of this process's device: SMs of the current GPU, or CPU threads."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return torch.get_num_threads()
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count

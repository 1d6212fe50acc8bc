"""A partition backend over stream pairs: one (prefill, decode) pair per split.

On a GPU each stream of a pair belongs to a green context holding that
phase's SMs, so work launched on it is confined to them; the streams of a
mixed split run at the same time on disjoint SMs. The backend only orders
work: every launch first waits for what the scheduler's own stream queued
(the inputs it prepared), completion is tracked with events, and the
scheduler's stream waits for decode before it reads the step's result.

The stream API is torch's (``torch.cuda``: ``Stream``/``Event``/``stream()``/
``current_stream()``). The CPU shims in ``torch.cpu`` offer the same calls,
which is how the ordering logic is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from drift_sgl.partition.base import PartitionBackend, PhaseEvent, SmSplit


@dataclass(frozen=True)
class StreamPair:
    """The streams one split launches on, and the SMs they really got."""

    prefill: Any
    decode: Any
    split: SmSplit


class StreamEvent(PhaseEvent):
    """A device event recorded on a stream."""

    def __init__(self, event: Any) -> None:
        self._event = event

    def query(self) -> bool:
        return bool(self._event.query())

    def synchronize(self) -> None:
        self._event.synchronize()


class StreamPairBackend(PartitionBackend):
    """Decode and prefill on the streams of the chosen split, concurrently."""

    concurrent = True

    def __init__(
        self,
        name: str,
        total_units: int,
        pairs: Sequence[StreamPair],
        streams: Any,
        close: Callable[[], None] | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        """
        Args:
            name: shown in the startup log and /server_info.
            total_units: SMs of the whole device.
            pairs: one per split, in split-table order (``partition.base``).
            streams: the module with torch's stream API (``torch.cuda``).
            close: releases what the pairs hold (green contexts); called once.
            notes: facts for the startup log (how counts were obtained, ...).
        """
        if len(pairs) < 3:
            raise ValueError("a split table has prefill-only, mixed and decode-only splits")
        if pairs[0].split.decode_units or pairs[-1].split.prefill_units:
            raise ValueError("split 0 must be prefill only and the last split decode only")
        self.name = name
        self._total_units = total_units
        self._pairs = tuple(pairs)
        self._splits = tuple(pair.split for pair in pairs)
        self._streams = streams
        self._close = close
        self.notes = notes

    @property
    def total_units(self) -> int:
        return self._total_units

    @property
    def splits(self) -> tuple[SmSplit, ...]:
        return self._splits

    def pair(self, split_index: int) -> StreamPair:
        """The streams of split ``split_index``."""
        if not 0 <= split_index < len(self._pairs):
            raise IndexError(f"split index {split_index} outside 0..{len(self._pairs) - 1}")
        return self._pairs[split_index]

    def decode_scope(self, split_index: int) -> AbstractContextManager[None]:
        return self._launch_on(self.pair(split_index).decode)

    def prefill_scope(self, split_index: int) -> AbstractContextManager[None]:
        return self._launch_on(self.pair(split_index).prefill)

    def record_prefill_event(self, split_index: int) -> PhaseEvent:
        event = self._streams.Event()
        event.record(self.pair(split_index).prefill)
        return StreamEvent(event)

    def wait_decode(self, split_index: int) -> None:
        decode = self.pair(split_index).decode
        # Later work on the scheduler's stream (reading the sampled tokens,
        # freeing KV) must come after the decode step; the host waits too,
        # because the scheduler reads the result right away.
        self._streams.current_stream().wait_stream(decode)
        done = self._streams.Event()
        done.record(decode)
        done.synchronize()

    def close(self) -> None:
        """Release the partitions (green contexts); the backend is unusable after."""
        close, self._close = self._close, None
        if close is not None:
            close()

    @contextmanager
    def _launch_on(self, stream: Any) -> Iterator[None]:
        # The scheduler prepared this step's inputs on its own stream.
        stream.wait_stream(self._streams.current_stream())
        with self._streams.stream(stream):
            yield


def cpu_stream_backend(
    threads: int, requested: tuple[tuple[int, int], ...] | None = None
) -> StreamPairBackend:
    """The stream-pair backend over torch's CPU stream shims (``cpu-streams``).

    A stand-in for the green-context backend on a CPU: the same table, scopes,
    events and SGLang per-split machinery, but the "streams" run in order on
    the same threads, so nothing overlaps. It exists to run the GPU code path
    of the scheduler end to end where there is no GPU.
    """
    import torch

    from drift_sgl.partition.sm_layout import SmGranularity, planned_split_table

    if threads < 2:
        raise ValueError("cpu-streams needs at least 2 threads to split")
    unit = SmGranularity(1, 1)
    table = planned_split_table(threads, unit, requested)
    return StreamPairBackend(
        "cpu-streams",
        threads,
        [StreamPair(torch.cpu.Stream(), torch.cpu.Stream(), split) for split in table],
        streams=torch.cpu,
        notes=("CPU stream shims: the GPU code path, without real overlap",),
    )

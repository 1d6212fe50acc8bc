"""When each phase really ran, step by step (``--drift-timeline PATH``).

Counters say that a decode step and a prefill block were launched in the same
step; only their times say that they ran at the same time. With stream pairs
on a GPU, each span is bracketed by timing events on the phase's own stream,
so the times are the device's; elsewhere the host clock brackets the launch,
which on a CPU is also the run. Spans are written as JSON lines once their
end event has completed, and the overlap of prefill with decode is summed up
for ``/server_info``.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

#: Decode spans kept to measure the overlap of later-resolved prefill spans.
_DECODE_WINDOW = 512


@dataclass
class _Span:
    phase: str
    step: int
    split: int
    start: Any
    end: Any
    info: dict[str, int]


class StepTimeline:
    """Records the device (or host) interval of every decode step and prefill block."""

    def __init__(self, out: TextIO, device_streams: Any | None = None) -> None:
        """
        Args:
            out: where the JSON lines go (kept open; ``close`` closes it).
            device_streams: ``torch.cuda`` to time on the device with events
                recorded on the phases' streams; None for the host clock.
        """
        self._out = out
        self._streams = device_streams
        self._base = self._mark()
        self._pending: deque[_Span] = deque()
        self._decode: deque[tuple[float, float]] = deque(maxlen=_DECODE_WINDOW)
        #: Completed prefill blocks whose overlap may still grow (see end_step).
        self._prefill: deque[tuple[_Span, float, float]] = deque()
        self.step = 0
        self.spans = 0
        self.decode_ms = 0.0
        self.prefill_ms = 0.0
        self.overlap_ms = 0.0

    @contextmanager
    def span(self, phase: str, split: int, **info: int) -> Iterator[None]:
        """Bracket the launch of one phase's work in this step; enter it inside the
        phase's stream scope, so that the events go on that stream."""
        start = self._mark()
        yield
        self._pending.append(_Span(phase, self.step, split, start, self._mark(), info))

    def end_step(self) -> None:
        """Write the spans that have completed; called once per loop step."""
        self.step += 1
        while self._pending and self._done(self._pending[0].end):
            span = self._pending.popleft()
            start, end = self._ms(span.start), self._ms(span.end)
            if span.phase == "decode":
                self._decode.append((start, end))
                self.decode_ms += end - start
                self._write(span, start, end, None)
            else:
                self._prefill.append((span, start, end))
        # A prefill block is final once no decode step that could overlap it is
        # still unresolved: decode steps resolve in launch order, so the next
        # one starts after the latest seen, and one launched later starts after now.
        decode_pending = any(span.phase == "decode" for span in self._pending)
        latest = self._decode[-1][0] if self._decode else float("-inf")
        while self._prefill and (not decode_pending or self._prefill[0][2] <= latest):
            span, start, end = self._prefill.popleft()
            overlap = sum(max(0.0, min(end, d1) - max(start, d0)) for d0, d1 in self._decode)
            self.prefill_ms += end - start
            self.overlap_ms += overlap
            self._write(span, start, end, overlap)
        self._out.flush()

    def summary(self) -> dict[str, float | int]:
        """Totals for /server_info: how much of prefill's time ran beside decode."""
        return {
            "spans": self.spans,
            "decode_ms": round(self.decode_ms, 3),
            "prefill_ms": round(self.prefill_ms, 3),
            "prefill_overlapping_decode_ms": round(self.overlap_ms, 3),
            "clock": "device" if self._streams is not None else "host",
        }

    def close(self) -> None:
        self._out.close()

    def _mark(self) -> Any:
        if self._streams is None:
            return time.perf_counter()
        event = self._streams.Event(enable_timing=True)
        event.record(self._streams.current_stream())
        return event

    def _done(self, mark: Any) -> bool:
        return self._streams is None or bool(mark.query())

    def _ms(self, mark: Any) -> float:
        if self._streams is None:
            return (mark - self._base) * 1000.0
        return float(self._base.elapsed_time(mark))

    def _write(self, span: _Span, start: float, end: float, overlap: float | None) -> None:
        record = {
            "step": span.step,
            "phase": span.phase,
            "split": span.split,
            "start_ms": round(start, 4),
            "end_ms": round(end, 4),
            **span.info,
        }
        if overlap is not None:
            record["overlap_ms"] = round(overlap, 4)
        self._out.write(json.dumps(record) + "\n")
        self.spans += 1

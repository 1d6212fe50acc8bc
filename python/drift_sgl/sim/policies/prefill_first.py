"""SGLang's default scheduler: prefill first, chunked prefill, no mixing.

Whenever requests wait (and their KV fits), the GPU runs a prefill batch on
all SMs: the chunked request first, then FCFS admissions, up to
min(--chunk-size, 16384) new tokens; a long prompt is cut into chunks, each
re-reading its earlier chunks as prefix. Decode steps (all SMs) run only when
no prefill is ready, so every prefill batch stalls the whole decode batch:
this is what inflates time per output token under load.
"""

from __future__ import annotations

from collections.abc import Callable

from drift_sgl.sim.engine import Instance


class PrefillFirstInstance(Instance):
    """One GPU under SGLang's default (non-mixed) scheduling."""

    def plan(self) -> tuple[float, Callable[[float], None]] | None:
        budget = min(self.config.chunk_size, self.config.max_prefill_tokens)
        chunks = self.take_chunks(budget)
        if chunks:

            def on_prefill(now: float) -> None:
                for req in self.apply_chunks(chunks, now):
                    self.prefill_done(req, now)

            return self.chunk_ms(chunks), on_prefill
        if self.batch.size:
            duration = self.latency.decode_ms(self.batch.size, self.batch.kv_tokens, self.total_sm)
            return duration, self.decode_step
        return None

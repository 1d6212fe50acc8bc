"""SGLang with ``--enable-mixed-chunk`` (Sarathi-style chunked prefill).

Every step is one batch on all SMs: every running decode request plus up to
``--chunk-size`` prefill tokens from the chunked request and FCFS admissions.
Its time is ``prefill_ms(chunk + b, prefix, all SMs, seqs=chunked sequences)``
(the weights are read once for all tokens, the b decode tokens ride along as
extra tokens) plus the decode batch's KV reads, ``decode_ms(b, kv) -
decode_ms(b, 0)``. A step with no prefill work is a plain decode step.
"""

from __future__ import annotations

from collections.abc import Callable

from drift_sgl.sim.engine import Instance


class MixedChunkInstance(Instance):
    """One GPU under SGLang's mixed chunked prefill."""

    def plan(self) -> tuple[float, Callable[[float], None]] | None:
        budget = min(self.config.chunk_size, self.config.max_prefill_tokens)
        chunks = self.take_chunks(budget)
        b, kv = self.batch.size, self.batch.kv_tokens
        if not chunks and not b:
            return None
        if not chunks:
            return self.latency.decode_ms(b, kv, self.total_sm), self.decode_step
        duration = self.chunk_ms(chunks, extra_tokens=b)
        if b:
            kv_read = self.latency.decode_ms(b, kv, self.total_sm)
            kv_read -= self.latency.decode_ms(b, 0, self.total_sm)
            duration += max(0.0, kv_read)

        def on_end(now: float) -> None:
            if b:
                self.decode_step(now)
            for req in self.apply_chunks(chunks, now):
                self.prefill_done(req, now)

        return duration, on_end

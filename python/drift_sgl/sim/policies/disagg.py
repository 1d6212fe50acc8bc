"""PD disaggregation: prefill GPUs and decode GPUs, KV moved between them.

* ``P`` prefill instances run SGLang-style prefill batches (chunked, FCFS,
  all SMs) back to back, each with its own radix cache. A prompt's KV stays
  locked in its prefill instance's tree until its transfer has finished.
* ``N - P`` decode instances run decode steps on all SMs with a KV pool of
  their own and no radix cache; the tokens they generate never reach a prefill
  instance's cache, so a session's next turn re-prefills the previous output.
* A session goes to prefill instance ``crc32(session) % P`` and decode instance
  ``crc32("decode:" + session) % (N - P)`` (sticky): multi-turn prompts hit
  their instance's cache, and a shared system prompt is cached once per
  prefill instance.
* The first token comes from the prefill (TTFT = prefill completion). The
  prompt's KV then waits until the decode instance can reserve prompt + output
  tokens, and crosses that instance's link (one transfer at a time) in
  ``1 ms + prompt bytes / link bandwidth``; the request joins the decode batch
  at the next step boundary after it arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from drift_sgl.sim.engine import DecodeBatch, Instance, Request, SimError, Simulator

#: Fixed cost of one KV transfer (connection setup, completion notification).
TRANSFER_FIXED_MS = 1.0


class PrefillOnlyInstance(Instance):
    """A prefill GPU: batches back to back, hands each finished prompt to decode."""

    def __init__(
        self, *args, handoff: Callable[[Request, PrefillOnlyInstance], None], **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.handoff = handoff

    def plan(self) -> tuple[float, Callable[[float], None]] | None:
        budget = min(self.config.chunk_size, self.config.max_prefill_tokens)
        chunks = self.take_chunks(budget, reserve_output=False)
        if not chunks:
            return None

        def on_end(now: float) -> None:
            for req in self.apply_chunks(chunks, now):
                self.insert_prompt(req)
                req.first_token_ms = req.last_token_ms = now
                if req.output_tokens == 1:
                    self.release(req)
                    self.on_finish(req, now)
                else:
                    self.handoff(req, self)

        return self.chunk_ms(chunks), on_end

    def release(self, req: Request) -> None:
        """The prompt's KV has left: unlock it (it stays cached until evicted)."""
        self.cache.unlock(req.path)


class DecodeOnlyInstance:
    """A decode GPU: receives prompts' KV, runs decode steps on all SMs."""

    def __init__(
        self,
        sim: Simulator,
        name: str,
        latency,
        capacity_tokens: int,
        bytes_per_token: int,
        link_gbps: float,
        on_finish: Callable[[Request, float], None],
    ) -> None:
        self.sim, self.name, self.latency = sim, name, latency
        self.capacity = capacity_tokens
        self.bytes_per_ms = link_gbps * 1e9 / 8 / 1000
        self.bytes_per_token = bytes_per_token
        self.on_finish = on_finish
        self.batch = DecodeBatch()
        self.used = 0
        self.max_used = 0
        self.link_free_ms = 0.0
        self.pending: deque[tuple[Request, PrefillOnlyInstance]] = deque()
        self.arrived: list[Request] = []
        self._busy = False

    def receive(self, req: Request, source: PrefillOnlyInstance) -> None:
        if req.prompt_tokens + req.output_tokens > self.capacity:
            raise SimError(
                f"request {req.rid} needs {req.prompt_tokens + req.output_tokens} KV tokens; "
                f"a decode instance holds {self.capacity}"
            )
        self.pending.append((req, source))
        self._start_transfers()

    def _start_transfers(self) -> None:
        while self.pending:
            req, source = self.pending[0]
            need = req.prompt_tokens + req.output_tokens
            if self.used + need > self.capacity:
                return
            self.pending.popleft()
            self.used += need
            self.max_used = max(self.max_used, self.used)
            start = max(self.sim.now, self.link_free_ms)
            took = TRANSFER_FIXED_MS + req.prompt_tokens * self.bytes_per_token / self.bytes_per_ms
            self.link_free_ms = start + took
            self.sim.at(self.link_free_ms, lambda r=req, s=source: self._arrive(r, s))

    def _arrive(self, req: Request, source: PrefillOnlyInstance) -> None:
        source.release(req)
        source.wake()  # its KV may have been what blocked an admission
        req.instance += f"+{self.name}"
        self.arrived.append(req)
        if not self._busy:
            self._next_step()

    def _next_step(self) -> None:
        for req in self.arrived:
            self.batch.join(req)
        self.arrived.clear()
        if not self.batch.size:
            self._busy = False
            return
        self._busy = True
        total_sm = self.latency.device.total_sm
        duration = self.latency.decode_ms(self.batch.size, self.batch.kv_tokens, total_sm)
        self.sim.at(self.sim.now + duration, self._end)

    def _end(self) -> None:
        now = self.sim.now
        for req in self.batch.step(now):
            self.used -= req.prompt_tokens + req.output_tokens
            self.on_finish(req, now)
        self._start_transfers()
        self._next_step()

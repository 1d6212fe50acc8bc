"""Time single forward passes with SGLang's own ModelRunner (no scheduler, no server).

The model is loaded the way ``sglang.benchmark.one_batch`` loads it, and
batches are built with SGLang's ``Req``/``ScheduleBatch`` and run through its
``extend``/``decode`` helpers, so the kernels, attention backend and memory
pools are the server's. A cached prefix is made the way chunked prefill makes
one: the request first extends over its prefix (untimed), then the timed
extend starts at ``prefix_len`` and reads that KV.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from array import array
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    """One timed forward; sizes are totals over the batch."""

    latency_ms: float
    new_tokens: int
    prefix_tokens: int
    batch_size: int
    kv_tokens: int


class ForwardHarness:
    """Builds and times prefill and decode batches on one loaded model."""

    def __init__(self, server_args: Any, seed: int = 0) -> None:
        from sglang.benchmark import one_batch
        from sglang.srt.runtime_context import SpawnRanks, publish, spawn_world_rank
        from sglang.srt.server_args import PortArgs

        server_args.resolve_once()
        port_args = PortArgs.init_new(server_args)
        world_rank = spawn_world_rank(server_args, tp_rank=0, pp_rank=0)
        publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=world_rank, gpu_id=0))
        one_batch._init_process_global_configs()
        # SGLang's benchmark wrapper: extend, decode, clear the pools, synchronize.
        self._bench, _ = one_batch.load_model(server_args, port_args, 0, 0)
        runner = self._bench.torch_runner
        self.model_config = runner.model_config
        self.capacity_tokens = int(runner.max_total_num_tokens)
        self.max_requests = int(runner.req_to_token_pool.size)
        #: Longest sequence (prompt + generated) a request row can hold.
        self.max_seq_len = int(self.model_config.context_len)
        self._vocab = int(self.model_config.vocab_size)
        self._rng = random.Random(seed)
        # The loaded model's objects never die: keep them out of every later collection.
        gc.collect()
        gc.freeze()

    # ------------------------------------------------------------ building

    def _requests(self, lengths: list[int], max_new_tokens: int) -> list[Any]:
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens)
        reqs = []
        for i, length in enumerate(lengths):
            ids = array("q", (self._rng.randrange(self._vocab) for _ in range(length)))
            req = Req(
                rid=str(i), origin_input_text="", origin_input_ids=ids, sampling_params=params
            )
            req.full_untruncated_fill_ids = req.origin_input_ids
            req.logprob_start_len = -1
            req.extend_end = length
            reqs.append(req)
        return reqs

    def _timed(self, work: Any) -> tuple[float, Any]:
        # A collection pause inside the timed region is noise, not the model's cost.
        gc.disable()
        try:
            self._bench.synchronize()
            start = time.perf_counter()
            result = work()
            self._bench.synchronize()
            return (time.perf_counter() - start) * 1e3, result
        finally:
            gc.enable()

    # ------------------------------------------------------------- timing

    def prefill(
        self, new_per_seq: list[int], prefix_per_seq: list[int], repeats: int = 3
    ) -> Timing:
        """Fastest of ``repeats`` extends of ``new_per_seq`` tokens after ``prefix_per_seq`` cached.

        The fastest, not the median: interference from outside (other processes,
        a first allocation of a size) only ever adds time.
        """
        timings = [self._prefill_once(new_per_seq, prefix_per_seq) for _ in range(repeats)]
        return min(timings, key=lambda t: t.latency_ms)

    def _prefill_once(self, new_per_seq: list[int], prefix_per_seq: list[int]) -> Timing:
        self._bench.clear()
        lengths = [n + p for n, p in zip(new_per_seq, prefix_per_seq, strict=True)]
        reqs = self._requests(lengths, max_new_tokens=1)
        with torch.inference_mode():
            if any(prefix_per_seq):
                for req, prefix in zip(reqs, prefix_per_seq, strict=True):
                    req.extend_end = max(prefix, 1)
                self._bench.extend(reqs)
                for req, prefix in zip(reqs, prefix_per_seq, strict=True):
                    req.prefix_len = max(prefix, 1)
                    req.extend_end = len(req.origin_input_ids)
            latency, _ = self._timed(lambda: self._bench.extend(reqs))
        prefix = sum(r.prefix_len for r in reqs)
        return Timing(latency, sum(lengths) - prefix, prefix, len(reqs), 0)

    def decode(self, kv_per_seq: list[int], steps: int = 5, passes: int = 2) -> Timing:
        """Time of a decode step of sequences holding ``kv_per_seq`` tokens.

        Each pass takes the median of ``steps`` steps; the result is the fastest
        pass. Every step has new buffer sizes, so the first pass also warms up
        what a size's first allocation costs (page faults, allocator growth),
        which is not the model's cost; interference only ever adds time.
        """
        timings = [self._decode_once(kv_per_seq, steps) for _ in range(passes)]
        return min(timings, key=lambda t: t.latency_ms)

    def _decode_once(self, kv_per_seq: list[int], steps: int) -> Timing:
        self._bench.clear()
        reqs = self._requests(kv_per_seq, max_new_tokens=steps + 2)
        with torch.inference_mode():
            next_ids, _, batch = self._bench.extend(reqs)
            times = []
            for _ in range(steps):
                kv = sum(kv_per_seq) + len(reqs) * (len(times) + 1)
                latency, (next_ids, _) = self._timed(
                    lambda ids=next_ids: self._bench.decode(ids, batch)
                )
                times.append((latency, kv))
        latency = statistics.median(t for t, _ in times)
        kv = times[len(times) // 2][1]
        return Timing(latency, len(reqs), 0, len(reqs), kv)

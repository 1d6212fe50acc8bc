"""The event loop, the requests, and what every simulated instance shares.

Time is in milliseconds of simulated time. An instance runs one *step* at a
time (a prefill batch, a decode step, or both side by side): it plans the step
from its state, the loop advances the clock by the step's predicted duration,
and the step's effects (tokens, completed prefills) apply at its end. Requests
that arrive during a step wait for the next one, as in a real scheduler loop.

A request produces its first token when its prefill completes and one token
per decode step it takes part in; a decode batch is kept as a step counter
plus a heap of the step at which each member finishes, so a step costs O(1)
however large the batch (the batch's KV grows by its size every step). The
batch also keeps the end time of every step: a member's gaps between tokens
are the steps it took part in, read off that timeline when it finishes.
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drift_sgl.latency.model import LatencyModel
from drift_sgl.policy.kv import admission_kv_tokens
from drift_sgl.sim.cache import RadixCache, Segment

#: Most new tokens one prefill batch or gang may hold (SGLang's --max-prefill-tokens).
MAX_PREFILL_TOKENS = 16384


class SimError(RuntimeError):
    """The simulation cannot run as configured (the message says why)."""


@dataclass(frozen=True)
class SimConfig:
    """Everything a run depends on besides the trace and the latency model."""

    policy: str
    ttft_slo_ms: float
    tpot_slo_ms: float
    kv_capacity_tokens: int
    kv_bytes_per_token: int
    gpus: int = 1
    prefill_gpus: int = 0
    chunk_size: int = 8192
    kv_link_gbps: float = 400.0
    max_prefill_tokens: int = MAX_PREFILL_TOKENS
    pdmux_layer_budget_tokens: int = 65536
    pdmux_decode_bs_divisor: int = 36
    #: drift/pdmux: the loop waits for decode only and prefill blocks queue on their
    #: stream (the servers' loops); False: each step lasts max(decode, prefill block).
    async_prefill: bool = False


@dataclass(eq=False)
class Request:
    """One turn of a session, from its arrival to its last token (mutable sim state)."""

    rid: str
    session: str
    turn: int
    segments: tuple[Segment, ...]
    out_segment: Segment
    prompt_tokens: int
    output_tokens: int
    arrival_ms: float
    deadline_ms: float
    group: int | None
    # -- filled in as it runs --
    cached_tokens: int = 0
    new_tokens: int = 0
    prefilled: int = 0
    path: list = field(default_factory=list)
    first_token_ms: float | None = None
    last_token_ms: float | None = None
    join_step: int = 0
    decode_tokens: int = 0
    #: 99th percentile of the gaps between its tokens (None: fewer than 2 tokens).
    tbt_p99_ms: float | None = None
    instance: str = ""
    #: (cache version, cached tokens, planner view) memo for a waiting request.
    peek: tuple | None = None

    def kv_need(self, new_tokens: int, with_output: bool = True) -> int:
        """KV its admission reserves (``policy.kv``). A simulated request has a
        fixed length and is never retracted, so it reserves its whole output."""
        return admission_kv_tokens(new_tokens, self.output_tokens if with_output else 0, None)


@dataclass(frozen=True)
class RequestRecord:
    """A finished request, as the metrics see it."""

    rid: str
    arrival_ms: float
    first_token_ms: float
    last_token_ms: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    decode_tokens: int
    instance: str
    #: 99th percentile of the gaps between consecutive tokens, the time between
    #: tokens a user feels at its worst; None with fewer than 2 tokens.
    tbt_p99_ms: float | None = None

    @property
    def ttft_ms(self) -> float:
        return self.first_token_ms - self.arrival_ms

    @property
    def tpot_ms(self) -> float | None:
        """Mean time per output token after the first (a mean hides stalls)."""
        if self.output_tokens < 2:
            return None
        return (self.last_token_ms - self.first_token_ms) / (self.output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stable_hash(text: str) -> int:
    """A hash that is the same in every process (``hash`` of a str is salted)."""
    return zlib.crc32(text.encode("utf-8"))


class Simulator:
    """A discrete-event loop: callbacks ordered by (time, insertion order)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, time_ms: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(time_ms, self.now), next(self._seq), callback))

    def run(self) -> None:
        while self._heap:
            self.now, _, callback = heapq.heappop(self._heap)
            callback()


class DecodeBatch:
    """The running decode batch: who takes part, its KV, who finishes when."""

    def __init__(self) -> None:
        self.steps = 0
        self.members: dict[str, Request] = {}
        self.kv_tokens = 0
        self.tokens = 0
        self._finish: list[tuple[int, int, Request]] = []
        self._seq = itertools.count()
        #: step_end_ms[k]: when step k ended (index 0 is unused).
        self.step_end_ms: list[float] = [0.0]

    @property
    def size(self) -> int:
        return len(self.members)

    def join(self, req: Request) -> None:
        """Add a request that has its first token; it finishes after output-1 steps."""
        req.join_step = self.steps
        self.members[req.rid] = req
        self.kv_tokens += req.prompt_tokens + 1
        finish = self.steps + req.output_tokens - 1
        heapq.heappush(self._finish, (finish, next(self._seq), req))

    def step(self, now: float) -> list[Request]:
        """One decode step ends at ``now``: a token for every member; returns the finished."""
        self.steps += 1
        self.step_end_ms.append(now)
        self.tokens += len(self.members)
        self.kv_tokens += len(self.members)
        done = []
        while self._finish and self._finish[0][0] <= self.steps:
            req = heapq.heappop(self._finish)[2]
            del self.members[req.rid]
            req.decode_tokens = self.steps - req.join_step
            req.last_token_ms = now
            req.tbt_p99_ms = percentile(self.gaps_ms(req), 99)
            self.kv_tokens -= req.prompt_tokens + req.output_tokens
            done.append(req)
        return done

    def gaps_ms(self, req: Request) -> list[float]:
        """The gaps before each of ``req``'s decode tokens, up to this step.

        The first is from its first token (which a prefill made, maybe on
        another instance) to the end of the first step it took part in.
        """
        assert req.first_token_ms is not None
        ends = self.step_end_ms[req.join_step + 1 : self.steps + 1]
        return [b - a for a, b in itertools.pairwise([req.first_token_ms, *ends])]


@dataclass(frozen=True)
class Chunk:
    """Part of one request's prefill in a batch."""

    req: Request
    tokens: int
    #: Tokens before the chunk that it attends to (cached prefix + earlier chunks).
    prefix: int


class Instance:
    """One GPU's scheduler: waiting queue, radix cache, decode batch and step loop.

    Subclasses implement ``plan``: the duration of the next step and what to do
    at its end, or None to idle until something arrives.
    """

    def __init__(
        self,
        sim: Simulator,
        name: str,
        latency: LatencyModel,
        config: SimConfig,
        on_finish: Callable[[Request, float], None],
    ) -> None:
        self.sim = sim
        self.name = name
        self.latency = latency
        self.config = config
        self.on_finish = on_finish
        self.cache = RadixCache(config.kv_capacity_tokens)
        self.waiting: deque[Request] = deque()
        self.partial: list[Request] = []
        self.batch = DecodeBatch()
        self.total_sm = latency.device.total_sm
        self.num_layers = latency.model.num_layers
        self.prefill_tokens = 0
        self._busy = False

    # ----------------------------------------------------------- the loop

    def submit(self, req: Request) -> None:
        req.instance = self.name
        self.waiting.append(req)
        self.wake()

    def wake(self) -> None:
        if not self._busy:
            self._next_step()

    def plan(self) -> tuple[float, Callable[[float], None]] | None:
        raise NotImplementedError

    def _next_step(self) -> None:
        step = self.plan()
        if step is None:
            self._busy = False
            return
        self._busy = True
        duration, on_end = step
        if not duration > 0:
            raise SimError(f"{self.name}: a step of {duration} ms")
        self.sim.at(self.sim.now + duration, lambda: self._end(on_end))

    def _end(self, on_end: Callable[[float], None]) -> None:
        on_end(self.sim.now)
        self._next_step()

    # ------------------------------------------------- request life cycle

    def admit(self, req: Request, reserve_output: bool = True) -> bool:
        """Match the prefix, lock it and reserve KV; False (nothing held) if it does not fit."""
        path, cached = self.cache.match(req.segments, touch=True)
        self.cache.lock(path)
        new = req.prompt_tokens - cached
        if not self.cache.reserve(req.kv_need(new, reserve_output)):
            self.cache.unlock(path)
            return False
        req.path, req.cached_tokens, req.new_tokens, req.prefilled = path, cached, new, 0
        return True

    def insert_prompt(self, req: Request) -> None:
        """The prompt's KV enters the radix tree (still locked by the request)."""
        added = self.cache.commit(req.path, req.segments[len(req.path) :], req.new_tokens)
        req.path = req.path + added
        self.prefill_tokens += req.new_tokens

    def prefill_done(self, req: Request, now: float) -> None:
        """First token; the request joins the decode batch (or is done already)."""
        self.insert_prompt(req)
        req.first_token_ms = req.last_token_ms = now
        if req.output_tokens == 1:
            self.finish(req, now)
        else:
            self.batch.join(req)

    def decode_step(self, now: float) -> None:
        for req in self.batch.step(now):
            self.finish(req, now)

    def finish(self, req: Request, now: float) -> None:
        """The output's KV enters the tree and the request lets go of its path."""
        added = self.cache.commit(req.path, [req.out_segment], req.output_tokens)
        self.cache.unlock(req.path + added)
        self.on_finish(req, now)

    # ---------------------------------------------------- chunked prefill

    def take_chunks(self, budget: int, reserve_output: bool = True) -> list[Chunk]:
        """SGLang's prefill batch: the chunked request first, then FCFS admissions.

        The last request may be cut to fit ``budget``; it continues first in the
        next batch. Admission stops at the first request whose KV does not fit.
        """
        chunks, left = [], budget
        for req in self.partial:
            if left <= 0:
                break
            n = min(req.new_tokens - req.prefilled, left)
            chunks.append(Chunk(req, n, req.cached_tokens + req.prefilled))
            left -= n
        while left > 0 and self.waiting and self.admit(self.waiting[0], reserve_output):
            req = self.waiting.popleft()
            self.partial.append(req)
            n = min(req.new_tokens, left)
            chunks.append(Chunk(req, n, req.cached_tokens))
            left -= n
        return chunks

    def chunk_ms(self, chunks: Sequence[Chunk], extra_tokens: int = 0) -> float:
        """Whole-device prefill time of a chunk batch (``extra_tokens`` ride along)."""
        return self.latency.prefill_ms(
            sum(c.tokens for c in chunks) + extra_tokens,
            sum(c.prefix for c in chunks),
            self.total_sm,
            batch_size=len(chunks),
        )

    def apply_chunks(self, chunks: Sequence[Chunk], now: float) -> list[Request]:
        """Advance each chunked request; returns those whose prefill completed."""
        done = []
        for chunk in chunks:
            chunk.req.prefilled += chunk.tokens
            if chunk.req.prefilled >= chunk.req.new_tokens:
                done.append(chunk.req)
        if done:
            finished = {id(r) for r in done}
            self.partial = [r for r in self.partial if id(r) not in finished]
        return done

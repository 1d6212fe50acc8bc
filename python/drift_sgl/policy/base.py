"""The decision interface between the multiplexing loop and its policy.

Each step the loop builds a ``MuxState`` from the scheduler, asks the policy,
and executes the returned ``MuxDecision``. The policy is pure: no torch, no
I/O, the same state always gives the same decision (so every TP rank decides
alike). ``LayerBudgetRule`` reads only the first fields; the SLO planner
(``drift_sgl.policy.planner``) reads them all.

Times are milliseconds on one clock chosen by the caller (the scheduler uses
``time.monotonic``, the simulator its simulated clock). A deadline of
``math.inf`` means "no target".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from drift_sgl.partition.base import SmSplit


@dataclass(frozen=True, slots=True)
class WaitingRequest:
    """A request in the waiting queue, as the planner sees it."""

    rid: str
    #: Input tokens not in the prefix cache: what its prefill computes.
    new_tokens: int
    #: Input tokens the prefix cache already holds.
    prefix_tokens: int
    #: Arrival + TTFT target; ``math.inf`` without a target.
    deadline_ms: float
    #: KV tokens its admission needs (new tokens + the reserve for its output).
    kv_tokens: int
    #: Requests with the same key start with the same tokens (a shared system
    #: prompt, an earlier turn); None: no known sharing.
    group: int | None = None


@dataclass(frozen=True, slots=True)
class MuxState:
    """What the policy sees of the scheduler at the start of a step."""

    #: Requests in the decode step about to run (0: no decode this step).
    decode_batch_size: int
    #: New (uncached) tokens of the prefill gang in flight (0: no gang).
    prefill_new_tokens: int
    #: Transformer layers the gang has not launched yet.
    prefill_layers_left: int
    #: Layers of the model.
    num_layers: int
    #: The backend's split table (see ``drift_sgl.partition.base``).
    splits: tuple[SmSplit, ...]

    # -- read by the SLO planner; the defaults describe "nothing known" --
    #: Now, on the clock of every deadline below.
    now_ms: float = 0.0
    #: Whether the backend runs both phases at once (False: they take turns).
    concurrent: bool = True
    #: KV tokens held by the decode batch (all its sequences together).
    decode_kv_tokens: int = 0
    #: Tightest TPOT target among the running requests; None: no target.
    decode_tpot_ms: float | None = None
    #: Cached prefix tokens and sequences of the gang in flight.
    prefill_prefix_tokens: int = 0
    prefill_batch_size: int = 0
    #: Tightest TTFT deadline of the gang in flight.
    prefill_deadline_ms: float = math.inf
    #: The gang in flight pre-empted another one (pre-emption does not nest).
    prefill_preempting: bool = False
    #: Waiting requests, sorted by ``deadline_ms`` (ties: arrival order).
    waiting: tuple[WaitingRequest, ...] = ()
    #: KV tokens that admission may take (free + evictable).
    kv_free_tokens: int = 0
    #: Most new tokens one prefill gang may hold (SGLang's --max-prefill-tokens).
    prefill_token_budget: int = 16384
    #: Most requests one gang may hold.
    prefill_max_requests: int = 1 << 30
    #: The split of the previous step: a hint that makes the split search
    #: cheaper (the decision is the same with or without it).
    previous_split: int | None = None

    @property
    def has_decode(self) -> bool:
        return self.decode_batch_size > 0

    @property
    def has_prefill(self) -> bool:
        return self.prefill_layers_left > 0


@dataclass(frozen=True, slots=True)
class MuxDecision:
    """What one step runs.

    ``admit`` lists the waiting requests (by rid, in order) that start a new
    prefill gang this step; with ``preempt`` that gang runs first and the gang
    in flight resumes, at the layer it reached, once the new one completes.
    ``prefill_layers`` are launched for the gang that runs this step (the new
    one, when one is admitted). ``shed`` lists waiting requests to end now
    because they can no longer meet their TTFT (``--drift-overload shed``).
    """

    split_index: int
    prefill_layers: int
    admit: tuple[str, ...] = ()
    preempt: bool = False
    shed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.split_index < 0:
            raise ValueError(f"split_index must be >= 0, got {self.split_index}")
        if self.prefill_layers < 0:
            raise ValueError(f"prefill_layers must be >= 0, got {self.prefill_layers}")
        if self.preempt and not self.admit:
            raise ValueError("preempt needs requests to admit")
        if self.shed and not set(self.shed).isdisjoint(self.admit):
            raise ValueError("a request cannot be both admitted and shed")


class MuxPolicy(Protocol):
    """Chooses the split, the prefill layers and the admissions of one step."""

    #: Whether ``decide`` chooses the requests a gang admits (and ``replan``
    #: exists); False: the engine's own admission starts gangs.
    chooses_requests: bool

    def decide(self, state: MuxState) -> MuxDecision:
        """Return the decision for ``state``; must be deterministic."""
        ...

    def replan(self, decision: MuxDecision, formed: MuxState) -> MuxDecision:
        """``decision``'s split and layers for the gang admission formed (``formed``:
        the state with that gang in flight). Called only if ``chooses_requests``."""
        ...

"""What the planner sees of SGLang's requests: SLO targets, deadlines, prefix hits.

Each request gets a ``RequestSlo`` the first time the scheduler looks at it:
its targets (its own or its class's, carried from HTTP in its sampling
parameters: ``drift_sgl.door.slo``; ``drift_sgl.policy.slo``), its TTFT deadline
(counted from when it entered SGLang's waiting queue) and its prefix group.
Prefix matches of waiting requests are refreshed once per completed prefill
(only then can the radix tree have gained their prefix), not every step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from drift_sgl.door.slo import RequestedSlo
from drift_sgl.policy.base import WaitingRequest
from drift_sgl.policy.kv import OUTPUT_RESERVE_CLIP, admission_kv_tokens, running_kv_room
from drift_sgl.policy.slo import SloTable

logger = logging.getLogger(__name__)

#: Tokens that name a request's prefix group: long enough to tell system
#: prompts apart, short enough to be cheap to hash.
GROUP_TOKENS = 64


def now_ms() -> float:
    """The clock of every deadline: SGLang's queue-entry times use perf_counter."""
    return time.perf_counter() * 1000.0


@dataclass
class RequestSlo:
    """drift's per-request bookkeeping (kept on the Req as ``drift_slo``)."""

    deadline_ms: float
    tpot_ms: float | None
    group: int | None
    #: The SLO class the request named (None: none).
    slo_class: str | None = None
    prefix_tokens: int = 0
    #: Value of the scheduler's prefill counter when the prefix was last matched.
    matched_at: int = -1


class SloView:
    """Builds the planner's view of the running and waiting requests."""

    def __init__(self, table: SloTable, output_clip: int = OUTPUT_RESERVE_CLIP) -> None:
        self.table = table
        #: SGLang's clip on the output KV it reserves per request (``policy.kv``).
        self.output_clip = output_clip
        self.unknown_classes: set[str] = set()

    def of(self, req: Any) -> RequestSlo:
        slo = getattr(req, "drift_slo", None)
        if slo is None:
            asked = RequestedSlo.from_custom_params(req.sampling_params.custom_params)
            asked = asked or RequestedSlo()
            name = asked.slo_class
            target, known = self.table.resolve(name, asked.ttft_ms, asked.tpot_ms)
            if not known and name not in self.unknown_classes:
                self.unknown_classes.add(name)
                logger.warning(
                    "drift: SLO class %r is not in --drift-slo-classes; "
                    "using the server-wide targets",
                    name,
                )
            entry = getattr(req.time_stats, "wait_queue_entry_time", 0.0) or 0.0
            arrival = entry * 1000.0 if entry > 0 else now_ms()
            ids = req.origin_input_ids
            slo = RequestSlo(
                deadline_ms=math.inf if target.ttft_ms is None else arrival + target.ttft_ms,
                tpot_ms=target.tpot_ms,
                group=hash(tuple(ids[:GROUP_TOKENS])) if len(ids) >= GROUP_TOKENS else None,
                slo_class=name,
            )
            req.drift_slo = slo
        return slo

    def ttft_met(self, req: Any) -> tuple[str | None, bool | None]:
        """The request's class, and whether its first token, produced now, met
        its TTFT deadline (None: it has no TTFT target)."""
        slo = self.of(req)
        met = None if math.isinf(slo.deadline_ms) else now_ms() <= slo.deadline_ms
        return slo.slo_class, met

    def tightest_tpot(self, reqs: list[Any]) -> float | None:
        targets = [t for t in (self.of(r).tpot_ms for r in reqs) if t is not None]
        return min(targets) if targets else None

    def earliest_deadline(self, reqs: list[Any]) -> float:
        return min((self.of(r).deadline_ms for r in reqs), default=math.inf)

    def kv_room(self, running: list[Any], new_token_ratio: float) -> int:
        """KV the running requests keep for their outputs (``policy.kv``: SGLang's
        count, which admission leaves them)."""
        room = 0.0
        for req in running:
            params = req.sampling_params
            ratio = 1.0 if getattr(params, "ignore_eos", False) else new_token_ratio
            room += running_kv_room(
                self._max_new(req), len(req.output_ids), ratio, self.output_clip
            )
        return math.ceil(room)

    def _max_new(self, req: Any) -> int:
        """The request's ``max_new_tokens`` (unset: as many as SGLang's clip reserves)."""
        max_new = req.sampling_params.max_new_tokens
        return self.output_clip if max_new is None else max_new

    def waiting(
        self,
        queue: list[Any],
        match_prefix: Any,
        prefills_done: int,
        priority_sign: int | None = None,
    ) -> tuple[WaitingRequest, ...]:
        """Waiting requests that still need their first token, by deadline.

        ``match_prefix(req)`` returns the cached prefix length (it adopts the
        match on the request, as SGLang's own scheduling policy does).
        Requests retracted after producing tokens are left out: the scheduler
        resumes them first, whatever the planner admits. With SGLang's
        priority scheduling on (``priority_sign``, SGLang's sort direction),
        only the most urgent priority present is offered: a lower priority
        waits until no request of a higher one does, as in SGLang's queue order.
        """
        fresh = [req for req in queue if not req.output_ids]
        if priority_sign is not None and fresh:
            best = min(req.priority * priority_sign for req in fresh)
            fresh = [req for req in fresh if req.priority * priority_sign == best]
        views = []
        for req in fresh:
            slo = self.of(req)
            if slo.matched_at != prefills_done:
                slo.prefix_tokens = int(match_prefix(req))
                slo.matched_at = prefills_done
            total = len(req.origin_input_ids)
            new = max(1, total - slo.prefix_tokens)
            views.append(
                WaitingRequest(
                    rid=req.rid,
                    new_tokens=new,
                    prefix_tokens=slo.prefix_tokens,
                    deadline_ms=slo.deadline_ms,
                    kv_tokens=admission_kv_tokens(new, self._max_new(req), self.output_clip),
                    group=slo.group,
                )
            )
        views.sort(key=lambda view: view.deadline_ms)  # stable: ties keep arrival order
        return tuple(views)

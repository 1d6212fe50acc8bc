"""One multiplexing step, against an engine that carries it out.

The order is the gang life cycle, the same for the server and the simulator:

  1. a gang whose last layer block has completed merges into decode, and a
     paused gang resumes;
  2. the engine's own per-step duties (SGLang: chunked-prefill bookkeeping,
     grammars, finished requests);
  3. a policy that chooses no requests (upstream's layer-budget rule) lets the
     engine's own admission start a gang when none is in flight;
  4. the policy decides the split, the prefill layers, admissions and sheds;
  5. shed requests end; the admitted ones start a gang (only when no gang is
     in flight, or to pre-empt it), and for a gang that formed the policy
     re-plans split and layers (admission can form another gang than the one
     planned: fewer requests fit, or one's allocation evicted the next one's
     cached prefix);
  6. the engine launches the decode step and the next layer block.

Merging first (not at the end of the step that completed the gang) puts the
gang's KV into the prefix cache before the engine's duties and admission read
it, in both engines, and needs no separate end-of-step hook.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from drift_sgl.mux.gangs import GangSlots
from drift_sgl.policy.base import MuxDecision, MuxPolicy

G = TypeVar("G")
L = TypeVar("L", covariant=True)


class MuxEngine(Protocol[G, L]):
    """What ``mux_step`` asks of an engine (SGLang's scheduler, the simulator, a fake).

    ``G`` is the engine's gang (a batch prefilled layer block by block), ``L``
    what its ``launch`` returns to the engine's own loop.
    """

    #: The gang in flight and a paused one; ``mux_step`` moves gangs through it.
    gangs: GangSlots[G]

    def gang_complete(self, gang: G) -> bool:
        """Whether ``gang``'s last layer block has finished (every rank agreeing)."""
        ...

    def merge_gang(self, gang: G) -> None:
        """First tokens of a completed gang, its KV into the prefix cache, its
        requests into the decode batch."""
        ...

    def begin_step(self) -> None:
        """The engine's own duties at the start of a step, after any merge."""
        ...

    def admit_own(self) -> G | None:
        """A gang by the engine's own admission (for policies that choose no requests)."""
        ...

    def decide(self, policy: MuxPolicy) -> MuxDecision:
        """``policy``'s decision on the engine's state, waiting requests included.

        An engine adds what its process needs around the call (the server: one
        rank decides for all, a planner error falls back to a safe rule).
        """
        ...

    def shed(self, rids: tuple[str, ...]) -> None:
        """End the waiting requests ``rids``: they can no longer meet their TTFT."""
        ...

    def admit_gang(self, decision: MuxDecision) -> G | None:
        """Admit the decision's requests as a new gang; None when none formed.

        Called with no gang in flight, or when the decision pre-empts the one in
        flight. The engine's admission has the last word: requests that do not
        fit its KV stay waiting, and it may add requests it must serve first
        (SGLang: retracted requests, the next chunk of a long prompt).
        """
        ...

    def replan(self, policy: MuxPolicy, decision: MuxDecision) -> MuxDecision:
        """``policy.replan(decision, state)`` with the formed gang in flight and
        no waiting requests in the state."""
        ...

    def launch(self, decision: MuxDecision) -> L:
        """Run the decode step and the next ``decision.prefill_layers`` of the
        running gang on the decision's split."""
        ...


def mux_step(policy: MuxPolicy, engine: MuxEngine[G, L]) -> L:
    """Run one step of ``engine`` under ``policy``; returns what ``launch`` returned."""
    gangs = engine.gangs
    if gangs.current is not None and engine.gang_complete(gangs.current):
        engine.merge_gang(gangs.finish())
    engine.begin_step()
    gangs.resume()
    if not policy.chooses_requests and gangs.current is None:
        own = engine.admit_own()
        if own is not None:
            gangs.start(own)
    decision = engine.decide(policy)
    engine.shed(decision.shed)
    if policy.chooses_requests and (gangs.current is None or decision.preempt):
        gang = engine.admit_gang(decision)
        if gang is not None:
            gangs.start(gang)
            decision = engine.replan(policy, decision)
    return engine.launch(decision)

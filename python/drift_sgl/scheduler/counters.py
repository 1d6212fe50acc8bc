"""Counters of what the multiplexing loop did, reported in /server_info."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class MuxCounters:
    """Step counts since start-up; a step is one pass of the loop that ran work."""

    #: Steps that ran a decode step.
    decode_steps: int = 0
    #: Prefill layer blocks launched.
    prefill_blocks: int = 0
    #: Steps that ran a decode step and a prefill block side by side.
    mux_steps: int = 0
    #: Prefill gangs (batches of requests prefilled together) started.
    gangs_started: int = 0
    #: Gangs whose prefill completed and whose requests joined decode.
    gangs_merged: int = 0
    #: Requests aborted while their prefill was in flight.
    aborted_mid_prefill: int = 0
    #: Gangs paused at a layer boundary for a short urgent prefill.
    preemptions: int = 0
    #: Requests ended because they could no longer meet their TTFT (--drift-overload shed).
    shed_requests: int = 0
    #: Steps the planner raised on (logged; the step fell back to the layer-budget rule).
    planner_errors: int = 0
    #: Gangs SGLang's admission started because nothing ran and the policy admitted no one.
    idle_admissions: int = 0
    #: Times the liveness watchdog found work waiting with nothing run for its timeout.
    stalls: int = 0
    #: Batches (gangs, decode steps, admissions) that raised; only their requests ended.
    failed_batches: int = 0
    #: Requests ended because a batch they were in raised.
    failed_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

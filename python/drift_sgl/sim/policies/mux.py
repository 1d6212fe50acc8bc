"""PD multiplexing on one GPU: drift's SLO planner and upstream SGLang's pdmux rule.

Both run a decode step and a block of prefill layers side by side on
complementary SM partitions each step; they differ in the split table, in who
chooses the split and the layers, and in admission:

* ``drift``: ``SloPlanner(latency, overload="serve")``, the object the server
  uses, decides everything (split, layers, admission in deadline order,
  pre-emption) from a ``MuxState`` built like the scheduler builds it. Split
  table as the server's backend builds it (``planned_split_table``).
* ``pdmux``: upstream's ``divide_sm`` table (sm_group_num 8), the split and
  layers from ``LayerBudgetRule`` (budget 65536 tokens, decode_bs_divisor 36),
  and SGLang's admission: when no gang is in flight, FCFS up to 16384 new
  tokens and the free KV, no SLOs, no pre-emption.

The step itself is the server's: ``drift_sgl.mux.mux_step`` over this class as
its engine (merge a completed gang, decide, admit, re-plan, launch).

Step time = max(decode step at the split's decode SMs, prefill block =
layers/L of the gang's prefill at the split's prefill SMs); a phase running
beside the other takes its solo time times the profile's typical co-run
slowdown (``LatencyModel.co_run_slowdown``), not the planner's worst case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drift_sgl.latency.identity import DeviceIdentity
from drift_sgl.mux import GangSlots, mux_step
from drift_sgl.partition.base import SmSplit
from drift_sgl.partition.sm_layout import SmGranularity, granularity_for, planned_split_table
from drift_sgl.policy import (
    LayerBudgetRule,
    MuxDecision,
    MuxPolicy,
    MuxState,
    SloPlanner,
    WaitingRequest,
)
from drift_sgl.sim.engine import Instance, Request, SimError

#: Upstream pdmux's default number of stream groups (prefill-only + 6 mixed + decode-only).
PDMUX_SM_GROUPS = 8


def drift_splits(device: DeviceIdentity) -> tuple[SmSplit, ...]:
    """The table drift's server builds on ``device`` with ``--drift-splits auto``.

    GPU: green-context granularity of its family (``family_granularity``);
    CPU: any thread count, as the server's cpu-streams backend.
    """
    unit = SmGranularity(1, 1) if device.kind == "cpu" else family_granularity(device.name)
    return planned_split_table(device.total_sm, unit)


def family_granularity(device_name: str) -> SmGranularity:
    """The server's granularity table (``granularity_for``) for a GPU known by name only.

    The server reads the compute capability; a profile keeps the device's
    name. Ampere and Ada parts split like capability 8.x (4 SMs, multiples of
    2); everything else like Hopper (8, 8), which Blackwell shares.
    """
    name = device_name.upper()
    ampere_or_ada = ("A100", "A10", "A30", "A40", "L4", "L40", "RTX")
    return granularity_for(8 if any(tag in name for tag in ampere_or_ada) else 9, 0)


def pdmux_splits(total_sm: int, device_name: str, groups: int = PDMUX_SM_GROUPS - 2):
    """Upstream ``divide_sm`` (prefill >= decode >= 16), wrapped in the table convention.

    Upstream's architecture table agrees with ``granularity_for`` on Ampere,
    Ada and Hopper.
    """
    unit = family_granularity(device_name)
    values = [
        x
        for x in range(unit.min_count, total_sm - unit.min_count + 1, unit.multiple)
        if x >= total_sm - x and total_sm - x >= 16
    ]
    if not values:
        raise SimError(f"pdmux: no valid SM division of {total_sm} SMs")
    if len(values) >= groups:
        values = values[:: max(1, len(values) // groups)][:groups]
    mixed = [SmSplit(x, total_sm - x) for x in reversed(values)]
    return (SmSplit(total_sm, 0), *mixed, SmSplit(0, total_sm))


@dataclass(eq=False)
class Gang:
    """Requests prefilled together, layer block by layer block."""

    reqs: list[Request]
    new: int
    prefix: int
    layers_left: int
    deadline_ms: float


class MuxInstance(Instance):
    """A GPU multiplexing prefill gangs and decode steps on SM partitions.

    The engine of ``mux_step`` whose phases take the latency model's time;
    ``launch`` returns the step's duration and what happens at its end.
    """

    def __init__(self, *args, planner: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg, lat = self.config, self.latency
        if planner:
            self.policy = SloPlanner(lat, overload="serve")
            self.splits = drift_splits(lat.device)
        else:
            self.policy = LayerBudgetRule(
                layer_budget_tokens=cfg.pdmux_layer_budget_tokens,
                decode_full_batch=cfg.pdmux_decode_bs_divisor,
            )
            self.splits = pdmux_splits(self.total_sm, lat.device.name)
        self.gangs: GangSlots[Gang] = GangSlots()
        #: When the prefill stream finishes the blocks launched so far (async mode).
        self.prefill_until = 0.0
        self.prefill_units = 0
        self.previous_split: int | None = None
        self.mixed_steps = 0

    # ------------------------------------------------------------- state

    def _view(self, req: Request) -> WaitingRequest:
        """The planner's view of a waiting request (memoised until the tree changes)."""
        version = self.cache.version
        if req.peek is None or req.peek[0] != version:
            _, cached = self.cache.match(req.segments)
            new = req.prompt_tokens - cached
            view = WaitingRequest(
                rid=req.rid,
                new_tokens=new,
                prefix_tokens=cached,
                deadline_ms=req.deadline_ms,
                kv_tokens=req.kv_need(new),
                group=req.group,
            )
            req.peek = (version, view)
        return req.peek[1]

    def _state(self, with_waiting: bool = True) -> MuxState:
        gang, batch = self.gangs.current, self.batch
        # Deadlines are arrival + one TTFT target, so arrival order is deadline order.
        with_waiting = with_waiting and self.policy.chooses_requests
        waiting = tuple(self._view(r) for r in self.waiting) if with_waiting else ()
        return MuxState(
            decode_batch_size=batch.size,
            prefill_new_tokens=gang.new if gang else 0,
            prefill_layers_left=gang.layers_left if gang else 0,
            num_layers=self.num_layers,
            splits=self.splits,
            now_ms=self.sim.now,
            concurrent=True,
            decode_kv_tokens=batch.kv_tokens,
            decode_tpot_ms=self.config.tpot_slo_ms if batch.size else None,
            prefill_prefix_tokens=gang.prefix if gang else 0,
            prefill_batch_size=len(gang.reqs) if gang else 0,
            prefill_deadline_ms=gang.deadline_ms if gang else float("inf"),
            prefill_preempting=self.gangs.paused is not None,
            waiting=waiting,
            kv_free_tokens=self.cache.available,
            prefill_token_budget=self.config.max_prefill_tokens,
            previous_split=self.previous_split,
        )

    # --------------------------------------------------------- admission

    def _form_gang(self, reqs: list[Request]) -> Gang | None:
        admitted = [r for r in reqs if self.admit(r)]
        if not admitted:
            return None
        taken = {id(r) for r in admitted}
        self.waiting = type(self.waiting)(r for r in self.waiting if id(r) not in taken)
        return Gang(
            reqs=admitted,
            new=sum(r.new_tokens for r in admitted),
            prefix=sum(r.cached_tokens for r in admitted),
            layers_left=self.num_layers,
            deadline_ms=min(r.deadline_ms for r in admitted),
        )

    def _fcfs(self) -> list[Request]:
        """SGLang's admission order: FCFS up to the prefill token budget and the free KV."""
        picked, new, kv = [], 0, 0
        free = self.cache.available
        for req in self.waiting:
            view = self._view(req)
            if picked and new + view.new_tokens > self.config.max_prefill_tokens:
                break
            if kv + view.kv_tokens > free:
                break
            picked.append(req)
            new += view.new_tokens
            kv += view.kv_tokens
        return picked

    # ------------------------------------------------ the engine of mux_step

    def plan(self) -> tuple[float, Callable[[float], None]] | None:
        return mux_step(self.policy, self)

    def gang_complete(self, gang: Gang) -> bool:
        # With async prefill, the last block may still be queued on the prefill stream.
        return gang.layers_left == 0 and self.prefill_until <= self.sim.now

    def merge_gang(self, gang: Gang) -> None:
        for req in gang.reqs:
            self.prefill_done(req, self.sim.now)

    def begin_step(self) -> None:
        """Nothing: the simulated scheduler has no per-step duties of its own."""

    def admit_own(self) -> Gang | None:
        return self._form_gang(self._fcfs()) if self.waiting else None

    def decide(self, policy: MuxPolicy) -> MuxDecision:
        decision = policy.decide(self._state())
        self.previous_split = decision.split_index
        return decision

    def shed(self, rids: tuple[str, ...]) -> None:
        if rids:  # the planner runs with overload="serve"
            raise SimError(f"{self.name}: the simulated drift serves every request, asked to shed")

    def admit_gang(self, decision: MuxDecision) -> Gang | None:
        if not decision.admit:
            return None
        by_rid = {r.rid: r for r in self.waiting}
        return self._form_gang([by_rid[rid] for rid in decision.admit])

    def replan(self, policy: MuxPolicy, decision: MuxDecision) -> MuxDecision:
        decision = policy.replan(decision, self._state(with_waiting=False))
        self.previous_split = decision.split_index
        return decision

    def launch(self, decision: MuxDecision) -> tuple[float, Callable[[float], None]] | None:
        """The step's duration and its end (decode tokens, layers done), or None: idle."""
        now = self.sim.now
        split = self.splits[decision.split_index]
        gang, batch = self.gangs.current, self.batch
        layers = min(decision.prefill_layers, gang.layers_left) if gang else 0
        if batch.size and split.decode_units == 0:
            raise SimError(f"{self.name}: split {decision.split_index} leaves decode no SMs")
        if layers and split.prefill_units == 0:
            raise SimError(f"{self.name}: split {decision.split_index} leaves prefill no SMs")
        if self.config.async_prefill:
            duration = self._async_step(split, layers, now)
        else:
            duration = self._sync_step(split, layers)
        if duration is None:
            return None
        decoding = batch.size > 0

        def on_end(end: float) -> None:
            # A gang completed by this step merges at the start of the next
            # (``mux_step``), at this same simulated time.
            if decoding:
                self.decode_step(end)
            if not self.config.async_prefill and layers:
                gang.layers_left -= layers

        return duration, on_end

    def _block_ms(self, split: SmSplit, layers: int, beside_decode: bool) -> float:
        gang = self.gangs.current
        assert gang is not None
        sm, new = split.prefill_units, max(1, gang.new)
        full = self.latency.prefill_ms(new, gang.prefix, sm, batch_size=len(gang.reqs))
        if beside_decode:
            full *= self.latency.co_run_slowdown("prefill", sm, new)
        return full * layers / self.num_layers

    def _decode_ms(self, units: int, beside_prefill: bool) -> float:
        batch = self.batch
        step = self.latency.decode_ms(batch.size, batch.kv_tokens, units)
        if beside_prefill:
            step *= self.latency.co_run_slowdown("decode", units, batch.size)
        return step

    def _sync_step(self, split: SmSplit, layers: int) -> float | None:
        """The loop waits for both phases: max(decode step, prefill block)."""
        b = self.batch.size
        both = layers > 0 and b > 0
        decode = prefill = 0.0
        if b:
            decode = self._decode_ms(split.decode_units, both)
        if layers:
            prefill = self._block_ms(split, layers, both)
        self.mixed_steps += both
        return max(decode, prefill) or None

    def _async_step(self, split: SmSplit, layers: int, now: float) -> float | None:
        """The loop waits for decode only; prefill blocks queue on the prefill stream.

        As in upstream's ``event_loop_pdmux`` and drift's scheduler: a launched
        block runs at its launch split's prefill SMs after the blocks before it,
        and the gang completes at the first step boundary after its last block.
        While blocks are queued, decode gets at most the SMs they leave free
        (a policy that sees no layers left to launch may pick a wider split).
        """
        b = self.batch.size
        if layers:
            block = self._block_ms(split, layers, beside_decode=b > 0)
            self.prefill_until = max(now, self.prefill_until) + block
            self.prefill_units = split.prefill_units
            assert self.gangs.current is not None
            self.gangs.current.layers_left -= layers
        busy = self.prefill_until > now
        if b:
            self.mixed_steps += busy
            units = split.decode_units
            if busy:  # the queued blocks still hold their SMs
                units = min(units, self.total_sm - self.prefill_units)
            return self._decode_ms(units, busy)
        if self.gangs.current is not None and busy:
            return self.prefill_until - now
        return None

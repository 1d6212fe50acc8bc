"""DriftScheduler: SGLang's Scheduler with a prefill/decode-multiplexing loop.

One step of the loop is ``drift_sgl.mux.mux_step`` with this scheduler as its
engine (the simulator's drift is the other); docs/architecture.md walks
through it:
  1. ingest requests (SGLang; in ``event_loop_pdmux``);
  2. when the gang's last layer block has completed, process its result
     (first tokens, finish checks, KV into the radix tree) and merge its
     unfinished requests into the running batch (``merge_gang``);
  3. SGLang's per-step housekeeping (pending chunked aborts, hierarchical-cache
     events, grammars, finished requests out of the running batch:
     ``begin_step``); a paused gang resumes;
  4. ask the policy for a split, a number of prefill layers and (the SLO
     planner) the requests to admit; the layer-budget rule lets SGLang admit
     first, when no gang is in flight (``admit_own``, ``decide``);
  5. admit them with SGLang's own admission (radix-cache prefix matching
     included); for a gang formed, the planner re-plans split and layers
     (``admit_gang``, ``replan``);
  6. prepare the decode step of the running batch (SGLang, may retract), then
     launch decode in the decode partition and the next prefill layer block in
     the prefill partition, wait for decode and process its result (``launch``).
Everything SGLang keeps per step (last_batch, timestamps, metrics, idle
housekeeping) is kept here too, and the gang is visible to abort, flush and
idle checks.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import AbstractContextManager, nullcontext
from http import HTTPStatus
from typing import Any, ClassVar

import torch
from sglang.srt.distributed.parallel_state import pdmux_prefill_tp_group
from sglang.srt.environ import envs
from sglang.srt.managers.io_struct import AbortReq
from sglang.srt.managers.schedule_batch import FINISH_ABORT
from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.mem_cache.common import match_kv_cache, release_kv_cache
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.observability.req_time_stats import set_schedule_time_batch
from sglang.srt.runtime_context import get_device
from sglang.srt.utils import DynamicGradMode, broadcast_pyobj

from drift_sgl.config import DriftConfig
from drift_sgl.latency.select import device_identity, model_identity, select_latency_model
from drift_sgl.mux import GangSlots, mux_step
from drift_sgl.partition import BackendChoice, StreamPairBackend
from drift_sgl.policy import LayerBudgetRule, MuxDecision, MuxPolicy, MuxState
from drift_sgl.scheduler.counters import MuxCounters
from drift_sgl.scheduler.failures import failure_message, is_fatal
from drift_sgl.scheduler.faults import TestFaults
from drift_sgl.scheduler.gang import PrefillGang
from drift_sgl.scheduler.liveness import StallWatchdog
from drift_sgl.scheduler.metrics import drift_metrics
from drift_sgl.scheduler.report import drift_report
from drift_sgl.scheduler.sglang_splits import (
    decode_graph_memory_gb,
    publish_stream_groups,
    select_split,
    turn_off_sglang_pdmux,
)
from drift_sgl.scheduler.slo_view import SloView, now_ms
from drift_sgl.scheduler.startup import (
    build_policy,
    check_graph_memory,
    choose_partition,
    open_decision_log,
    open_timeline,
    require_split_prefill,
    startup_line,
)

logger = logging.getLogger(__name__)

#: SGLang's layer-split prefill (``TpModelWorker.forward_batch_split_prefill``)
#: samples without capturing the beam leaders' logits, which beam search needs at
#: its relay point: a beam request would crash the scheduler process.
BEAM_SEARCH_REFUSAL = (
    "drift-sgl does not support beam search (sampling_params.beam_width > 1): SGLang's "
    "layer-split prefill does not keep the logits beam selection needs; use n > 1 sampling, "
    "or serve this model with python -m sglang.launch_server"
)


class DriftScheduler(Scheduler):
    """Runs a decode step and a block of prefill layers in every step."""

    #: Bound per process by ``bind``; the defaults serve tests and direct use.
    drift_config: ClassVar[DriftConfig] = DriftConfig()

    @classmethod
    def bind(cls, config: DriftConfig) -> type[DriftScheduler]:
        """A subclass carrying ``config``, to install as SGLang's Scheduler."""
        return type(cls.__name__, (cls,), {"drift_config": config, "__module__": cls.__module__})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Set by ``init_pdmux`` on a GPU (before the model worker exists).
        self._partition_choice: BackendChoice | None = None
        super().__init__(*args, **kwargs)
        # The launcher keeps SGLang's --chunked-prefill-size at -1 (its layer-split
        # machinery requires it) and drift chunks instead: SGLang's admission cuts a
        # prompt longer than this into chunks, each of which runs as one gang.
        self.chunked_prefill_size = self.drift_config.prefill_chunk_tokens or int(
            self.max_prefill_tokens
        )
        # SGLang sends SPLIT_PREFILL batches to the layer-split forward only when
        # this is set. On a CPU the server argument stays off, so SGLang builds
        # none of its pdmux state (see init_pdmux for the GPU).
        self.enable_pdmux = True
        require_split_prefill(self.tp_worker.model_runner.model)
        config = self.drift_config
        choice = self._partition_choice or choose_partition(config)
        self._partition = choice.backend
        #: SGLang keeps per-split decode graphs and attention backends (GPU partitions).
        self._sglang_splits = isinstance(choice.backend, StreamPairBackend)
        self._graph_memory_gb = (
            decode_graph_memory_gb(self.tp_worker.model_runner) if self._sglang_splits else 0.0
        )
        check_graph_memory(
            config.max_graph_memory_gb, len(self._partition.splits), self._graph_memory_gb
        )
        latency = select_latency_model(
            config.profile,
            config.profile_allow_mismatch,
            self.model_config.hf_config.to_dict(),
            model_identity(self.model_config),
            device_identity(self.device, self._partition.total_units, get_device().gpu_id),
        )
        self.latency_model = latency.model
        self._slo_view = SloView(config.slo_table(), output_clip=CLIP_MAX_NEW_TOKENS)
        self._mux_policy = build_policy(config, self.latency_model)
        #: The gang in flight, and one it pre-empted at a layer boundary.
        self._gangs: GangSlots[PrefillGang] = GangSlots()
        #: This step's decision fell back to the layer-budget rule (a planner
        #: error): SGLang's own admission starts the gang.
        self._fell_back = False
        #: The batch whose attention metadata the backend holds (see _launch_prefill_block).
        self._attention_owner: Any = None
        self._previous_split: int | None = None
        #: Seconds the policy took this step (decide and re-plan), for the metrics.
        self._planner_s = 0.0
        self._mux_counters = MuxCounters()
        self._watchdog = StallWatchdog(timeout_s=config.stall_timeout_s)
        #: The watchdog found a stall; acted on next step, by every TP rank alike.
        self._stalled = False
        self._faults = TestFaults.from_env(os.environ)
        if self._faults != TestFaults():
            logger.warning("drift: test faults injected: %s", self._faults)
        self._timeline = open_timeline(config.timeline, self._partition, self.device)
        self._decision_log = open_decision_log(
            config.decision_log, self._mux_policy, self.latency_model
        )
        #: drift's Prometheus series (None without --enable-metrics or off the stats rank).
        self._metrics = drift_metrics(getattr(self, "metrics_collector", None))
        log = logger.warning if choice.fallback else logger.info
        log(startup_line(config, self._partition, choice.reason, latency.reason))
        if self._sglang_splits:
            logger.info(
                "drift: decode CUDA graphs for %d splits take %.2f GiB",
                len(self._partition.splits),
                self._graph_memory_gb,
            )

    # ------------------------------------------------------------ partitions

    def init_pdmux(self) -> None:
        """Called by SGLang's ``__init__`` before the model worker when the launcher
        set ``enable_pdmux`` (a GPU with green contexts wanted): make the partitions
        and hand their streams to SGLang, which then captures the decode graphs
        once per split. Without green contexts, SGLang's pdmux state is turned
        off again and the time-multiplexed backend is used."""
        choice = choose_partition(self.drift_config)
        self._partition_choice = choice
        if isinstance(choice.backend, StreamPairBackend):
            publish_stream_groups(choice.backend)
        else:
            turn_off_sglang_pdmux()

    def _span(self, phase: str, split: int, **info: int) -> AbstractContextManager[None]:
        timeline = self._timeline
        return nullcontext() if timeline is None else timeline.span(phase, split, **info)

    # ------------------------------------------------------------------ loop

    @DynamicGradMode()
    def event_loop_pdmux(self) -> None:
        """The multiplexing event loop (SGLang dispatches here when enable_pdmux)."""
        while not self.gracefully_exit:
            self.ingest_requests()
            if self._engine_paused:
                self._record_scheduler_state_for_paused_engine()
                self._watchdog.reset()  # a pause is not a stall
                continue
            self.run_mux_step()

    def run_mux_step(self) -> None:
        """One step (``mux_step``: merge, decide, shed, admit, launch), then the
        bookkeeping SGLang's loop does after a step."""
        counters = self._mux_counters
        started_before, merged_before = counters.gangs_started, counters.gangs_merged
        decode_batch, launched_prefill = mux_step(self._mux_policy, self)
        if self._timeline is not None:
            self._timeline.end_step()
        if self._metrics is not None:
            self._metrics.publish_counters(counters)

        # SGLang's abort, idle and memory checks read last_batch: point it at the
        # batch that holds KV beyond the running batch (the gang), else the decode.
        gang = self._gangs.current
        self.last_batch = gang.batch if gang is not None else decode_batch
        self.cur_batch_for_debug = self.last_batch
        progressed = (
            decode_batch is not None
            or launched_prefill
            or counters.gangs_merged > merged_before
            or counters.gangs_started > started_before
        )
        self._check_liveness(progressed)
        if not progressed and gang is None:
            self._sched_idled = True
            self.on_idle()
        if envs.SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY.get():
            self.invariant_checker.self_check_during_busy()

    # ------------------------------------------------ the engine of mux_step

    @property
    def gangs(self) -> GangSlots[PrefillGang]:
        """The gang in flight and a paused one (``MuxEngine.gangs``)."""
        return self._gangs

    def gang_complete(self, gang: PrefillGang) -> bool:
        """Whether the gang's last block has finished, agreed by every TP rank.

        Ranks poll their own events; merging on one rank and not another would
        desynchronise their batches, so with concurrent phases the ranks take
        the minimum (a CPU all-reduce, only while a gang is fully launched).
        """
        if not gang.fully_launched:
            return False
        complete = gang.is_complete()
        if self.tp_size == 1 or not self._partition.concurrent:
            return complete
        flag = torch.tensor([int(complete)], dtype=torch.int32)
        torch.distributed.all_reduce(
            flag, op=torch.distributed.ReduceOp.MIN, group=self.tp_cpu_group
        )
        return bool(flag.item())

    def merge_gang(self, gang: PrefillGang) -> None:
        """Process a completed gang's result and merge it into decode; a failure
        ends its requests only."""
        try:
            self._merge_gang(gang)
        except Exception as err:
            self._end_failed(gang.batch.reqs, "a prefill's results", err)

    def begin_step(self) -> None:
        """SGLang's top-of-step duties, after a merge (its KV is in the tree)."""
        self._settle_chunked_request()
        self._process_hicache_events()
        self._queue_ready_grammars()
        self._drop_finished_from_running()

    def admit_own(self) -> PrefillGang | None:
        """SGLang's admission in its own order (the layer-budget rule)."""
        return self._start_gang(None)

    def decide(self, policy: MuxPolicy) -> MuxDecision:
        """The policy's decision (rank 0's, see ``_decide``); a stall the watchdog
        found last step ends the stuck requests here, on every rank alike."""
        decision, stalled, self._fell_back = self._decide(policy)
        if stalled:
            self._end_stalled_requests()
        return decision

    def launch(self, decision: MuxDecision) -> tuple[Any | None, bool]:
        """Prepare the decode step, run both phases; returns the decode batch
        (None: no decode) and whether a prefill block ran.

        When nothing would run yet requests wait, SGLang's own admission starts
        a gang first (``_admit_when_idle``).
        """
        if self._metrics is not None:
            # The decision as executed: after a re-plan, not the first plan.
            split = self._partition.splits[decision.split_index]
            share = split.decode_units / (split.decode_units + split.prefill_units)
            self._metrics.step(share, decision.prefill_layers, self._planner_s)
        decode_batch = self._prepare_decode()
        if self._gangs.current is None and decode_batch is None and self._work_waiting():
            self._admit_when_idle()
        return decode_batch, self._execute(decision, decode_batch)

    def _work_waiting(self) -> bool:
        """Requests wait for a prefill: queued, or the next chunk of a long prompt."""
        return bool(self.waiting_queue) or self.chunked_req is not None

    def _work_pending(self) -> bool:
        """Requests wait for anything the loop must do: a prefill, a grammar, a gang."""
        return (
            self._work_waiting() or self.grammar_manager.has_waiting_grammars() or bool(self._gangs)
        )

    def _settle_chunked_request(self) -> None:
        """SGLang's top-of-step duties for the request being prefilled in chunks.

        An abort of it is carried out (``process_pending_chunked_abort``), and the
        KV of its last completed chunk goes into the radix tree
        (``stash_chunked_request``), as in ``get_next_batch_to_run``. Both wait
        while a gang in flight still computes that chunk: freeing or publishing
        its KV then would let other requests reuse slots still being written.
        """
        req = self.chunked_req
        if req is not None and self._in_flight(req):
            return
        self.process_pending_chunked_abort()
        req = self.chunked_req
        if req is not None and req.extend_end > req.prefix_len:
            self.stash_chunked_request(req)

    def _in_flight(self, req: Any) -> bool:
        """Whether ``req`` belongs to the gang in flight or to a paused one."""
        return any(req in gang.batch.reqs for gang in self._gangs)

    def _admit_when_idle(self) -> None:
        """Nothing runs, yet requests wait: the policy admitted none of them (its
        KV estimate, its token budget). Leaving the device idle helps no one, so
        SGLang's own admission picks, as in SGLang's loop."""
        gang = self._start_gang(None)
        if gang is not None:
            self._gangs.start(gang)
            self._mux_counters.idle_admissions += 1

    def _check_liveness(self, progressed: bool) -> None:
        """Feed the watchdog; a stall is acted on at the next step (``decide``)."""
        if self._watchdog.observe(time.monotonic(), self._work_pending(), progressed):
            self._stalled = True

    def _end_stalled_requests(self) -> None:
        """Nothing ran for the stall timeout while requests waited: end them, say why."""
        self._mux_counters.stalls += 1
        timeout = self._watchdog.timeout_s
        for gang in self._gangs:
            logger.error(
                "drift: liveness watchdog: the prefill gang of %s made no progress in %g s",
                sorted(gang.rids),
                timeout,
            )
        stuck = self.waiting_queue + self.grammar_manager.grammar_queue
        if self.chunked_req is not None and not self._in_flight(self.chunked_req):
            stuck.append(self.chunked_req)
        if not stuck:
            return
        message = (
            f"drift: the scheduler could not start this request: nothing ran for {timeout:g} s "
            "while it waited; aborted by the liveness watchdog (--drift-stall-timeout-s), "
            "see the server log"
        )
        rids = [req.rid for req in stuck]
        logger.error("drift: liveness watchdog: nothing ran for %g s; aborting %s", timeout, rids)
        for rid in rids:
            self._abort_with(rid, message, HTTPStatus.SERVICE_UNAVAILABLE)

    # ------------------------------------------------------------- deciding

    def _decide(self, policy: MuxPolicy) -> tuple[MuxDecision, bool, bool]:
        """The policy's decision, whether the liveness watchdog found a stall last
        step, and whether the decision fell back (``_safe_decision``). With TP,
        rank 0's: every rank runs the same step, admits alike, and ends the same
        stalled requests at the same point (the watchdog reads a clock)."""
        stalled, self._stalled = self._stalled, False
        started = time.perf_counter()
        if self.tp_size == 1:
            decision, fell_back = self._safe_decision(policy)
        else:
            group = self.tp_group
            mine = (*self._safe_decision(policy), stalled) if group.rank_in_group == 0 else None
            decision, fell_back, stalled = broadcast_pyobj(
                [mine], group.ranks[group.rank_in_group], self.tp_cpu_group, src=group.ranks[0]
            )[0]
        self._previous_split = decision.split_index
        self._planner_s = time.perf_counter() - started
        return decision, stalled, fell_back

    def _safe_decision(self, policy: MuxPolicy) -> tuple[MuxDecision, bool]:
        """A planner error must not take the server down: log it, count it, and run
        this step by the layer-budget rule with SGLang's admission (``admit_gang``
        and ``replan`` see ``_fell_back``). Returns the decision and whether it
        fell back."""
        try:
            state = self._mux_state()
            decision = policy.decide(state)
        except Exception:
            if not policy.chooses_requests:
                raise
            self._planner_failed("this step uses the layer-budget rule")
            return self._layer_budget_decision(), True
        if self._decision_log is not None:
            self._decision_log.record("decide", state, decision)
        return decision, False

    def _planner_failed(self, outcome: str) -> None:
        """Count a planner error; log the first one with its traceback (a failing
        planner fails every step: one traceback says it, the counter counts it)."""
        self._mux_counters.planner_errors += 1
        if self._mux_counters.planner_errors == 1:
            logger.exception("drift: the planner failed; %s", outcome)

    def _layer_budget_decision(self) -> MuxDecision:
        return LayerBudgetRule().decide(MuxState(**self._base_state(self._decoding())))

    def replan(self, policy: MuxPolicy, decision: MuxDecision) -> MuxDecision:
        """The split and layers for the gang admission really formed (``SloPlanner.replan``).

        Every TP rank re-plans on its own: without waiting requests the planner
        reads no clock, and the gang, the decode batch, the free KV and the
        previous split are the same on every rank. A planner error keeps the
        first decision; a step that fell back re-plans by the layer-budget rule.
        """
        if self._fell_back:
            return self._layer_budget_decision()
        started = time.perf_counter()
        try:
            formed = self._mux_state(with_waiting=False)
            decision = policy.replan(decision, formed)
            self._planner_s += time.perf_counter() - started
        except Exception:
            self._planner_failed("re-planning kept the first plan")
            return decision
        if self._decision_log is not None:
            self._decision_log.record("replan", formed, decision)
        self._previous_split = decision.split_index
        return decision

    def _decoding(self) -> list:
        """Requests of the running batch that take part in this step's decode."""
        running = self.running_batch
        return [] if running.is_empty() or running.is_prefill_only else running.reqs

    def _base_state(self, decoding: list) -> dict[str, Any]:
        """The ``MuxState`` fields every policy reads."""
        gang = self._gangs.current
        return dict(
            decode_batch_size=len(decoding),
            prefill_new_tokens=0 if gang is None else gang.new_tokens,
            prefill_layers_left=0 if gang is None else gang.layers_left,
            num_layers=self.model_config.num_hidden_layers,
            splits=self._partition.splits,
        )

    def _mux_state(self, with_waiting: bool = True) -> MuxState:
        decoding = self._decoding()
        state = self._base_state(decoding)
        if not self._mux_policy.chooses_requests:
            return MuxState(**state)
        gang = self._gangs.current
        view = self._slo_view
        reqs = [] if gang is None else gang.batch.reqs
        return MuxState(
            **state,
            now_ms=now_ms(),
            concurrent=self._partition.concurrent,
            decode_kv_tokens=sum(len(r.origin_input_ids) + len(r.output_ids) for r in decoding),
            decode_tpot_ms=view.tightest_tpot(decoding),
            prefill_prefix_tokens=sum(int(r.prefix_len) for r in reqs),
            prefill_batch_size=len(reqs),
            prefill_deadline_ms=view.earliest_deadline(reqs),
            prefill_preempting=self._gangs.paused is not None,
            waiting=view.waiting(
                self.waiting_queue,
                self._cached_prefix_len,
                self._mux_counters.gangs_merged,
                self._priority_sign(),
            )
            if with_waiting
            else (),
            kv_free_tokens=self._kv_admission_room(decoding),
            prefill_token_budget=int(self.max_prefill_tokens),
            previous_split=self._previous_split,
        )

    def _kv_admission_room(self, decoding: list) -> int:
        """SGLang's admission room (``policy.kv``): free and evictable KV less what
        the running requests, and the gangs' (in flight, pre-empted), keep for
        their outputs."""
        holders = list(decoding)
        for gang in self._gangs:
            holders += gang.batch.reqs
        room = self._slo_view.kv_room(holders, self.new_token_ratio_tracker.current)
        free = self.token_to_kv_pool_allocator.available_size() + self.tree_cache.evictable_size()
        return max(0, int(free) - room)

    def _priority_sign(self) -> int | None:
        """SGLang's priority order (lower sort keys first), or None without priorities."""
        if not self.enable_priority_scheduling:
            return None
        return 1 if self.schedule_low_priority_values_first else -1

    def _cached_prefix_len(self, req: Any) -> int:
        match_kv_cache(req, self.tree_cache)
        return int(req.prefix_len)

    def shed(self, rids: tuple[str, ...]) -> None:
        """End waiting requests that can no longer meet their TTFT (--drift-overload shed).

        They get a 429 (``door.retry_after`` adds ``Retry-After``): the server is
        healthy but full. SGLang's gateway retries a 429 on another worker and,
        unlike a 503, does not count it toward the worker's circuit breaker
        (docs/scale-out.md), so shedding never takes a healthy worker out.
        """
        if not rids:
            return
        waiting = {req.rid: req for req in self.waiting_queue}
        for rid in rids:
            slo = self._slo_view.of(waiting[rid])
            message = (
                "drift: request shed under overload: its time-to-first-token target cannot be "
                f"met (deadline passed or predicted to pass by {slo.deadline_ms - now_ms():.0f}"
                " ms from now); --drift-overload shed; retry later or on another server"
            )
            self._abort_with(rid, message, HTTPStatus.TOO_MANY_REQUESTS)
            self._mux_counters.shed_requests += 1

    def _abort_with(self, rid: str, message: str, status: HTTPStatus) -> None:
        """End one request through SGLang's abort path, with a status and a message."""
        self.abort_request(
            AbortReq(
                rid=rid,
                abort_message=message,
                finished_reason={"type": "abort", "status_code": status, "message": message},
            )
        )

    def admit_gang(self, decision: MuxDecision) -> PrefillGang | None:
        """Start the gang the planner chose, by SGLang's admission (``_start_gang``).

        Requests retracted earlier, and the next chunk of a prompt prefilled in
        chunks, go first (SGLang's admission takes the chunk before anything
        else), so a gang starts for them even when the planner admitted no one.
        A gang holding a chunk is never pre-empted: the pre-empting gang would
        get the next chunk of the same prompt. A step whose planner failed
        admits in SGLang's own order.
        """
        in_flight = self._gangs.current is not None
        if in_flight and self.chunked_req is not None:
            return None
        if self._fell_back:
            return None if in_flight else self._start_gang(None)
        resumed = tuple(r.rid for r in self.waiting_queue if r.output_ids)
        if not in_flight and not (decision.admit or resumed or self.chunked_req):
            return None
        gang = self._start_gang(resumed + decision.admit)
        if gang is not None and in_flight:
            self._mux_counters.preemptions += 1
        return gang

    def _queue_ready_grammars(self) -> None:
        """Requests whose grammar has compiled join the waiting queue.

        SGLang does this at the top of ``get_new_batch_prefill``, which drift
        calls only once the planner has chosen requests from the waiting queue:
        without it, constrained requests would never be seen.
        """
        if self.grammar_manager.has_waiting_grammars():
            for req in self.grammar_manager.get_ready_grammar_requests():
                self._add_request_to_queue(req)

    def _drop_finished_from_running(self) -> None:
        running = self.running_batch
        size = running.batch_size()
        running.filter_batch()
        if running.batch_size() < size:
            running.batch_is_full = False

    def _start_gang(self, rids: tuple[str, ...] | None) -> PrefillGang | None:
        """A gang from SGLang's admission, over the requests ``rids`` (None: any)."""
        if self._should_defer_prefill(self.running_batch):
            return None
        # SGLang's admission (KV budget, radix matching, request setup, priority
        # pre-emption) runs over the chosen requests only, in the planner's order.
        everyone = self.waiting_queue
        chosen = [r for r in everyone if not self._faults.held(r.rid)]
        if rids is not None:
            order = {rid: i for i, rid in enumerate(rids)}
            chosen = sorted((r for r in chosen if r.rid in order), key=lambda r: order[r.rid])
        self.waiting_queue = chosen
        try:
            plan = self.get_new_batch_prefill(self.running_batch)
        except Exception as err:
            self.waiting_queue = []  # the requests offered leave the queue (below)
            self._end_failed(chosen, "admission", err)
            return None
        finally:
            # What is left of the queue: the requests not offered, those SGLang
            # did not take, and those it queued during admission (running
            # requests that priority pre-empted), in their original order.
            left = self.waiting_queue
            offered, kept, known = set(chosen), set(left), set(everyone)
            self.waiting_queue = [r for r in everyone if r not in offered or r in kept]
            self.waiting_queue += [r for r in left if r not in known]
        self.running_batch = plan.running_batch
        batch = plan.batch_to_run
        if batch is None or batch.is_empty():
            return None
        # Some batches run as one ordinary extend, because SGLang's layer-split
        # forward would get them wrong: prefill-only requests (max_new_tokens 0:
        # scoring), whose logprobs SGLang computes without sampling a token, and
        # requests given as input embeddings, which it never passes to the model.
        layer_split = not batch.is_prefill_only and batch.input_embeds is None
        if layer_split:
            batch.forward_mode = ForwardMode.SPLIT_PREFILL
        self._arm_prefill_decode_interval(batch)
        set_schedule_time_batch(batch)
        self._mux_counters.gangs_started += 1
        return PrefillGang(
            batch=batch,
            num_layers=self.model_config.num_hidden_layers,
            rids=frozenset(req.rid for req in batch.reqs),
            layer_split=layer_split,
        )

    def _prepare_decode(self) -> Any | None:
        running = self.running_batch
        if running.is_empty() or running.is_prefill_only:
            return None
        try:
            batch = self.update_running_batch(running)
        except Exception as err:
            self._end_failed(list(running.reqs), "the preparation of a decode step", err)
            return None
        if batch is None or batch.is_empty():
            return None
        set_schedule_time_batch(batch)
        return batch

    def _execute(self, decision: MuxDecision, decode_batch: Any | None) -> bool:
        """Launch the step's work in its partitions; returns whether prefill ran."""
        split = decision.split_index
        decode_result = None
        decode_started = time.perf_counter()
        if decode_batch is not None:
            if self._sglang_splits:
                select_split(self.tp_worker.model_runner, split)
            try:
                with (
                    self._partition.decode_scope(split),
                    self._span("decode", split, batch=decode_batch.batch_size()),
                ):
                    decode_result = self.run_batch(decode_batch)
            except Exception as err:
                self._end_failed(decode_batch.reqs, "a decode step", err)
                decode_batch = None
            if decode_batch is not None and not self._sglang_splits:
                # One attention backend serves both phases: decode replaced
                # the prefill's metadata (see _launch_prefill_block).
                self._attention_owner = decode_batch
        gang = self._gangs.current
        launch_prefill = gang is not None and decision.prefill_layers > 0
        if launch_prefill:
            try:
                with (
                    self._partition.prefill_scope(split),
                    self._prefill_communicator(),
                    self._span("prefill", split, layers=gang.next_block(decision.prefill_layers)),
                ):
                    self._launch_prefill_block(decision.prefill_layers, split)
            except Exception as err:
                self._gangs.finish()
                self._end_failed(gang.batch.reqs, "a prefill layer block", err)
        if decode_batch is not None:
            self._partition.wait_decode(split)
            if self._metrics is not None:
                self._observe_decode(decode_batch, split, time.perf_counter() - decode_started)
            try:
                self.process_batch_result(decode_batch, decode_result)
            except Exception as err:
                self._end_failed(decode_batch.reqs, "a decode step's results", err)
            self._mux_counters.decode_steps += 1
        if launch_prefill:
            self._mux_counters.prefill_blocks += 1
            if decode_batch is not None:
                self._mux_counters.mux_steps += 1
        return launch_prefill

    def _observe_decode(self, batch: Any, split: int, seconds: float) -> None:
        """The decode step's measured time beside the latency model's (metrics only)."""
        kv_tokens = sum(len(r.origin_input_ids) + len(r.output_ids) for r in batch.reqs)
        units = self._partition.splits[split].decode_units
        try:
            predicted = self.latency_model.decode_ms(batch.batch_size(), kv_tokens, units) / 1e3
        except ValueError:  # outside the model's range (e.g. no decode units)
            predicted = None
        self._metrics.decode_step(predicted, seconds)

    def _prefill_communicator(self) -> AbstractContextManager[Any]:
        """With TP and concurrent phases, prefill's collectives go through SGLang's
        duplicate TP communicator: two streams must not share one NCCL channel."""
        if self._sglang_splits and self.tp_size > 1:
            return pdmux_prefill_tp_group()
        return nullcontext()

    def _launch_prefill_block(self, layers: int, split: int) -> None:
        gang = self._gangs.current
        batch = gang.batch
        count = gang.next_block(layers)
        batch.split_forward_count = count
        if gang.layer_split and batch.split_index > 0 and self._attention_owner is not batch:
            # SGLang sets up the attention metadata of a layer-split prefill on
            # its first block only; a decode step or another gang since then
            # replaced it, so set it up again before the next block.
            self.tp_worker.model_runner.attn_backend.init_forward_metadata(
                batch.split_forward_batch
            )
        gang.result = self.run_batch(batch)
        self._attention_owner = batch
        batch.split_index += count
        if gang.fully_launched:
            batch.split_prefill_finished = True
            gang.done_event = self._partition.record_prefill_event(split)

    def _merge_gang(self, gang: PrefillGang) -> None:
        # The gang's last block has completed (its event, observed by the host):
        # its KV is written before any later decode step, on any stream, reads it.
        batch = gang.batch
        self._mux_counters.gangs_merged += 1
        self.process_batch_result(batch, gang.result)
        if self._metrics is not None:
            self._metrics.gang_merged(len(batch.reqs), time.monotonic() - gang.started_s)
            for req in batch.reqs:  # a chunk that is not the prompt's last has no token yet
                if req is not batch.chunked_req and not isinstance(
                    req.finished_reason, FINISH_ABORT
                ):
                    self._metrics.first_token(*self._slo_view.ttft_met(req))
        self._mux_counters.aborted_mid_prefill += sum(
            isinstance(req.finished_reason, FINISH_ABORT) for req in batch.reqs
        )
        # The layer-split forward keeps activations on the batch; free them.
        batch.split_forward_batch = None
        # Finished requests (aborted, or done after one token) already released
        # their KV while the result was processed: merging them would free it twice.
        # A prompt prefilled in chunks waits for its next chunk, not for decode.
        batch.filter_batch(reqs_to_exclude=batch.chunked_req)
        if batch.is_empty():
            return
        if self.running_batch.is_empty():
            self.running_batch = batch
        else:
            self.running_batch.merge_batch(batch)

    # ------------------------------------------------------- fault isolation

    def run_batch(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        """SGLang's forward, then the test-only fault hook (off unless a test sets it)."""
        result = super().run_batch(batch, *args, **kwargs)
        self._faults.after_forward(req.rid for req in batch.reqs)
        return result

    def _end_failed(self, reqs: list, phase: str, err: Exception) -> None:
        """A step raised: end only its requests, free their KV, and go on.

        Errors that corrupt shared state (``failures.is_fatal``) are re-raised:
        SGLang's process entry then logs them and stops the server at once.
        """
        if is_fatal(err, self.tp_size):
            logger.critical("drift: %s failed in a way that is not recoverable; exiting", phase)
            raise err
        live = [req for req in reqs if not (req.finished() and req.kv.is_kv_released)]
        logger.error(
            "drift: %s failed; aborting its requests %s, serving the others",
            phase,
            [req.rid for req in live],
            exc_info=err,
        )
        self._mux_counters.failed_batches += 1
        message = failure_message(phase, err)
        for req in live:
            req.finished_reason = FINISH_ABORT(message, HTTPStatus.INTERNAL_SERVER_ERROR)
            req.to_finish = None
            try:
                self._release_aborted_request(req)
                if req.kv.holds_kv:
                    release_kv_cache(req, self.tree_cache, checkpoint=False)
            except Exception:  # the failure may have left its state half-built
                logger.exception("drift: could not free the KV of failed request %s", req.rid)
            if req is self.chunked_req:
                self.chunked_req = None
            reason = req.finished_reason.to_json()
            self.send_abort_output(AbortReq(rid=req.rid, finished_reason=reason), req)
        self.running_batch.filter_batch()
        self._mux_counters.failed_requests += len(live)

    # ------------------------------------------------- SGLang bookkeeping hooks

    def _collect_inflight_batches(self) -> list:
        batches = super()._collect_inflight_batches()
        # Upstream's pdmux misses this: an abort of a request whose prefill is
        # mid-split must reach it (it then finishes as aborted and frees KV).
        batches += [gang.batch for gang in getattr(self, "_gangs", ())]
        return batches

    def _add_request_to_queue(self, req: Any, is_retracted: bool = False) -> None:
        """SGLang's queueing, except for what drift's loop cannot serve (refused here)."""
        if not is_retracted and req.beam_group is not None:
            self._refuse(req, BEAM_SEARCH_REFUSAL, HTTPStatus.BAD_REQUEST)
            return
        super()._add_request_to_queue(req, is_retracted)

    def _refuse(self, req: Any, message: str, status: HTTPStatus) -> None:
        """End a request that never entered the queue, as SGLang ends one it rejects."""
        self._release_aborted_request(req)
        self.beam_coordinator.retire_group(req)
        reason = {"type": "abort", "status_code": status, "message": message}
        self.send_abort_output(AbortReq(rid=req.rid, finished_reason=reason), req)
        logger.warning("drift: refused request %s: %s", req.rid, message)

    def pause_generation(self, recv_req: Any) -> None:
        """SGLang's pause; in ``retract`` mode the gangs in flight finish first.

        SGLang retracts the running batch and ``last_batch``: a gang in flight
        is one of them at most, and a paused gang neither. Retracting a
        request in the middle of its layers would leave the gang running on
        freed KV, so every gang runs its remaining layers, merges, and is then
        retracted with the running batch, as SGLang retracts a finished prefill.
        """
        if recv_req.mode == "retract":
            self._finish_gangs()
            self.last_batch = None
        super().pause_generation(recv_req)

    def _finish_gangs(self) -> None:
        """Run the gang in flight and a paused one to completion, and merge them."""
        gangs = self._gangs
        while gangs:
            gangs.resume()
            gang = gangs.current
            if not gang.fully_launched:
                with self._partition.prefill_scope(0), self._prefill_communicator():
                    self._launch_prefill_block(gang.layers_left, 0)
            gang.done_event.synchronize()
            self._merge_gang(gangs.finish())

    def is_fully_idle(self, *args: Any, **kwargs: Any) -> bool:
        if getattr(self, "_gangs", None):
            return False
        return super().is_fully_idle(*args, **kwargs)

    def get_internal_state(self, recv_req: Any) -> Any:
        out = super().get_internal_state(recv_req)
        out.internal_state["drift"] = self.drift_report()
        return out

    def drift_report(self) -> dict[str, Any]:
        """drift's state for /server_info (``internal_states[i]["drift"]``)."""
        return drift_report(self)

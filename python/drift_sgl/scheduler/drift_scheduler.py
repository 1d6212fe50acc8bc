"""DriftScheduler: SGLang's Scheduler with a prefill/decode-multiplexing loop.

One step of the loop (docs/architecture.md walks through it):
  1. ingest requests (SGLang; in ``event_loop_pdmux``), then SGLang's per-step
     housekeeping (pending chunked aborts, hierarchical-cache events);
  2. drop finished requests from the running batch;
  3. if no prefill gang is in flight (and SGLang's --prefill-decode-interval
     does not defer prefill), admit one from the waiting queue with SGLang's
     own admission (radix-cache prefix matching included);
  4. prepare the decode step of the running batch (SGLang, may retract);
  5. ask the policy for a split and a number of prefill layers;
  6. launch decode in the decode partition, the next prefill layer block in
     the prefill partition, then wait for decode and process its result;
  7. when the gang's last layer block has completed, process its result
     (first tokens, finish checks, KV into the radix tree) and merge its
     unfinished requests into the running batch.
Everything SGLang keeps per step (last_batch, timestamps, metrics, idle
housekeeping) is kept here too, and the gang is visible to abort, flush and
idle checks.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from http import HTTPStatus
from typing import Any, ClassVar

import torch
from sglang.srt.distributed.parallel_state import pdmux_prefill_tp_group
from sglang.srt.environ import envs
from sglang.srt.managers.io_struct import AbortReq
from sglang.srt.managers.schedule_batch import FINISH_ABORT
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.mem_cache.common import match_kv_cache
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.observability.req_time_stats import set_schedule_time_batch
from sglang.srt.runtime_context import get_device, get_parallel
from sglang.srt.utils import DynamicGradMode, broadcast_pyobj

from drift_sgl.config import DriftConfig
from drift_sgl.latency.select import device_identity, model_identity, select_latency_model
from drift_sgl.partition import (
    BackendChoice,
    StreamPairBackend,
    create_partition_backend,
    device_units,
)
from drift_sgl.policy import LayerBudgetRule, MuxDecision, MuxState, SloPlanner
from drift_sgl.scheduler.counters import MuxCounters
from drift_sgl.scheduler.gang import PrefillGang
from drift_sgl.scheduler.sglang_splits import (
    decode_graph_memory_gb,
    publish_stream_groups,
    select_split,
    turn_off_sglang_pdmux,
)
from drift_sgl.scheduler.slo_view import SloView, now_ms
from drift_sgl.scheduler.timeline import StepTimeline

logger = logging.getLogger(__name__)


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
        # SGLang sends SPLIT_PREFILL batches to the layer-split forward only when
        # this is set. On a CPU the server argument stays off, so SGLang builds
        # none of its pdmux state (see init_pdmux for the GPU).
        self.enable_pdmux = True
        self._require_split_prefill()
        config = self.drift_config
        choice = self._partition_choice or self._choose_partition()
        self._partition = choice.backend
        #: SGLang keeps per-split decode graphs and attention backends (GPU partitions).
        self._sglang_splits = isinstance(choice.backend, StreamPairBackend)
        self._graph_memory_gb = (
            decode_graph_memory_gb(self.tp_worker.model_runner) if self._sglang_splits else 0.0
        )
        self._check_graph_memory()
        latency = select_latency_model(
            config.profile,
            config.profile_allow_mismatch,
            self.model_config.hf_config.to_dict(),
            model_identity(self.model_config),
            device_identity(self.device, self._partition.total_units, get_device().gpu_id),
        )
        self.latency_model = latency.model
        logger.info("drift: latency model: %s", latency.reason)
        self._slo_view = SloView(config.slo_table())
        if config.policy == "slo":
            self._mux_policy = SloPlanner(self.latency_model, overload=config.overload)
        else:
            self._mux_policy = LayerBudgetRule(layer_budget_tokens=config.layer_budget_tokens)
        #: The planner admits requests itself; the layer-budget rule leaves it to SGLang.
        self._planner_admits = isinstance(self._mux_policy, SloPlanner)
        self._gang: PrefillGang | None = None
        #: A gang pre-empted at a layer boundary; it resumes when ``_gang`` completes.
        self._paused_gang: PrefillGang | None = None
        #: The batch whose attention metadata the backend holds (see _launch_prefill_block).
        self._attention_owner: Any = None
        self._previous_split: int | None = None
        self._mux_counters = MuxCounters()
        self._timeline = self._open_timeline()
        log = logger.warning if choice.fallback else logger.info
        log("drift: partition backend %s [%s]", self._partition.describe(), choice.reason)
        if self._sglang_splits:
            logger.info(
                "drift: decode CUDA graphs for %d splits take %.2f GiB",
                len(self._partition.splits),
                self._graph_memory_gb,
            )
        logger.info("drift: policy %s", self._mux_policy)

    # ------------------------------------------------------------ partitions

    def _choose_partition(self) -> BackendChoice:
        config = self.drift_config
        device = get_device().device
        return create_partition_backend(
            config.partition,
            device,
            device_units(device),
            splits=config.splits,
            gpu_id=get_device().gpu_id or 0,
        )

    def init_pdmux(self) -> None:
        """Called by SGLang's ``__init__`` before the model worker when the launcher
        set ``enable_pdmux`` (a GPU with green contexts wanted): make the partitions
        and hand their streams to SGLang, which then captures the decode graphs
        once per split. Without green contexts, SGLang's pdmux state is turned
        off again and the time-multiplexed backend is used."""
        choice = self._choose_partition()
        self._partition_choice = choice
        if isinstance(choice.backend, StreamPairBackend):
            publish_stream_groups(choice.backend)
        else:
            turn_off_sglang_pdmux()

    def _open_timeline(self) -> StepTimeline | None:
        path = self.drift_config.timeline
        if path is None:
            return None
        parallel = get_parallel()
        if parallel.tp_rank:
            path += f".tp{parallel.tp_rank}"
        if parallel.dp_rank:
            path += f".dp{parallel.dp_rank}"
        on_device = self._partition.concurrent and self.device == "cuda"
        return StepTimeline(open(path, "w"), torch.cuda if on_device else None)

    def _span(self, phase: str, split: int, **info: int) -> AbstractContextManager[None]:
        timeline = self._timeline
        return nullcontext() if timeline is None else timeline.span(phase, split, **info)

    def _check_graph_memory(self) -> None:
        bound = self.drift_config.max_graph_memory_gb
        if bound is not None and self._graph_memory_gb > bound:
            raise RuntimeError(
                f"drift-sgl: --drift-max-graph-memory-gb: the decode CUDA graphs of "
                f"{len(self._partition.splits)} splits take {self._graph_memory_gb:.2f} GiB, "
                f"more than {bound:g}; use fewer --drift-splits or a lower --cuda-graph-max-bs"
            )

    def _require_split_prefill(self) -> None:
        model = self.tp_worker.model_runner.model
        if not hasattr(model, "forward_split_prefill"):
            raise RuntimeError(
                f"drift-sgl: {type(model).__name__} has no layer-split prefill "
                "(forward_split_prefill); drift serves Llama, Qwen, Gemma, GLM-4 and other "
                "architectures that SGLang can split by layers"
            )

    # ------------------------------------------------------------------ loop

    @DynamicGradMode()
    def event_loop_pdmux(self) -> None:
        """The multiplexing event loop (SGLang dispatches here when enable_pdmux)."""
        while not self.gracefully_exit:
            self.ingest_requests()
            if self._engine_paused:
                self._record_scheduler_state_for_paused_engine()
                continue
            self.run_mux_step()

    def run_mux_step(self) -> None:
        """One step: decide, shed, admit, launch both phases, merge a finished prefill."""
        self.process_pending_chunked_abort()
        self._process_hicache_events()
        self._drop_finished_from_running()
        if self._gang is None and self._paused_gang is not None:
            self._gang, self._paused_gang = self._paused_gang, None
        if self._gang is None and not self._planner_admits:
            self._gang = self._start_gang(None)
        decision = self._decide()
        self._shed(decision.shed)
        if self._planner_admits:
            self._admit(decision)
        decode_batch = self._prepare_decode()
        launched_prefill = self._execute(decision, decode_batch)
        if self._gang_complete():
            self._merge_gang()
        if self._timeline is not None:
            self._timeline.end_step()

        # SGLang's abort, idle and memory checks read last_batch: point it at the
        # batch that holds KV beyond the running batch (the gang), else the decode.
        self.last_batch = self._gang.batch if self._gang is not None else decode_batch
        self.cur_batch_for_debug = self.last_batch
        if decode_batch is None and not launched_prefill and self._gang is None:
            self._sched_idled = True
            self.on_idle()
        if envs.SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY.get():
            self.invariant_checker.self_check_during_busy()

    # ------------------------------------------------------------- deciding

    def _decide(self) -> MuxDecision:
        """The policy's decision; with TP, rank 0's, so every rank runs the same."""
        if self.tp_size == 1:
            decision = self._safe_decision()
        else:
            group = self.tp_group
            decision = self._safe_decision() if group.rank_in_group == 0 else None
            decision = broadcast_pyobj(
                [decision], group.ranks[group.rank_in_group], self.tp_cpu_group, src=group.ranks[0]
            )[0]
        self._previous_split = decision.split_index
        return decision

    def _safe_decision(self) -> MuxDecision:
        """A planner error must not take the server down: log it, count it, and run
        this step by the layer-budget rule with SGLang's admission."""
        try:
            return self._mux_policy.decide(self._mux_state())
        except Exception:
            if not self._planner_admits:
                raise
            self._mux_counters.planner_errors += 1
            if self._mux_counters.planner_errors == 1:
                logger.exception("drift: the planner failed; this step uses the layer-budget rule")
            if self._gang is None:
                self._gang = self._start_gang(None)
            return LayerBudgetRule().decide(MuxState(**self._base_state(self._decoding())))

    def _decoding(self) -> list:
        """Requests of the running batch that take part in this step's decode."""
        running = self.running_batch
        return [] if running.is_empty() or running.is_prefill_only else running.reqs

    def _base_state(self, decoding: list) -> dict[str, Any]:
        """The ``MuxState`` fields every policy reads."""
        gang = self._gang
        return dict(
            decode_batch_size=len(decoding),
            prefill_new_tokens=0 if gang is None else gang.new_tokens,
            prefill_layers_left=0 if gang is None else gang.layers_left,
            num_layers=self.model_config.num_hidden_layers,
            splits=self._partition.splits,
        )

    def _mux_state(self) -> MuxState:
        decoding = self._decoding()
        state = self._base_state(decoding)
        if not self._planner_admits:
            return MuxState(**state)
        gang = self._gang
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
            prefill_preempting=self._paused_gang is not None,
            waiting=view.waiting(
                self.waiting_queue,
                self._cached_prefix_len,
                self._mux_counters.gangs_merged,
                self.new_token_ratio_tracker.current,
            ),
            kv_free_tokens=int(
                self.token_to_kv_pool_allocator.available_size() + self.tree_cache.evictable_size()
            ),
            prefill_token_budget=int(self.max_prefill_tokens),
            previous_split=self._previous_split,
        )

    def _cached_prefix_len(self, req: Any) -> int:
        match_kv_cache(req, self.tree_cache)
        return int(req.prefix_len)

    def _shed(self, rids: tuple[str, ...]) -> None:
        """End waiting requests that can no longer meet their TTFT (--drift-overload shed)."""
        if not rids:
            return
        waiting = {req.rid: req for req in self.waiting_queue}
        for rid in rids:
            slo = self._slo_view.of(waiting[rid])
            message = (
                "drift: request shed under overload: its time-to-first-token target cannot be "
                f"met (deadline passed or predicted to pass by {slo.deadline_ms - now_ms():.0f}"
                " ms from now); --drift-overload shed"
            )
            self.abort_request(
                AbortReq(
                    rid=rid,
                    abort_message=message,
                    finished_reason={
                        "type": "abort",
                        "status_code": HTTPStatus.SERVICE_UNAVAILABLE,
                        "message": message,
                    },
                )
            )
            self._mux_counters.shed_requests += 1

    def _admit(self, decision: MuxDecision) -> None:
        """Start the gang the planner chose (requests retracted earlier go first)."""
        if self._gang is not None and not decision.preempt:
            return
        resumed = [r.rid for r in self.waiting_queue if r.output_ids]
        if not decision.admit and (self._gang is not None or not resumed):
            return
        gang = self._start_gang(tuple(resumed) + decision.admit)
        if gang is None:
            return
        if self._gang is not None:
            self._paused_gang = self._gang
            self._mux_counters.preemptions += 1
        self._gang = gang

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
        if rids is None:
            plan = self.get_new_batch_prefill(self.running_batch)
        else:
            # SGLang's admission (KV budget, radix matching, request setup) runs
            # over the chosen requests only, in the planner's order.
            order = {rid: i for i, rid in enumerate(rids)}
            everyone = self.waiting_queue
            self.waiting_queue = sorted(
                (r for r in everyone if r.rid in order), key=lambda r: order[r.rid]
            )
            try:
                plan = self.get_new_batch_prefill(self.running_batch)
            finally:
                taken = set(self.waiting_queue)
                left = [r for r in everyone if r.rid not in order or r in taken]
                self.waiting_queue = left
        self.running_batch = plan.running_batch
        batch = plan.batch_to_run
        if batch is None or batch.is_empty():
            return None
        batch.forward_mode = ForwardMode.SPLIT_PREFILL
        self._arm_prefill_decode_interval(batch)
        set_schedule_time_batch(batch)
        self._mux_counters.gangs_started += 1
        return PrefillGang(
            batch=batch,
            num_layers=self.model_config.num_hidden_layers,
            rids=frozenset(req.rid for req in batch.reqs),
        )

    def _prepare_decode(self) -> Any | None:
        running = self.running_batch
        if running.is_empty() or running.is_prefill_only:
            return None
        batch = self.update_running_batch(running)
        if batch is None or batch.is_empty():
            return None
        set_schedule_time_batch(batch)
        return batch

    def _execute(self, decision: MuxDecision, decode_batch: Any | None) -> bool:
        """Launch the step's work in its partitions; returns whether prefill ran."""
        split = decision.split_index
        decode_result = None
        if decode_batch is not None:
            if self._sglang_splits:
                select_split(self.tp_worker.model_runner, split)
            with (
                self._partition.decode_scope(split),
                self._span("decode", split, batch=decode_batch.batch_size()),
            ):
                decode_result = self.run_batch(decode_batch)
            if not self._sglang_splits:
                # One attention backend serves both phases: decode replaced
                # the prefill's metadata (see _launch_prefill_block).
                self._attention_owner = decode_batch
        gang = self._gang
        launch_prefill = gang is not None and decision.prefill_layers > 0
        if launch_prefill:
            with (
                self._partition.prefill_scope(split),
                self._prefill_communicator(),
                self._span("prefill", split, layers=min(decision.prefill_layers, gang.layers_left)),
            ):
                self._launch_prefill_block(decision.prefill_layers, split)
        if decode_batch is not None:
            self._partition.wait_decode(split)
            self.process_batch_result(decode_batch, decode_result)
            self._mux_counters.decode_steps += 1
        if launch_prefill:
            self._mux_counters.prefill_blocks += 1
            if decode_batch is not None:
                self._mux_counters.mux_steps += 1
        return launch_prefill

    def _prefill_communicator(self) -> AbstractContextManager[Any]:
        """With TP and concurrent phases, prefill's collectives go through SGLang's
        duplicate TP communicator: two streams must not share one NCCL channel."""
        if self._sglang_splits and self.tp_size > 1:
            return pdmux_prefill_tp_group()
        return nullcontext()

    def _gang_complete(self) -> bool:
        """Whether the gang's last block has finished, agreed by every TP rank.

        Ranks poll their own events; merging on one rank and not another would
        desynchronise their batches, so with concurrent phases the ranks take
        the minimum (a CPU all-reduce, only while a gang is fully launched).
        """
        gang = self._gang
        if gang is None or not gang.fully_launched:
            return False
        complete = gang.is_complete()
        if self.tp_size == 1 or not self._partition.concurrent:
            return complete
        flag = torch.tensor([int(complete)], dtype=torch.int32)
        torch.distributed.all_reduce(
            flag, op=torch.distributed.ReduceOp.MIN, group=self.tp_cpu_group
        )
        return bool(flag.item())

    def _launch_prefill_block(self, layers: int, split: int) -> None:
        gang = self._gang
        batch = gang.batch
        count = min(layers, gang.layers_left)
        batch.split_forward_count = count
        if batch.split_index > 0 and self._attention_owner is not batch:
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

    def _merge_gang(self) -> None:
        # The gang's last block has completed (its event, observed by the host):
        # its KV is written before any later decode step, on any stream, reads it.
        gang, self._gang = self._gang, None
        batch = gang.batch
        self.process_batch_result(batch, gang.result)
        self._mux_counters.gangs_merged += 1
        self._mux_counters.aborted_mid_prefill += sum(
            isinstance(req.finished_reason, FINISH_ABORT) for req in batch.reqs
        )
        # The layer-split forward keeps activations on the batch; free them.
        batch.split_forward_batch = None
        # Finished requests (aborted, or done after one token) already released
        # their KV while the result was processed: merging them would free it twice.
        batch.filter_batch()
        if batch.is_empty():
            return
        if self.running_batch.is_empty():
            self.running_batch = batch
        else:
            self.running_batch.merge_batch(batch)

    # ------------------------------------------------- SGLang bookkeeping hooks

    def _collect_inflight_batches(self) -> list:
        batches = super()._collect_inflight_batches()
        for gang in (getattr(self, "_gang", None), getattr(self, "_paused_gang", None)):
            if gang is not None:
                # Upstream's pdmux misses this: an abort of a request whose prefill
                # is mid-split must reach it (it then finishes as aborted and frees KV).
                batches.append(gang.batch)
        return batches

    def is_fully_idle(self, *args: Any, **kwargs: Any) -> bool:
        if getattr(self, "_gang", None) is not None or getattr(self, "_paused_gang", None):
            return False
        return super().is_fully_idle(*args, **kwargs)

    def get_internal_state(self, recv_req: Any) -> Any:
        out = super().get_internal_state(recv_req)
        out.internal_state["drift"] = self.drift_report()
        return out

    def drift_report(self) -> dict[str, Any]:
        """drift's state for /server_info (``internal_states[i]["drift"]``)."""
        gang = self._gang
        return {
            "partition_backend": self._partition.name,
            "concurrent": self._partition.concurrent,
            "splits": [[s.prefill_units, s.decode_units] for s in self._partition.splits],
            "policy": type(self._mux_policy).__name__,
            "layer_budget_tokens": self.drift_config.layer_budget_tokens,
            "slo": {
                "ttft_ms": self.drift_config.ttft_slo_ms,
                "tpot_ms": self.drift_config.tpot_slo_ms,
                "classes": {
                    name: {"ttft_ms": t.ttft_ms, "tpot_ms": t.tpot_ms}
                    for name, t in self._slo_view.table.classes.items()
                },
                "unknown_classes_seen": sorted(self._slo_view.unknown_classes),
                "overload": self.drift_config.overload,
            },
            "counters": self._mux_counters.as_dict(),
            "partition_notes": list(self._partition.notes),
            "decode_graph_memory_gb": round(self._graph_memory_gb, 3),
            # SGLang's per-split decode attention backends (0: one shared, no splits).
            "sglang_decode_backends": len(
                getattr(self.tp_worker.model_runner, "decode_attn_backend_group", None) or ()
            ),
            "timeline": None if self._timeline is None else self._timeline.summary(),
            "latency_model": {
                "source": self.latency_model.source,
                "estimated": self.latency_model.estimated,
                "profile": self.drift_config.profile,
                "errors": self.latency_model.errors,
            },
            "gang_in_flight": None
            if gang is None
            else {
                "rids": sorted(gang.rids),
                "layers_done": gang.layers_done,
                "num_layers": gang.num_layers,
            },
            "gang_paused": None if self._paused_gang is None else sorted(self._paused_gang.rids),
            "kv_total_tokens": int(self.max_total_num_tokens),
            "kv_available_tokens": int(self.token_to_kv_pool_allocator.available_size()),
            "kv_evictable_tokens": int(self.tree_cache.evictable_size()),
        }

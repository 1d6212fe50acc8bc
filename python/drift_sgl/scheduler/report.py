"""drift's part of ``/server_info``: ``internal_states[i]["drift"]``.

docs/architecture.md (section 9) describes every key. Read from the scheduler at
the moment of the request; nothing here changes it.
"""

from __future__ import annotations

from typing import Any


def drift_report(scheduler: Any) -> dict[str, Any]:
    """The report of one ``DriftScheduler``."""
    config = scheduler.drift_config
    partition = scheduler._partition
    gang, paused = scheduler._gangs.current, scheduler._gangs.paused
    latency = scheduler.latency_model
    return {
        "partition_backend": partition.name,
        "concurrent": partition.concurrent,
        "splits": [[s.prefill_units, s.decode_units] for s in partition.splits],
        "policy": type(scheduler._mux_policy).__name__,
        "layer_budget_tokens": config.layer_budget_tokens,
        "prefill_chunk_tokens": scheduler.chunked_prefill_size,
        "slo": {
            "ttft_ms": config.ttft_slo_ms,
            "tpot_ms": config.tpot_slo_ms,
            "classes": {
                name: {"ttft_ms": t.ttft_ms, "tpot_ms": t.tpot_ms}
                for name, t in scheduler._slo_view.table.classes.items()
            },
            "unknown_classes_seen": sorted(scheduler._slo_view.unknown_classes),
            "overload": config.overload,
        },
        "counters": scheduler._mux_counters.as_dict(),
        "partition_notes": list(partition.notes),
        "decode_graph_memory_gb": round(scheduler._graph_memory_gb, 3),
        # SGLang's per-split decode attention backends (0: one shared, no splits).
        "sglang_decode_backends": len(
            getattr(scheduler.tp_worker.model_runner, "decode_attn_backend_group", None) or ()
        ),
        "timeline": None if scheduler._timeline is None else scheduler._timeline.summary(),
        "latency_model": {
            "source": latency.source,
            "estimated": latency.estimated,
            "profile": config.profile,
            "errors": latency.errors,
        },
        "gang_in_flight": None
        if gang is None
        else {
            "rids": sorted(gang.rids),
            "layers_done": gang.layers_done,
            "num_layers": gang.num_layers,
        },
        "gang_paused": None if paused is None else sorted(paused.rids),
        "kv_total_tokens": int(scheduler.max_total_num_tokens),
        "kv_available_tokens": int(scheduler.token_to_kv_pool_allocator.available_size()),
        "kv_evictable_tokens": int(scheduler.tree_cache.evictable_size()),
    }

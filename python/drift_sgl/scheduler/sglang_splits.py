"""SGLang's per-split decode machinery, driven by drift's partition backend.

With ``enable_pdmux`` set, SGLang builds one decode attention backend per
stream group, captures the decode CUDA graphs once per group on that group's
decode stream (each kernel node keeps the green context it was captured in),
and replays the graph of the current group. drift keeps the machinery and
supplies the groups: its backend's stream pairs, one per split, published
into ``sglang.srt.multiplex.pdmux_context`` before the model worker is built.
Upstream's own loop, split choice and ``divide_sm`` are not used.

Only a stream-pair backend (green contexts, or ``cpu-streams`` on a CPU)
publishes groups. After a fallback to the time-multiplexed backend, drift
turns SGLang's machinery off again, so one set of graphs is captured as usual.
"""

from __future__ import annotations

from typing import Any

from sglang.srt.multiplex import pdmux_context
from sglang.srt.runtime_context import get_context

from drift_sgl.partition import StreamPairBackend

#: Provenance recorded with drift's changes to SGLang's resolved settings.
SOURCE = "drift-sgl partition backend"


def publish_stream_groups(backend: StreamPairBackend) -> None:
    """Make ``backend``'s stream pairs SGLang's stream groups, one per split."""
    pairs = [backend.pair(i) for i in range(len(backend.splits))]
    pdmux_context.STREAM_GROUPS = [(pair.prefill, pair.decode) for pair in pairs]
    pdmux_context.SM_COUNTS = [(s.prefill_units, s.decode_units) for s in backend.splits]
    pdmux_context.SM_GROUP_NUM = len(pairs)
    # One decode attention backend per group (SGLang sizes the list by this).
    get_context().override(SOURCE, sm_group_num=len(pairs))
    pdmux_context.set_current_stream_idx(len(pairs) - 1)


def turn_off_sglang_pdmux() -> None:
    """One set of decode graphs on the scheduler's stream, as without pdmux."""
    get_context().override(SOURCE, enable_pdmux=False)


def select_split(model_runner: Any, split_index: int) -> None:
    """Decode of this step replays the graphs and attention state of ``split_index``."""
    pdmux_context.set_current_stream_idx(split_index)
    model_runner.update_decode_attn_backend(split_index)


def decode_graph_memory_gb(model_runner: Any) -> float:
    """GiB the decode CUDA graphs took at capture (all splits together)."""
    usage = getattr(model_runner, "graph_memory_usage", None) or {}
    return float(usage.get("decode", 0.0))

"""Check SGLang's server arguments against what drift's loop supports.

Runs in the launcher before any process starts. A contradiction raises
``DriftConfigError`` naming the flag; settings drift needs and the user left at
their defaults are filled in and reported, so the startup log says what drift
changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drift_sgl.config import DriftConfigError

CPU_MEM_FRACTION_STATIC = 0.7


_LORA_REASON = (
    "LoRA adapters are not supported by drift's loop: SGLang's LoRA backend holds the "
    "adapter state of one batch at a time, which a prefill block beside a decode step would "
    "overwrite; serve LoRA with python -m sglang.launch_server"
)


@dataclass(frozen=True)
class _Incompatible:
    field: str
    flag: str
    is_set: Callable[[Any], bool]
    reason: str


_INCOMPATIBLE = (
    _Incompatible(
        "enable_pdmux",
        "--enable-pdmux",
        bool,
        "drift replaces upstream's PD-multiplexing loop; drop this flag",
    ),
    _Incompatible(
        "pp_size",
        "--pp-size",
        lambda v: v is not None and v > 1,
        "pipeline parallelism is not supported by drift's loop; use --tp or --dp",
    ),
    _Incompatible(
        "disaggregation_mode",
        "--disaggregation-mode",
        lambda v: v not in (None, "null"),
        "drift multiplexes prefill and decode on one instance instead of disaggregating them",
    ),
    _Incompatible(
        "enable_mixed_chunk",
        "--enable-mixed-chunk",
        bool,
        "drift runs prefill beside decode as layer blocks, not mixed into the decode batch",
    ),
    _Incompatible(
        "speculative_algorithm",
        "--speculative-algorithm",
        lambda v: v is not None,
        "speculative decoding is not supported by drift's loop yet",
    ),
    _Incompatible(
        "enable_dp_attention",
        "--enable-dp-attention",
        bool,
        "DP attention needs SGLang's MLP-sync loop; use plain --dp with drift",
    ),
    _Incompatible(
        "attn_dp_size",
        "--attn-dp-size",
        lambda v: v is not None and v > 1,
        "DP attention needs SGLang's MLP-sync loop; use plain --dp with drift",
    ),
    _Incompatible(
        "enable_pd_role_switch",
        "--enable-pd-role-switch",
        bool,
        "PD role switching is a disaggregation feature; drift serves both phases",
    ),
    _Incompatible(
        "dllm_algorithm",
        "--dllm-algorithm",
        lambda v: v is not None,
        "diffusion LLM decoding is not supported by drift's loop",
    ),
    _Incompatible(
        "enable_lora",
        "--enable-lora",
        bool,
        _LORA_REASON,
    ),
    _Incompatible(
        "lora_paths",
        "--lora-paths",
        bool,
        _LORA_REASON,
    ),
    _Incompatible(
        "enable_return_routed_experts",
        "--enable-return-routed-experts",
        bool,
        "SGLang's layer-split prefill does not report routed experts; drift's prefill runs "
        "that way, so the field would come back empty",
    ),
    _Incompatible(
        "enable_return_indexer_topk",
        "--enable-return-indexer-topk",
        bool,
        "SGLang's layer-split prefill does not report the indexer's top-k; drift's prefill "
        "runs that way, so the field would come back empty",
    ),
    _Incompatible(
        "tokenizer_worker_num",
        "--tokenizer-worker-num",
        lambda v: v is not None and v > 1,
        "drift checks every request (token ids, counts, SLO headers) in the main process's "
        "tokenizer manager, which SGLang's separate tokenizer workers bypass; use one",
    ),
    _Incompatible(
        "enable_hisparse",
        "--enable-hisparse",
        bool,
        "HiSparse has its own prefill-to-decode transition, which drift's loop does not run",
    ),
)


def requested_chunk_tokens(server_args: Any) -> int | None:
    """The user's --chunked-prefill-size, if it asks for chunks (read before completion)."""
    chunk = server_args.chunked_prefill_size
    return chunk if chunk is not None and chunk > 0 else None


def check_and_complete(
    server_args: Any, device: str, partition: str = "time-mux", multiplexed: bool = True
) -> list[str]:
    """Validate ``server_args`` for drift and fill in what drift needs.

    Args:
        server_args: SGLang's raw (not yet resolved) ``ServerArgs``.
        device: ``"cpu"`` or ``"cuda"``, as the launcher determined it.
        partition: ``--drift-partition``; on ``cuda`` anything but ``time-mux``
            turns on SGLang's per-split decode machinery (``enable_pdmux``),
            whose stream groups drift's scheduler supplies.
        multiplexed: False for a model SGLang's own scheduler serves (an
            embedding or reward model): only the CPU settings are filled in.

    Returns:
        Human-readable notes about each setting drift filled in.

    Raises:
        DriftConfigError: a setting contradicts drift; the message names the flag.
    """
    if not multiplexed:
        return _complete_cpu(server_args) if device == "cpu" else []
    for rule in _INCOMPATIBLE:
        value = getattr(server_args, rule.field, None)
        if rule.is_set(value):
            raise DriftConfigError(rule.flag, rule.reason)

    notes = []
    chunk = requested_chunk_tokens(server_args)
    # drift chunks long prompts itself (each chunk is one gang of layer blocks,
    # DriftScheduler.init_chunked_prefill); SGLang's server argument stays -1,
    # which its layer-split machinery requires.
    server_args.chunked_prefill_size = -1
    if chunk is not None:
        notes.append(
            f"--chunked-prefill-size {chunk}: longer prompts are prefilled in chunks of that "
            "many tokens, each chunk a gang of layer blocks"
        )
    else:
        notes.append(
            "prompts longer than --max-prefill-tokens are prefilled in chunks of that many "
            "tokens, each chunk a gang of layer blocks"
        )
    if not server_args.disable_overlap_schedule:
        server_args.disable_overlap_schedule = True
        notes.append("--disable-overlap-schedule (drift's loop overlaps phases itself)")
    if device == "cpu":
        notes += _complete_cpu(server_args)
    if (device == "cuda" and partition != "time-mux") or partition == "cpu-streams":
        # Set after the user check above: a user's --enable-pdmux asks for
        # upstream's loop, this asks SGLang for one decode attention backend
        # and one set of decode CUDA graphs per split (scheduler/sglang_splits.py).
        server_args.enable_pdmux = True
        notes.append("per-split decode CUDA graphs (SGLang's enable_pdmux, drift's splits)")
    return notes


def _complete_cpu(server_args: Any) -> list[str]:
    notes = []
    if server_args.device is None:
        server_args.device = "cpu"
        notes.append("--device cpu (no NVIDIA driver on this machine)")
    if server_args.attention_backend is None:
        server_args.attention_backend = "torch_native"
        notes.append("--attention-backend torch_native (the CPU attention backend on PyPI builds)")
    if server_args.mem_fraction_static is None:
        # SGLang reserves activation memory for a whole unchunked prefill
        # (max_prefill_tokens x 1.5 MB), which exceeds a small machine's RAM and
        # makes its estimate negative; on a CPU, keep SGLang's usual fraction.
        server_args.mem_fraction_static = CPU_MEM_FRACTION_STATIC
        notes.append(
            f"--mem-fraction-static {CPU_MEM_FRACTION_STATIC} (of RAM, for weights and KV)"
        )
    if not server_args.disable_cuda_graph:
        # The CPU "graph" is a torch.compile path: minutes of compiling on small machines.
        server_args.disable_cuda_graph = True
        notes.append("--disable-cuda-graph (CPU graphs compile slowly and gain little)")
    if not server_args.sleep_on_idle:
        # SGLang's scheduler polls its sockets without blocking: an idle CPU
        # server would keep a core busy, and slow every other process there.
        server_args.sleep_on_idle = True
        notes.append("--sleep-on-idle (an idle scheduler would keep a core busy polling)")
    return notes

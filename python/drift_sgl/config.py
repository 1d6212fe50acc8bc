"""drift's own settings (the ``--drift-*`` flags) and their checks.

SGLang's settings stay in SGLang's ``ServerArgs``; drift never adds fields to
it. ``DriftConfig`` travels to every scheduler process inside the picklable
scheduler entry (see ``drift_sgl.entry``).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field, fields

from drift_sgl.partition import BACKEND_NAMES
from drift_sgl.partition.sm_layout import parse_splits
from drift_sgl.policy.planner import OVERLOAD_MODES
from drift_sgl.policy.slo import SloTable, SloTarget, parse_slo_classes

#: ``slo``: the SLO planner (docs/dispatcher.md); ``layer-budget``: the
#: foundation's fixed rule (upstream pdmux's heuristic), for comparison.
POLICY_NAMES = ("slo", "layer-budget")


class DriftConfigError(ValueError):
    """A setting is invalid or contradicts another; the message names the flag."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass(frozen=True)
class DriftConfig:
    """Settings of the multiplexing scheduler."""

    #: Partition backend: ``auto``, ``green-ctx``, ``time-mux`` or ``cpu-streams``.
    partition: str = "auto"
    #: Mixed SM splits of the green-context backend: ``auto`` or ``"p1:d1,p2:d2,..."``.
    splits: str = "auto"
    #: Bound on the memory of the per-split decode CUDA graphs, in GiB (None: none).
    max_graph_memory_gb: float | None = None
    #: Write when each decode step and prefill block ran, as JSON lines (None: off).
    timeline: str | None = None
    #: Write every policy call (state and decision) as JSON lines (None: off).
    decision_log: str | None = None
    #: Which policy decides each step: ``slo`` or ``layer-budget``.
    policy: str = "slo"
    #: Server-wide TTFT and TPOT targets in ms (None: no target).
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    #: Per-request classes: inline JSON or a JSON file (``drift_sgl.policy.slo``).
    slo_classes: str | None = None
    #: Requests that can no longer meet their TTFT: ``serve`` (best effort) or ``shed``.
    overload: str = "serve"
    #: ``layer-budget`` policy only: prefill work beside one decode step, in new
    #: tokens x layers (``budget // new_tokens`` layers, at least 1).
    layer_budget_tokens: int = 32768
    #: Latency profile (``python -m drift_sgl.profile``); None: estimate (GPU) or
    #: a quick calibration (CPU).
    profile: str | None = None
    #: Use a profile even if its model or device differs from the server's.
    profile_allow_mismatch: bool = False
    #: Seconds the loop may run nothing while requests wait before it aborts them.
    stall_timeout_s: float = 60.0
    #: Largest request body the HTTP server reads, in MiB (drift_sgl.door.body).
    max_request_mb: float = 64.0
    #: New tokens per prefill chunk (SGLang's --chunked-prefill-size, which the
    #: launcher moves here); None: chunks of --max-prefill-tokens. No flag of its own.
    prefill_chunk_tokens: int | None = field(default=None, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.partition not in BACKEND_NAMES:
            raise DriftConfigError(
                "--drift-partition",
                f"unknown backend {self.partition!r}; choose one of {', '.join(BACKEND_NAMES)}",
            )
        try:
            parse_splits(self.splits)
        except ValueError as err:
            raise DriftConfigError("--drift-splits", str(err)) from None
        if self.max_graph_memory_gb is not None and not (
            math.isfinite(self.max_graph_memory_gb) and self.max_graph_memory_gb > 0
        ):
            raise DriftConfigError(
                "--drift-max-graph-memory-gb",
                f"must be a positive number of GiB, got {self.max_graph_memory_gb}",
            )
        for flag, path in (
            ("--drift-timeline", self.timeline),
            ("--drift-decision-log", self.decision_log),
        ):
            folder = None if path is None else os.path.dirname(os.path.abspath(path))
            if folder is not None and not os.path.isdir(folder):
                raise DriftConfigError(flag, f"no such directory: {folder}")
        if self.layer_budget_tokens < 1:
            raise DriftConfigError(
                "--drift-layer-budget-tokens", f"must be >= 1, got {self.layer_budget_tokens}"
            )
        if self.profile is not None and not os.path.isfile(self.profile):
            raise DriftConfigError("--drift-profile", f"no such file: {self.profile}")
        if self.policy not in POLICY_NAMES:
            raise DriftConfigError(
                "--drift-policy",
                f"unknown policy {self.policy!r}; choose {', '.join(POLICY_NAMES)}",
            )
        if self.overload not in OVERLOAD_MODES:
            raise DriftConfigError(
                "--drift-overload", f"choose {' or '.join(OVERLOAD_MODES)}, got {self.overload!r}"
            )
        for name in ("ttft_slo_ms", "tpot_slo_ms"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                flag = "--drift-" + name.replace("_", "-")
                raise DriftConfigError(flag, f"must be a positive number of ms, got {value}")
        if not (math.isfinite(self.stall_timeout_s) and self.stall_timeout_s > 0):
            raise DriftConfigError(
                "--drift-stall-timeout-s",
                f"must be a positive number of seconds, got {self.stall_timeout_s}",
            )
        if not (math.isfinite(self.max_request_mb) and self.max_request_mb > 0):
            raise DriftConfigError(
                "--drift-max-request-mb",
                f"must be a positive number of MiB, got {self.max_request_mb}",
            )
        if self.prefill_chunk_tokens is not None and self.prefill_chunk_tokens < 1:
            raise DriftConfigError(
                "--chunked-prefill-size", f"must be >= 1, got {self.prefill_chunk_tokens}"
            )
        self.slo_table()  # raises on bad classes

    def slo_table(self) -> SloTable:
        """The server-wide targets and the classes of ``--drift-slo-classes``."""
        default = SloTarget(ttft_ms=self.ttft_slo_ms, tpot_ms=self.tpot_slo_ms)
        if self.slo_classes is None:
            return SloTable(default=default)
        try:
            return SloTable(default=default, classes=parse_slo_classes(self.slo_classes, default))
        except ValueError as err:
            raise DriftConfigError("--drift-slo-classes", str(err)) from None


_HELP = {
    "partition": (
        "how prefill and decode share the device: 'auto' (green-context SM partitions on an "
        "NVIDIA GPU that has them, else time-multiplexed, with a warning saying why), "
        "'green-ctx' (the same, but fail instead of falling back), 'time-mux' (phases take "
        "turns on the whole device) or 'cpu-streams' (the GPU code path on CPU stream shims, "
        "for tests). Default: %(default)s."
    ),
    "splits": (
        "green-ctx only: the mixed SM splits to create at start-up, 'auto' (decode gets 1/8 "
        "to 3/4 of the SMs, rounded to the GPU's granularity) or 'PREFILL:DECODE,...' SM "
        "counts, e.g. '116:16,100:32,68:64'. Prefill-only and decode-only splits are always "
        "added; the driver's rounding is read back and logged. Default: %(default)s."
    ),
    "max_graph_memory_gb": (
        "green-ctx only: refuse to start when the decode CUDA graphs, captured once per "
        "split, take more than this many GiB (start-up logs the figure; use fewer "
        "--drift-splits or a lower --cuda-graph-max-bs). Default: no bound."
    ),
    "timeline": (
        "write the interval each decode step and prefill layer block ran in, one JSON line "
        "each, to this file (device time from events on the phases' streams on a GPU, host "
        "time elsewhere; ranks other than 0 append .tpN/.dpN); /server_info sums up how much "
        "prefill time overlapped decode. Default: off."
    ),
    "decision_log": (
        "write every decision of the policy, with the state it was made on, one JSON line "
        "each, to this file (the first line names the policy and holds its latency model; "
        "data-parallel ranks other than 0 append .dpN); `python -m drift_sgl.mux.decision_log "
        "FILE` decides every state again and reports differences. Grows with every step. "
        "Default: off."
    ),
    "policy": (
        "what decides each step: 'slo' (split, prefill layers, admission and pre-emption "
        "from the latency model and the SLOs; docs/dispatcher.md) or 'layer-budget' (a "
        "fixed rule like upstream pdmux's, for comparison). Default: %(default)s."
    ),
    "ttft_slo_ms": "time-to-first-token target in ms for requests without a class (default: none).",
    "tpot_slo_ms": (
        "time-per-output-token target in ms for requests without a class (default: none: "
        "decode gets the share that keeps it as fast as on the whole device)."
    ),
    "slo_classes": (
        "per-request SLO classes, as JSON or a JSON file: "
        '\'{"interactive": {"ttft_ms": 500, "tpot_ms": 40}, "batch": {"ttft_ms": 30000}}\'; '
        "a request picks one with the x-slo-class header or a body field "
        '\'"slo": {"class": NAME}\' (and may state its own x-slo-ttft-ms / x-slo-tpot-ms).'
    ),
    "overload": (
        "requests that can no longer meet their TTFT: 'serve' them best-effort after those "
        "that can, or 'shed' them (they finish at once with an abort naming the SLO). "
        "Default: %(default)s."
    ),
    "layer_budget_tokens": (
        "--drift-policy layer-budget only: prefill work launched beside each decode step, in "
        "new tokens x transformer layers: a prefill of N new tokens advances max(1, budget "
        "// N) layers per step. Default: %(default)s."
    ),
    "profile": (
        "latency profile JSON from `python -m drift_sgl.profile run|fit|estimate`. Without "
        "one: an estimate for the detected GPU, or a quick calibration on a CPU."
    ),
    "stall_timeout_s": (
        "liveness watchdog: when requests wait and the loop has run nothing for this many "
        "seconds, it aborts them (503, with a message saying why) and logs their ids, instead "
        "of leaving clients hanging. Default: %(default)s."
    ),
    "max_request_mb": (
        "largest request body the server reads, in MiB; a larger one is refused with HTTP "
        "413 before it is read whole. Default: %(default)s."
    ),
    "profile_allow_mismatch": (
        "use --drift-profile even when its model or device differs from the server's "
        "(predictions will be off)."
    ),
}


def add_drift_args(parser: argparse.ArgumentParser) -> None:
    """Add every ``--drift-*`` flag, with defaults taken from ``DriftConfig``."""
    group = parser.add_argument_group("drift-sgl options")
    for spec in _cli_fields():
        flag = "--drift-" + spec.name.replace("_", "-")
        kwargs = {"default": spec.default, "help": _HELP[spec.name], "dest": spec.name}
        if spec.name == "partition":
            kwargs["choices"] = BACKEND_NAMES
        elif spec.name == "policy":
            kwargs["choices"] = POLICY_NAMES
        elif spec.name == "overload":
            kwargs["choices"] = OVERLOAD_MODES
        elif spec.type == "bool":
            kwargs["action"] = "store_true"
        elif spec.type == "int":
            kwargs["type"] = int
        elif spec.type in ("float", "float | None"):
            kwargs["type"] = float
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> DriftConfig:
    """Build the config from parsed flags; raises ``DriftConfigError``."""
    return DriftConfig(**{f.name: getattr(args, f.name) for f in _cli_fields()})


def _cli_fields() -> list:
    """The fields that have a ``--drift-*`` flag."""
    return [f for f in fields(DriftConfig) if f.metadata.get("cli", True)]

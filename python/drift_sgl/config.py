"""drift's own settings (the ``--drift-*`` flags) and their checks.

SGLang's settings stay in SGLang's ``ServerArgs``; drift never adds fields to
it. ``DriftConfig`` travels to every scheduler process inside the picklable
scheduler entry (see ``drift_sgl.entry``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

from drift_sgl.partition import BACKEND_NAMES


class DriftConfigError(ValueError):
    """A setting is invalid or contradicts another; the message names the flag."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass(frozen=True)
class DriftConfig:
    """Settings of the multiplexing scheduler."""

    #: Partition backend: ``auto`` or ``time-mux``.
    partition: str = "auto"
    #: Prefill work launched beside one decode step, in new tokens x layers.
    #: The layer-budget rule launches ``budget // new_tokens`` layers (at least 1).
    layer_budget_tokens: int = 32768
    #: Latency profile (``python -m drift_sgl.profile``); None: estimate (GPU) or
    #: a quick calibration (CPU).
    profile: str | None = None
    #: Use a profile even if its model or device differs from the server's.
    profile_allow_mismatch: bool = False

    def __post_init__(self) -> None:
        if self.partition not in BACKEND_NAMES:
            raise DriftConfigError(
                "--drift-partition",
                f"unknown backend {self.partition!r}; choose one of {', '.join(BACKEND_NAMES)}",
            )
        if self.layer_budget_tokens < 1:
            raise DriftConfigError(
                "--drift-layer-budget-tokens", f"must be >= 1, got {self.layer_budget_tokens}"
            )
        if self.profile is not None and not os.path.isfile(self.profile):
            raise DriftConfigError("--drift-profile", f"no such file: {self.profile}")


_HELP = {
    "partition": (
        "how prefill and decode share the device: 'auto' (green-context SM partitions on a "
        "capable NVIDIA GPU once available, otherwise time-multiplexed) or 'time-mux' "
        "(phases take turns on the whole device). Default: %(default)s."
    ),
    "layer_budget_tokens": (
        "prefill work launched beside each decode step, in new tokens x transformer layers: "
        "a prefill of N new tokens advances max(1, budget // N) layers per step. Smaller "
        "values interleave prefill more finely with decode. Default: %(default)s."
    ),
    "profile": (
        "latency profile JSON from `python -m drift_sgl.profile run|fit|estimate`. Without "
        "one: an estimate for the detected GPU, or a quick calibration on a CPU."
    ),
    "profile_allow_mismatch": (
        "use --drift-profile even when its model or device differs from the server's "
        "(predictions will be off)."
    ),
}


def add_drift_args(parser: argparse.ArgumentParser) -> None:
    """Add every ``--drift-*`` flag, with defaults taken from ``DriftConfig``."""
    group = parser.add_argument_group("drift-sgl options")
    for field in fields(DriftConfig):
        flag = "--drift-" + field.name.replace("_", "-")
        kwargs = {"default": field.default, "help": _HELP[field.name], "dest": field.name}
        if field.name == "partition":
            kwargs["choices"] = BACKEND_NAMES
        elif field.type == "bool":
            kwargs["action"] = "store_true"
        elif field.type == "int":
            kwargs["type"] = int
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> DriftConfig:
    """Build the config from parsed flags; raises ``DriftConfigError``."""
    return DriftConfig(**{f.name: getattr(args, f.name) for f in fields(DriftConfig)})

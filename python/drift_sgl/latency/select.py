"""Which latency model a server uses: a checked profile, or one made at start-up.

With ``--drift-profile`` the profile must describe this server's model and
device (or ``--drift-profile-allow-mismatch``). Without one, a GPU server uses
the roofline estimate for its GPU and a CPU server a quick calibration of its
cores (both flagged ``estimated``). ``LatencyChoice.reason`` goes to the log.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from drift_sgl.latency.identity import (
    DeviceIdentity,
    ModelIdentity,
    device_name,
    profile_mismatches,
)
from drift_sgl.latency.model import LatencyModel, ProfileError
from drift_sgl.latency.roofline import (
    CENTRAL_PHYSICS,
    GPU_SPECS,
    DeviceSpec,
    estimate_profile,
    gpu_key_for,
    measure_cpu_spec,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyChoice:
    model: LatencyModel
    #: One line for the log: where the model came from.
    reason: str


def model_identity(model_config: Any) -> ModelIdentity:
    """The identity of the model SGLang loaded (its ``ModelConfig``)."""
    return ModelIdentity.from_hf_config(model_config.hf_config.to_dict(), str(model_config.dtype))


def device_identity(device: str, units: int, gpu_id: int = 0) -> DeviceIdentity:
    """This server's device: the CUDA device's name and SMs, or the CPU and its threads."""
    return DeviceIdentity(device, device_name(device, gpu_id), units)


def load_checked_profile(
    path: str, model: ModelIdentity, device_name: str, allow_mismatch: bool
) -> LatencyModel:
    """Load ``path``; raises ``ProfileError`` if it describes another model or device."""
    profile = LatencyModel.load(path)
    problems = profile_mismatches(profile.model, profile.device, model, device_name)
    if problems and not allow_mismatch:
        raise ProfileError(
            f"{path} was made for another setup ({'; '.join(problems)}); profile this one "
            "(python -m drift_sgl.profile run ...) or pass --drift-profile-allow-mismatch"
        )
    for problem in problems:
        logger.warning("drift: latency profile mismatch allowed: %s", problem)
    return profile


def default_latency_model(
    hf_config: dict[str, Any], model: ModelIdentity, device: DeviceIdentity
) -> LatencyChoice:
    """The model used when no profile is given."""
    if device.kind == "cpu":
        spec = measure_cpu_spec(device.total_sm, device.name)
        profile = estimate_profile(hf_config, model, spec, device, "cpu-calibration")
        flops = spec.peak_tflops * 1e3 * CENTRAL_PHYSICS.compute_efficiency
        bandwidth = spec.bandwidth_gbs * CENTRAL_PHYSICS.bandwidth_efficiency
        reason = (
            f"no --drift-profile: quick CPU calibration (measured {flops:.0f} GFLOP/s matmul, "
            f"{bandwidth:.0f} GB/s copy on {device.total_sm} threads), ESTIMATED"
        )
        return LatencyChoice(profile, reason)
    key = gpu_key_for(device.name)
    if key is None:
        # Unknown GPU: H100 figures scaled by SM count, and said so.
        spec = _scaled_to(GPU_SPECS["h100"], device)
        source = "estimate:unknown-gpu"
        reason = f"no --drift-profile and {device.name!r} has no published figures here: H100 "
        reason += "figures scaled by SM count, ESTIMATED (run `python -m drift_sgl.profile run`)"
    else:
        # A MIG slice has fewer SMs (and a matching share of memory): scale with them.
        spec = _scaled_to(GPU_SPECS[key], device)
        source = f"estimate:{key}"
        reason = f"no --drift-profile: roofline estimate for {key} from published peak figures, "
        reason += "ESTIMATED (run `python -m drift_sgl.profile run` for a measured profile)"
    return LatencyChoice(estimate_profile(hf_config, model, spec, device, source), reason)


def _scaled_to(base: DeviceSpec, device: DeviceIdentity) -> DeviceSpec:
    """``base``'s figures for a device with ``device.total_sm`` SMs (scaled in proportion)."""
    scale = device.total_sm / base.sms
    return dataclasses.replace(
        base,
        name=device.name,
        sms=device.total_sm,
        peak_tflops=base.peak_tflops * scale,
        bandwidth_gbs=base.bandwidth_gbs * scale,
    )


def select_latency_model(
    profile_path: str | None,
    allow_mismatch: bool,
    hf_config: dict[str, Any],
    model: ModelIdentity,
    device: DeviceIdentity,
) -> LatencyChoice:
    """The server's latency model; raises ``ProfileError`` for an unusable profile."""
    if profile_path is None:
        return default_latency_model(hf_config, model, device)
    profile = load_checked_profile(profile_path, model, device.name, allow_mismatch)
    return LatencyChoice(profile, f"--drift-profile {profile_path}: {profile.describe()}")

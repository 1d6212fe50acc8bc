"""What a profile was measured on: the model's shapes and the device.

A profile only predicts well for the model and device it was measured on, so
the server compares both before it trusts one (see ``profile_mismatches``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelIdentity:
    """The shapes that decide a model's latency (names follow HF config.json)."""

    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ModelIdentity:
        return cls(**{key: row[key] for key in cls.__dataclass_fields__})

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], dtype: str | None = None) -> ModelIdentity:
        """From a config.json dict; ``dtype`` (SGLang's ``--dtype``) wins unless ``auto``."""
        text = text_config(config)
        heads = int(text["num_attention_heads"])
        architectures = config.get("architectures") or ["unknown"]
        if dtype in (None, "", "auto"):
            stored = str(text.get("torch_dtype") or text.get("dtype") or "float32")
            dtype = auto_dtype(stored, str(text.get("model_type") or config.get("model_type")))
        return cls(
            architecture=str(architectures[0]),
            num_layers=int(text["num_hidden_layers"]),
            hidden_size=int(text["hidden_size"]),
            num_heads=heads,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            dtype=normalize_dtype(dtype),
        )


@dataclass(frozen=True)
class DeviceIdentity:
    """The device a profile describes; ``total_sm`` is SMs (GPU) or threads (CPU)."""

    kind: str
    name: str
    total_sm: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> DeviceIdentity:
        return cls(**{key: row[key] for key in cls.__dataclass_fields__})


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a (possibly multimodal) config."""
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        return config["text_config"]
    return config


def auto_dtype(stored: str, model_type: str) -> str:
    """The dtype SGLang serves with ``--dtype auto``.

    A 32-bit checkpoint is served in 16 bits (bfloat16 for Gemma models, whose
    activations overflow float16); any other checkpoint as it is stored.
    """
    if normalize_dtype(stored) != "float32":
        return stored
    return "bfloat16" if model_type.startswith("gemma") else "float16"


def normalize_dtype(dtype: str) -> str:
    name = str(dtype).removeprefix("torch.")
    return {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32"}.get(
        name, name
    )


def read_hf_config(model_path: str | Path) -> dict[str, Any]:
    """config.json of a local model directory; raises ``FileNotFoundError``."""
    path = Path(model_path) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a local model directory is needed here)")
    return json.loads(path.read_text(encoding="utf-8"))


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return "cpu: " + (platform.processor() or platform.machine())


def cuda_device_name(index: int) -> str:
    """Name of CUDA device ``index`` as torch numbers it, read through NVML.

    NVML does not create a CUDA context (the launcher must not: SGLang's
    processes create their own). It numbers devices physically, so an integer
    ``CUDA_VISIBLE_DEVICES`` list is applied first.
    """
    import pynvml

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if all(v.strip().isdigit() for v in visible) and index < len(visible):
        index = int(visible[index])
    pynvml.nvmlInit()
    try:
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
    finally:
        pynvml.nvmlShutdown()
    return name.decode() if isinstance(name, bytes) else name


def device_name(device: str, gpu_id: int = 0) -> str:
    """The name a profile records for SGLang's ``device``: the GPU's, the CPU's, or the device.

    One function for the launcher, the scheduler and ``profile run``, so that a
    profile's device and the server's are always named the same way.
    """
    if device == "cuda":
        return cuda_device_name(gpu_id)
    if device == "cpu":
        return cpu_name()
    return device


def cpu_device() -> DeviceIdentity:
    """This machine's CPU; its threads are the cores this process may run on."""
    return DeviceIdentity(kind="cpu", name=cpu_name(), total_sm=len(os.sched_getaffinity(0)))


def profile_mismatches(
    profile_model: ModelIdentity,
    profile_device: DeviceIdentity,
    model: ModelIdentity,
    device_name: str,
) -> list[str]:
    """Why a profile does not describe this server (empty: it does)."""
    problems = [
        f"model {key}: profile has {ours!r}, server has {theirs!r}"
        for key, ours in profile_model.to_json().items()
        if ours != (theirs := getattr(model, key))
    ]
    if profile_device.name.strip() != device_name.strip():
        problems.append(f"device: profile has {profile_device.name!r}, server has {device_name!r}")
    return problems

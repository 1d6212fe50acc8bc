"""Make a CPU-only machine able to run SGLang (see docs/cpu.md).

Must run before anything imports sglang: some sglang modules read these
variables at import time. Spawned SGLang processes inherit the environment.
"""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drift_sgl.cpu.stub import build_stub, default_stub_dir, has_nvidia_driver

#: Variables SGLang needs on a CPU; a value the user already set wins.
CPU_ENV_DEFAULTS = {
    # Without it SGLang refuses to start: "No accelerator".
    "SGLANG_USE_CPU_ENGINE": "1",
    # The Rust radix-tree core links a specific libtorch; the Python core is safe.
    "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python",
}

#: Python warnings SGLang's import path raises in every process on a CPU:
#: GPU-only features (AWQ, GGUF, Triton kernels) saying they are off. Filtered
#: in spawned processes through ``PYTHONWARNINGS`` (unless the user set it).
CPU_IMPORT_WARNINGS = ("ignore:Only CUDA:UserWarning", "ignore:Triton is not supported:UserWarning")
#: SGLang's model registry logs one warning per model module whose import
#: needs a kernel the CPU build lacks: an op missing from sgl_kernel, or a
#: name missing from one of SGLang's own kernel layers.
_CPU_KERNEL_IMPORT_ERRORS = ("'sgl_kernel' object has no attribute", "from 'sglang.srt.layers.")

#: Plain SGLang's arguments for a CPU, as drift's launcher fills them in for
#: itself (server_args_check._complete_cpu): a benchmark or a test that
#: compares drift with SGLang starts SGLang with these, so both run the same
#: kernels. Overlap is off as in drift, whose own loop overlaps the phases.
SGLANG_CPU_ARGS = (
    "--device", "cpu",
    "--attention-backend", "torch_native",
    "--disable-cuda-graph",
    "--disable-overlap-schedule",
    "--sleep-on-idle",
)  # fmt: skip


@dataclass(frozen=True)
class CpuEnvironment:
    """What was prepared, for the startup log."""

    stub_path: Path | None
    variables: dict[str, str]

    def describe(self) -> str:
        stub = f"stand-in {self.stub_path}" if self.stub_path else "no libcuda stand-in needed"
        return f"CPU mode: {stub}; " + " ".join(f"{k}={v}" for k, v in self.variables.items())


def requested_device(argv: list[str]) -> str | None:
    """The value of ``--device`` in an SGLang argument list, if given."""
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--device="):
            return arg.split("=", 1)[1]
    return None


def model_path_is_local(argv: list[str]) -> bool:
    """True when ``--model-path`` names an existing directory (no hub access needed)."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--model-path" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--model-path="):
            value = arg.split("=", 1)[1]
        if value is not None:
            return Path(value).is_dir()
    return False


def server_process_env(extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A copy of this environment for a server process a benchmark starts: made
    able to run SGLang on a CPU (offline: the model is local) when there is no
    NVIDIA driver, with ``extra`` on top."""
    env = dict(os.environ)
    if not has_nvidia_driver():
        prepare_cpu_environment(env, offline=True, preload=False)
    env.update({key: str(value) for key, value in (extra or {}).items()})
    return env


def prepare_cpu_environment(
    env: MutableMapping[str, str], offline: bool, preload: bool = True
) -> CpuEnvironment:
    """Set SGLang's CPU variables in ``env`` and load the libcuda stand-in.

    Args:
        env: the environment to update (``os.environ`` in the launcher).
        offline: also forbid hub access (the model is a local directory).
        preload: load the stand-in into this process too (the launcher needs it;
            code that only starts other processes does not).
    """
    wanted = dict(CPU_ENV_DEFAULTS)
    if offline:
        wanted.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    wanted["PYTHONWARNINGS"] = ",".join(CPU_IMPORT_WARNINGS)
    applied = {}
    for key, value in wanted.items():
        env.setdefault(key, value)
        applied[key] = env[key]

    stub = None
    if not has_nvidia_driver():
        stub = build_stub(default_stub_dir(env))
        paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if str(stub.parent) not in paths:
            env["LD_LIBRARY_PATH"] = os.pathsep.join([str(stub.parent), *paths])
        # The dynamic loader read LD_LIBRARY_PATH when this process started, so
        # load the stand-in by hand: a later dlopen of "libcuda.so.1" (by
        # sgl_kernel or torch) finds the already-loaded soname. Children started
        # with spawn see the updated LD_LIBRARY_PATH.
        if preload:
            ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    return CpuEnvironment(stub_path=stub, variables=applied)


def omp_threads_bind(num_ranks: int, cpus: list[int]) -> str | None:
    """SGLang's ``SGLANG_CPU_OMP_THREADS_BIND`` value giving each rank its own cores.

    SGLang on a CPU refuses more ranks than NUMA nodes unless told which cores
    each rank binds to ("0-3|4-7" for two ranks). Returns None for one rank, or
    when there are fewer cores than ranks.
    """
    if num_ranks <= 1 or len(cpus) < num_ranks:
        return None
    cpus = sorted(cpus)
    per_rank = len(cpus) // num_ranks
    groups = [cpus[i * per_rank : (i + 1) * per_rank] for i in range(num_ranks)]
    return "|".join(cpu_list(group) for group in groups)


def cpu_list(cpus: list[int]) -> str:
    """``0-3`` for a run of cores, else ``0,2,5`` (SGLang's own examples use ranges)."""
    if len(cpus) == 1:
        return str(cpus[0])
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(str(c) for c in cpus)


class _CpuKernelImportNoise(logging.Filter):
    """Drops the model registry's "Ignore import error when loading ..." lines
    caused by a kernel missing from the CPU build; other import errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Ignore import error when loading")
            and any(cause in message for cause in _CPU_KERNEL_IMPORT_ERRORS)
        )


def quiet_cpu_import_noise() -> None:
    """Keep SGLang's CPU import noise out of this process's log (docs/cpu.md).

    Spawned processes get the warning filters from ``PYTHONWARNINGS``; the
    registry's log filter is per process, so each process that loads models
    calls this (the launcher, and each scheduler process on a CPU).
    """
    for rule in CPU_IMPORT_WARNINGS:
        _, message, _ = rule.split(":")
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    registry = logging.getLogger("sglang.srt.models.registry")
    if not any(isinstance(f, _CpuKernelImportNoise) for f in registry.filters):
        registry.addFilter(_CpuKernelImportNoise())

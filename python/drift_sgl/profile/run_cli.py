"""``profile run`` wiring: SGLang arguments in, a fitted profile out.

Kept apart from ``cli.py`` because it prepares the platform (CPU mode must be
set up before the first sglang import) and loads a model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from drift_sgl.profile.cli import CliError, fit_and_write

#: Default measuring budget, in minutes.
DEFAULT_BUDGET_MIN = {"cpu": 3.0, "cuda": 30.0}


def _server_args(sglang_argv: list[str]) -> tuple[Any, str]:
    from drift_sgl.config import DriftConfigError
    from drift_sgl.launch_server import prepare_sglang_args

    if not any(a == "--model-path" or a.startswith("--model-path=") for a in sglang_argv):
        raise CliError("--model-path is required")
    try:
        prepared = prepare_sglang_args(sglang_argv)
    except DriftConfigError as err:
        raise CliError(str(err)) from None
    server_args, device = prepared.server_args, prepared.device
    if not prepared.model.generative:
        raise CliError(
            f"{prepared.model.architecture} is an embedding or reward model: drift serves it "
            "with SGLang's own scheduler, so it needs no latency profile"
        )
    if server_args.tp_size > 1:
        raise CliError(
            f"--tp {server_args.tp_size}: profile run measures one device (one TP rank); "
            "profiling tensor-parallel groups is not supported yet"
        )
    # A profile describes one replica: data parallelism does not change it.
    server_args.dp_size = 1
    return server_args, device


class _Progress:
    """A progress bar over the measuring budget (seconds), with the sample count."""

    def __init__(self, budget_s: float) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=round(budget_s), unit="s", desc="profiling", dynamic_ncols=True, mininterval=2
        )
        self._budget = budget_s

    def __call__(self, count: int, left_s: float, key: str) -> None:
        self._bar.set_postfix_str(f"{count} samples, last {key}", refresh=False)
        self._bar.update(max(0, min(self._bar.total, round(self._budget - left_s)) - self._bar.n))

    def close(self) -> None:
        self._bar.close()


def _warm_up(harness: Any, shares: list[int], control: Any) -> None:
    for sm in shares:
        control.use(sm)
        harness.prefill([64], [0])
        harness.prefill([32], [32])
        harness.decode([64] * 4, steps=2)


def run_and_fit(args: argparse.Namespace, sglang_argv: list[str]) -> None:
    if args.budget_min is not None and args.budget_min <= 0:
        raise CliError(f"--budget-min must be > 0, got {args.budget_min:g}")
    server_args, device_kind = _server_args(sglang_argv)

    from drift_sgl.latency.identity import DeviceIdentity, cpu_device, device_name
    from drift_sgl.latency.roofline import memory_info
    from drift_sgl.latency.samples import SampleError
    from drift_sgl.latency.select import model_identity
    from drift_sgl.profile.corun import CoRunnerError
    from drift_sgl.profile.harness import ForwardHarness
    from drift_sgl.profile.run import ProfileRunError, RunSettings, ShareControl, run_profile

    out = Path(args.out)
    samples_path = Path(args.samples) if args.samples else out.with_suffix(".samples.jsonl")
    for path in (out, samples_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    harness = ForwardHarness(server_args)
    if device_kind == "cpu":
        device = cpu_device()
    else:
        import torch

        index = torch.cuda.current_device()
        sms = torch.cuda.get_device_properties(index).multi_processor_count
        device = DeviceIdentity(device_kind, device_name(device_kind, index), sms)
    model = model_identity(harness.model_config)
    budget_min = args.budget_min
    if budget_min is None:
        budget_min = DEFAULT_BUDGET_MIN.get(device_kind, 30.0)
    control = ShareControl(device)
    print(
        f"profiling {model.architecture} on {device.name}: shares {control.shares()}, "
        f"co-run shares {control.co_run_shares() if not args.no_co_run else []}, "
        f"budget {budget_min:g} min, samples -> {samples_path}"
    )
    if device.kind != "cpu":
        print(
            "note: per-SM-share GPU profiling needs green-context partitions; this build "
            "profiles the whole device (smaller shares are predicted by 1/SM scaling)"
        )
    _warm_up(harness, control.shares(), control)
    settings = RunSettings(
        samples_path=samples_path,
        budget_s=budget_min * 60,
        max_tokens=args.max_tokens,
        co_run=not args.no_co_run,
        seed=args.seed,
    )

    def make_co_runner(cores: list[int]) -> Any:
        from drift_sgl.profile.corun import CoRunner

        print(f"starting the co-runner on cores {cores} (loads the model once more)")
        return CoRunner(server_args, cores)

    progress = _Progress(settings.budget_s)
    try:
        samples = run_profile(
            harness,
            device,
            model,
            settings,
            make_co_runner if device.kind == "cpu" else None,
            progress,
        )
    except (ProfileRunError, SampleError, CoRunnerError) as err:
        raise CliError(str(err)) from None
    finally:
        progress.close()
    print(f"{len(samples)} samples in {samples_path}")
    info = {
        "samples_file": str(samples_path),
        "budget_min": budget_min,
        "wall_s": round(time.monotonic() - started, 1),
        **memory_info(harness.model_config.hf_config.to_dict(), model.dtype),
    }
    fit_and_write(samples, device, model, args, info)

"""Start an SGLang server whose schedulers are drift's multiplexing schedulers.

    python -m drift_sgl.launch_server --model-path DIR [SGLang args] [--drift-* args]

Every SGLang server argument is accepted unchanged; drift's own flags all
start with ``--drift-``. Invalid or contradictory settings stop the launch
before any process starts, with one line naming the flag.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from dataclasses import dataclass, replace
from typing import Any

from drift_sgl.config import DriftConfig, DriftConfigError, add_drift_args, config_from_args
from drift_sgl.model_check import ModelFacts

logger = logging.getLogger("drift_sgl")

_USAGE = "python -m drift_sgl.launch_server --model-path PATH [SGLang args] [--drift-* args]"


class _DriftArgParser(argparse.ArgumentParser):
    """Reports a bad drift flag as ``DriftConfigError`` (one line, flag first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        flag, _, reason = message.removeprefix("argument ").partition(": ")
        raise DriftConfigError(flag.split("/")[0], reason or message)


def _drift_parser() -> argparse.ArgumentParser:
    parser = _DriftArgParser(
        prog="drift_sgl.launch_server", usage=_USAGE, add_help=False, allow_abbrev=False
    )
    add_drift_args(parser)
    return parser


def _print_help() -> None:
    print(f"usage: {_USAGE}\n")
    print(__doc__.strip().splitlines()[0] + "\n")
    _drift_parser().print_help()
    print("\nSGLang server arguments (all accepted unchanged):\n")
    from sglang.srt.server_args import ServerArgs

    sglang_parser = argparse.ArgumentParser(prog="sglang", add_help=False)
    ServerArgs.add_cli_args(sglang_parser)
    sglang_parser.print_help()


def split_argv(argv: list[str]) -> tuple[DriftConfig, list[str]]:
    """Separate drift's flags from SGLang's; raises ``DriftConfigError``."""
    drift_args, rest = _drift_parser().parse_known_args(argv)
    for arg in rest:
        if arg.startswith("--drift-"):
            raise DriftConfigError(arg.split("=", 1)[0], "unknown drift flag (see --help)")
    return config_from_args(drift_args), rest


def resolve_device(sglang_argv: list[str]) -> str:
    """The device to serve on: as given, else ``cuda`` with an NVIDIA driver, else ``cpu``.

    Only ``cuda`` needs the NVIDIA driver; other accelerators SGLang supports
    are passed through (drift runs time-multiplexed there).
    """
    from drift_sgl.cpu.environment import requested_device
    from drift_sgl.cpu.stub import has_nvidia_driver

    device = requested_device(sglang_argv)
    if device is not None:
        if device == "cuda" and not has_nvidia_driver():
            raise DriftConfigError(
                "--device", f"{device!r} needs an NVIDIA driver, and none is installed here"
            )
        return device
    return "cuda" if has_nvidia_driver() else "cpu"


@dataclass(frozen=True)
class PreparedArgs:
    """SGLang's ``ServerArgs`` as drift runs them, and what was learnt on the way."""

    server_args: Any
    #: ``cpu``, ``cuda`` or another accelerator SGLang supports.
    device: str
    #: Settings drift filled in, one line each, for the start-up log.
    notes: list[str]
    model: ModelFacts
    #: New tokens per prefill chunk that the user asked for (--chunked-prefill-size);
    #: None: chunks of --max-prefill-tokens (see server_args_check).
    prefill_chunk_tokens: int | None


def prepare_sglang_args(sglang_argv: list[str], partition: str = "time-mux") -> PreparedArgs:
    """Resolve the device, parse SGLang's arguments and complete them for drift.

    Prepares the CPU environment when there is no GPU (before the first sglang
    import: some modules read it at import time), parses with SGLang's own
    parser, reads the model's config and completes the settings drift needs.
    A generative model drift cannot multiplex is refused; an embedding or
    reward model keeps SGLang's settings (it is served by SGLang's scheduler).
    Raises ``DriftConfigError``. The launcher and ``profile run`` both start here.
    """
    device = resolve_device(sglang_argv)
    if device == "cpu":
        from drift_sgl.cpu.environment import (
            model_path_is_local,
            prepare_cpu_environment,
            quiet_cpu_import_noise,
        )
        from drift_sgl.cpu.stub import StubBuildError

        try:
            env = prepare_cpu_environment(os.environ, offline=model_path_is_local(sglang_argv))
        except StubBuildError as err:
            raise DriftConfigError("--device cpu", str(err)) from None
        quiet_cpu_import_noise()
        logger.info("drift: %s", env.describe())

    from sglang.srt.server_args import prepare_server_args

    from drift_sgl.model_check import check_servable, inspect_model
    from drift_sgl.server_args_check import check_and_complete, requested_chunk_tokens

    server_args = prepare_server_args(sglang_argv)
    model = inspect_model(server_args)
    check_servable(model)
    chunk = requested_chunk_tokens(server_args)
    notes = check_and_complete(server_args, device, partition, multiplexed=model.generative)
    return PreparedArgs(server_args, device, notes, model, chunk)


def main(argv: list[str] | None = None) -> None:
    """Parse, check, prepare the platform and run SGLang's HTTP server."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        _print_help()
        return
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    try:
        config, sglang_argv = split_argv(argv)
        _check_partition_device(config.partition, resolve_device(sglang_argv))
        prepared = prepare_sglang_args(sglang_argv, config.partition)
    except DriftConfigError as err:
        _fail(err)
    server_args = prepared.server_args
    if prepared.device == "cpu":
        _bind_cpu_ranks(server_args)
    for note in prepared.notes:
        logger.info("drift: using %s", note)
    if not prepared.model.generative:
        logger.info(
            "drift: %s is an embedding or reward model: it only prefills, so there is "
            "nothing to multiplex; SGLang's own scheduler serves it",
            prepared.model.architecture,
        )
        _run(server_args, None, config.max_request_mb)
        return
    if config.profile is not None:
        try:
            _check_profile(config, server_args, prepared.device)
        except DriftConfigError as err:
            _fail(err)
    config = replace(config, prefill_chunk_tokens=prepared.prefill_chunk_tokens)
    logger.info("drift: %s", config)
    _run(server_args, config, config.max_request_mb)


def _run(server_args: object, config: DriftConfig | None, max_request_mb: float) -> None:
    """Run SGLang's HTTP server, with drift's schedulers unless ``config`` is None,
    and drift's request checks at the door in either case."""
    from sglang.srt.entrypoints.engine import init_tokenizer_manager
    from sglang.srt.entrypoints.http_server import app, launch_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.utils import kill_process_tree

    from drift_sgl.door.body import BodyCheckMiddleware
    from drift_sgl.door.retry_after import RetryAfterMiddleware
    from drift_sgl.door.tokenizer_manager import DriftTokenizerManager
    from drift_sgl.entry import run_drift_scheduler_process

    load_plugins()
    # The door checks (drift_sgl.door) guard every model, multiplexed or not.
    app.add_middleware(BodyCheckMiddleware, max_bytes=int(max_request_mb * 2**20))
    app.add_middleware(RetryAfterMiddleware)
    entry: dict[str, Any] = {
        "init_tokenizer_manager_func": functools.partial(
            init_tokenizer_manager,
            TokenizerManagerClass=DriftTokenizerManager.bind(
                () if config is None else config.slo_table().classes
            ),
        )
    }
    if config is not None:
        entry["run_scheduler_process_func"] = functools.partial(run_drift_scheduler_process, config)
    try:
        launch_server(server_args, **entry)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


def _check_partition_device(partition: str, device: str) -> None:
    from drift_sgl.partition import GreenContextUnavailable, check_backend_device

    try:
        check_backend_device(partition, device)
    except (GreenContextUnavailable, ValueError) as err:
        raise DriftConfigError("--drift-partition", str(err)) from None


def _check_profile(config: DriftConfig, server_args: object, device: str) -> None:
    """Refuse a profile of another model or device before any process starts."""
    from sglang.srt.configs.model_config import ModelConfig

    from drift_sgl.latency.identity import device_name
    from drift_sgl.latency.model import ProfileError
    from drift_sgl.latency.select import load_checked_profile, model_identity

    name = device_name(device, server_args.base_gpu_id)
    model = model_identity(ModelConfig.from_server_args(server_args))
    try:
        profile = load_checked_profile(config.profile, model, name, config.profile_allow_mismatch)
    except (ProfileError, OSError, ValueError) as err:
        raise DriftConfigError("--drift-profile", str(err)) from None
    logger.info("drift: latency profile %s: %s", config.profile, profile.describe())


def _bind_cpu_ranks(server_args: object) -> None:
    from drift_sgl.cpu.environment import omp_threads_bind

    ranks = server_args.dp_size * server_args.tp_size
    if ranks <= 1 or "SGLANG_CPU_OMP_THREADS_BIND" in os.environ:
        return
    bind = omp_threads_bind(ranks, list(os.sched_getaffinity(0)))
    if bind is not None:
        os.environ["SGLANG_CPU_OMP_THREADS_BIND"] = bind
        logger.info("drift: SGLANG_CPU_OMP_THREADS_BIND=%s (one core group per rank)", bind)


def _fail(err: DriftConfigError) -> None:
    print(f"drift-sgl: error: {err}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()

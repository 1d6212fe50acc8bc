"""Starting drift and plain SGLang servers on the tiny model for end-to-end tests."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from drift_sgl.tools.server_process import ServerProcess, local_server_process


def decision_log_path(server_logs_dir: Path) -> Path:
    """Where the shared drift server logs its planner's decisions (test_slo.py replays it)."""
    return (server_logs_dir / "drift-decisions.jsonl").resolve()


def drift_server_process(
    model_dir: Path,
    log_path: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    api_key: str | None = None,
) -> ServerProcess:
    """A drift server on CPU at a free port of 127.0.0.1 (not started yet)."""
    return local_server_process(
        "drift_sgl.launch_server", model_dir, log_path, ("--device", "cpu", *args), env, api_key
    )


def sglang_server_process(
    model_dir: Path,
    log_path: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    api_key: str | None = None,
) -> ServerProcess:
    """Plain SGLang (its own scheduler) on CPU, with the CPU settings drift fills in."""
    from drift_sgl.cpu.environment import SGLANG_CPU_ARGS, prepare_cpu_environment

    cpu_env = dict(os.environ if env is None else env)
    prepare_cpu_environment(cpu_env, offline=True, preload=False)
    return local_server_process(
        "sglang.launch_server", model_dir, log_path, (*SGLANG_CPU_ARGS, *args), cpu_env, api_key
    )


def serve(server: ServerProcess, timeout_s: float = 300.0) -> Iterator[ServerProcess]:
    """Fixture body: start the server, yield it, stop its process group whatever happens."""
    try:
        yield server.start(timeout_s=timeout_s)
    finally:
        server.stop()

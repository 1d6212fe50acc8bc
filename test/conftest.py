"""Shared fixtures: a tiny model, and one real server per configuration.

Servers are session-scoped (a CPU SGLang server takes 30-60 s to start) and
always stopped through their process group, also when a test fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drift_sgl.tools.server_process import ServerProcess
from e2e.profiling import TinyProfile, make_tiny_profile
from e2e.servers import decision_log_path, drift_server_process, serve, sglang_server_process

API_KEY = "drift-test-key"
#: A TPOT target below a CPU decode step: the planner gives a prefill beside
#: decode one layer per step, so the multiplexed path (several steps per
#: prefill) is exercised.
TIGHT_TPOT_MS = "1"
#: Classes for the SLO tests: "doomed" can never meet its TTFT (it is shed),
#: "relaxed" has a loose TPOT target; requests without a class get the defaults.
SLO_CLASSES = '{"doomed": {"ttft_ms": 0.001}, "relaxed": {"ttft_ms": 600000, "tpot_ms": 1000}}'

COMMON_SERVER_ARGS = [
    "--max-total-tokens", "8192",
    # SGLang serves a float32 checkpoint in float16 by default. On a CPU that is
    # 4x slower at prefill, and its rounding turns the random model's near-ties
    # into greedy flips between two equally correct schedules.
    "--dtype", "float32",
    "--enable-cache-report",
    "--enable-metrics",
    "--api-key", API_KEY,
    # Request features that need a server flag (test_request_features.py).
    "--tool-call-parser", "qwen25",
    "--enable-return-hidden-states",
    "--enable-custom-logit-processor",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from drift_sgl.tools.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"), num_layers=6)


@pytest.fixture(scope="session")
def server_logs_dir() -> Path:
    path = Path(os.environ.get("DRIFT_TEST_LOG_DIR", "test-logs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_profile(
    tiny_model_dir: Path, server_logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> TinyProfile:
    """A real `profile run` of the tiny model on this CPU (interrupted once, resumed)."""
    return make_tiny_profile(tiny_model_dir, tmp_path_factory.mktemp("profile"), server_logs_dir)


@pytest.fixture(scope="session")
def drift_server(tiny_model_dir: Path, server_logs_dir: Path) -> Iterator[ServerProcess]:
    """The shared drift server (no --drift-profile: it calibrates the CPU at start-up)."""
    server = drift_server_process(
        tiny_model_dir,
        server_logs_dir / "drift.log",
        *COMMON_SERVER_ARGS,
        "--drift-tpot-slo-ms", TIGHT_TPOT_MS,
        "--drift-slo-classes", SLO_CLASSES,
        "--drift-overload", "shed",
        "--drift-decision-log", str(decision_log_path(server_logs_dir)),
        api_key=API_KEY,
    )  # fmt: skip
    yield from serve(server)


@pytest.fixture(scope="session")
def cpu_streams_server(tiny_model_dir: Path, server_logs_dir: Path) -> Iterator[ServerProcess]:
    """drift on the GPU code path (stream pairs, SGLang's per-split decode state),
    with torch's CPU stream shims standing in for green contexts."""
    server = drift_server_process(
        tiny_model_dir,
        server_logs_dir / "drift-cpu-streams.log",
        *COMMON_SERVER_ARGS,
        "--drift-partition", "cpu-streams",
        "--drift-tpot-slo-ms", TIGHT_TPOT_MS,
        "--drift-timeline", str(server_logs_dir / "cpu-streams-timeline.jsonl"),
        api_key=API_KEY,
    )  # fmt: skip
    yield from serve(server)


@pytest.fixture(scope="session")
def sglang_server(tiny_model_dir: Path, server_logs_dir: Path) -> Iterator[ServerProcess]:
    """Plain SGLang (its default scheduler) on the same model, for comparison."""
    server = sglang_server_process(
        tiny_model_dir, server_logs_dir / "sglang.log", *COMMON_SERVER_ARGS, api_key=API_KEY
    )
    yield from serve(server)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` on machines without an NVIDIA driver."""
    from drift_sgl.cpu.stub import has_nvidia_driver

    if has_nvidia_driver():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

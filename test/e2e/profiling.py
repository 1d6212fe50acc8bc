"""Running `python -m drift_sgl.profile run` on the tiny model for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from drift_sgl.tools.server_process import python_module_command

#: Run 1 is interrupted once it has written this many samples.
INTERRUPT_AFTER_SAMPLES = 8
#: The whole profile's measuring budget, shared by both runs (overheads come on top).
BUDGET_MIN = 1.0
#: Real CPU timings on a loaded 2-core machine are noisy (docs/latency-model.md),
#: and a short run holds out few samples, so its p95 is nearly its worst sample:
#: the run's own bound is loose, and the test checks the mean error as well.
#: Fresh-clone CI runs measured a decode mean of 34% (6 held-out samples) and,
#: on 2026-12-02, 54% with a p95 of 110% (5 held-out samples; the run then
#: refused to write the profile and every test using it errored), with only
#: idle servers beside it. A fit of the wrong form is off by several times
#: that; the bounds sit above the noise seen, below a wrong form.
CPU_MAX_P95_ERROR = 2.0
CPU_MAX_MEAN_ERROR = 0.75


@dataclass(frozen=True)
class TinyProfile:
    path: Path
    samples: Path
    interrupted_rc: int
    interrupted_log: str
    resumed_log: str


def profile_command(model_dir: Path, out: Path, samples: Path) -> list[str]:
    return python_module_command(
        "drift_sgl.profile", "run",
        "--model-path", str(model_dir),
        "--device", "cpu",
        "--max-total-tokens", "8192",
        "--out", str(out),
        "--samples", str(samples),
        "--budget-min", str(BUDGET_MIN),
        "--max-tokens", "2048",
        "--max-p95-error", str(CPU_MAX_P95_ERROR),
    )  # fmt: skip


def _run(command: list[str], log: Path, interrupt_after: int | None, samples: Path) -> int:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A test run started in the background by a non-interactive shell
            # (`bash .ci/run &`) ignores SIGINT, and children inherit that, so
            # the interrupt below would be lost: give the run the default.
            preexec_fn=_default_sigint,
        )
        try:
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                if interrupt_after is not None and _count(samples) >= interrupt_after:
                    proc.send_signal(signal.SIGINT)
                    interrupt_after = None
                time.sleep(0.5)
            return proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _count(samples: Path) -> int:
    try:
        return sum(1 for line in samples.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def make_tiny_profile(model_dir: Path, work: Path, logs: Path) -> TinyProfile:
    """Profile the tiny model in two runs: the first interrupted, the second resuming."""
    out, samples = work / "tiny-profile.json", work / "tiny-profile.samples.jsonl"
    command = profile_command(model_dir, out, samples)
    first_log, second_log = logs / "profile-run-1.log", logs / "profile-run-2.log"
    first_rc = _run(command, first_log, INTERRUPT_AFTER_SAMPLES, samples)
    second_rc = _run(command, second_log, None, samples)
    resumed = second_log.read_text(errors="replace")
    if second_rc != 0:
        raise RuntimeError(f"profile run failed (rc={second_rc}):\n{resumed[-3000:]}")
    return TinyProfile(out, samples, first_rc, first_log.read_text(errors="replace"), resumed)

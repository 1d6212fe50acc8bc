"""The other phase, running beside a measurement: a co-runner process (CPU).

On a CPU the "partition" of a phase is a set of cores. The co-runner loads the
same model in its own process, pins itself to the cores the measured phase
does not use, and repeats one forward of the other phase until told to stop.
What the measured phase then loses to it (shared caches, memory bandwidth) is
what the contention guard records. GPU co-runs need green-context partitions
in one process and come with that backend.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any

#: Shapes the co-runner repeats: a mid-size prefill, and a mid-size decode batch.
CO_PREFILL = {"phase": "prefill", "new_per_seq": [256], "prefix_per_seq": [0]}
CO_DECODE = {"phase": "decode", "kv_per_seq": [256] * 8}


@dataclass(frozen=True)
class CoRunShape:
    """What the co-runner runs while a ``measured_phase`` sample is taken."""

    phase: str
    work: dict[str, Any]

    @classmethod
    def beside(cls, measured_phase: str) -> CoRunShape:
        work = CO_DECODE if measured_phase == "prefill" else CO_PREFILL
        return cls(phase=work["phase"], work=work)


class CoRunnerError(RuntimeError):
    """The co-runner process failed, died or stopped answering."""


def _serve(server_args: Any, cores: list[int], conn: Any) -> None:
    import signal

    import torch

    # Ctrl-C in a terminal reaches the whole process group: the parent decides
    # when this process stops (it asks, or it exits and the pipe closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.sched_setaffinity(0, cores)
    # SGLang binds its OpenMP threads (on CPUs with AMX) to these cores.
    os.environ["SGLANG_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
    torch.set_num_threads(len(cores))
    from drift_sgl.profile.harness import ForwardHarness

    harness = ForwardHarness(server_args, seed=1)
    conn.send("ready")
    work: dict[str, Any] | None = None
    started = False
    while True:
        if work is None or conn.poll():
            try:
                message = conn.recv()
            except EOFError:
                return  # the parent is gone
            if message == "stop":
                conn.send("stopped")
                return
            work, started = message, False
        if work.get("phase") == "idle":
            work = None
            conn.send("idle")
            continue
        if work["phase"] == "prefill":
            harness.prefill(work["new_per_seq"], work["prefix_per_seq"], repeats=1)
        else:
            harness.decode(work["kv_per_seq"], steps=1, passes=1)
        if not started:
            conn.send("running")
            started = True


class CoRunner:
    """A process running the other phase on ``cores``; close it when done."""

    def __init__(self, server_args: Any, cores: list[int]) -> None:
        self.cores = cores
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(server_args, cores, child), daemon=True, name="drift-corunner"
        )
        self._process.start()
        try:
            self._expect("ready", timeout=600)
        except BaseException:
            self._kill()
            raise

    def _expect(self, reply: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            while not self._conn.poll(1.0):
                if not self._process.is_alive():
                    raise CoRunnerError(
                        f"co-runner exited with status {self._process.exitcode} "
                        "(its error is in the output above)"
                    )
                if time.monotonic() > deadline:
                    raise CoRunnerError(f"co-runner did not answer within {timeout:.0f} s")
            got = self._conn.recv()
        except (EOFError, OSError) as err:
            raise CoRunnerError(f"lost the co-runner: {err!r}") from None
        if got != reply:
            raise CoRunnerError(f"co-runner answered {got!r}, expected {reply!r}")

    def _send(self, message: Any) -> None:
        try:
            self._conn.send(message)
        except (EOFError, OSError) as err:
            raise CoRunnerError(f"lost the co-runner: {err!r}") from None

    def start(self, shape: CoRunShape) -> None:
        """Start repeating ``shape``; returns once its first forward has run."""
        self._send(shape.work)
        self._expect("running", timeout=300)

    def pause(self) -> None:
        """Stop after the forward in progress; returns once it is idle."""
        self._send({"phase": "idle"})
        self._expect("idle", timeout=300)

    def close(self) -> None:
        """Ask the process to stop; kill it if it does not."""
        if self._process.is_alive():
            try:
                self._send("stop")
                self._expect("stopped", timeout=60)
            except CoRunnerError:
                pass
        self._kill()

    def _kill(self) -> None:
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

"""Which errors in a step end only the requests involved, and which end the process.

An exception while building, running or finishing a prefill gang or a decode
step says nothing about the other requests: the loop ends the requests of the
failing batch (their KV freed, an error finish reason sent) and serves
everyone else (``DriftScheduler._end_failed``). Some errors do corrupt state
that every request shares, and the only safe answer to them is to stop the
process at once (SGLang's process entry then logs it and takes the server
down, instead of a hang):

- device errors (a CUDA error, an illegal memory access, a device-side assert):
  the CUDA context is unusable afterwards;
- communicator errors (NCCL, torch.distributed);
- any error with tensor parallelism: each rank must end the same requests at
  the same step, and an error raised on one rank only cannot be agreed on.
"""

from __future__ import annotations

import torch

#: Substrings of messages from errors that leave the device or a communicator broken.
FATAL_MARKERS = (
    "CUDA error",
    "CUDA driver error",
    "illegal memory access",
    "device-side assert",
    "CUBLAS_STATUS",
    "CUDNN_STATUS",
    "NCCL",
)


def is_fatal(err: BaseException, tp_size: int) -> bool:
    """Whether ``err`` corrupts shared state, so the process must end."""
    if tp_size > 1 or not isinstance(err, Exception):
        return True
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    text = f"{type(err).__name__}: {err}"
    return any(marker in text for marker in FATAL_MARKERS)


def failure_message(phase: str, err: BaseException) -> str:
    """What a client whose request failed is told."""
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    cause = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    return (
        f"drift: the server failed while running {phase} with this request ({cause}); "
        "the request was aborted, other requests were not affected; see the server log"
    )

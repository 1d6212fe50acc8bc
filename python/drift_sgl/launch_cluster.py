"""``python -m drift_sgl.launch_cluster --workers N [--router-policy P] [SGLang, --drift-* args]``

N drift workers (one per GPU, or one per group of CPU cores), SGLang's gateway
(smg) in front with cache-aware routing, stopped together on Ctrl-C. See
docs/scale-out.md.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from drift_sgl.cluster.plan import ClusterError, parse_cluster_args
from drift_sgl.cluster.run import start_cluster, supervise
from drift_sgl.tools.server_process import ServerStartError

logger = logging.getLogger("drift_sgl.launch_cluster")


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES``, else every GPU torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        import smg  # noqa: F401  (the gateway; installed by `make setup`)
    except ImportError:
        message = "the gateway (smg) is not installed; run `make setup`"
        print(f"drift-sgl: error: {message}", file=sys.stderr)
        return 2
    from drift_sgl.config import DriftConfigError
    from drift_sgl.launch_server import resolve_device

    # SIGTERM while the cluster starts: stop what started (start_cluster cleans
    # up on KeyboardInterrupt) instead of dying with workers left running.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        spec = parse_cluster_args(argv)
        device = resolve_device(list(spec.worker_args))
        gpus = visible_gpus() if device == "cuda" else []
        cluster = start_cluster(spec, device, gpus, sorted(os.sched_getaffinity(0)))
    except (ClusterError, DriftConfigError) as err:
        print(f"drift-sgl: error: {err}", file=sys.stderr)
        return 2
    except ServerStartError as err:
        print(f"drift-sgl: error: the cluster did not start: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return supervise(cluster)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())

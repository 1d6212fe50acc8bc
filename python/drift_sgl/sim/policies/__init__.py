"""The simulated serving systems, one module each, behind one factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drift_sgl.latency.model import LatencyModel
from drift_sgl.sim.engine import Instance, Request, SimConfig, SimError, Simulator, stable_hash
from drift_sgl.sim.policies.disagg import DecodeOnlyInstance, PrefillOnlyInstance
from drift_sgl.sim.policies.mixed import MixedChunkInstance
from drift_sgl.sim.policies.mux import MuxInstance
from drift_sgl.sim.policies.prefill_first import PrefillFirstInstance

POLICIES = ("drift", "pdmux", "sglang", "chunked", "disagg")
#: --chunk-size when not given: SGLang's default chunked-prefill size, and a
#: Sarathi-like smaller chunk for mixed batches (SGLang has no separate default).
DEFAULT_CHUNK = {"sglang": 8192, "disagg": 8192, "chunked": 2048, "drift": 8192, "pdmux": 8192}


@dataclass
class Cluster:
    """The instances of one run and how a session is routed to them."""

    front: list[Instance]
    decoders: list[DecodeOnlyInstance]

    def submit(self, req: Request) -> None:
        self.front[stable_hash(req.session) % len(self.front)].submit(req)


def build_cluster(
    sim: Simulator,
    config: SimConfig,
    latency: LatencyModel,
    on_finish: Callable[[Request, float], None],
) -> Cluster:
    """The instances ``config`` describes (replicas, or prefill + decode GPUs)."""
    if config.policy not in POLICIES:
        raise SimError(f"unknown policy {config.policy!r}; choose from {', '.join(POLICIES)}")
    args = (latency, config, on_finish)
    if config.policy != "disagg":
        kinds: dict[str, Callable[[str], Instance]] = {
            "drift": lambda name: MuxInstance(sim, name, *args, planner=True),
            "pdmux": lambda name: MuxInstance(sim, name, *args, planner=False),
            "sglang": lambda name: PrefillFirstInstance(sim, name, *args),
            "chunked": lambda name: MixedChunkInstance(sim, name, *args),
        }
        make = kinds[config.policy]
        return Cluster([make(f"gpu{i}") for i in range(config.gpus)], [])

    prefill_gpus = config.prefill_gpus or config.gpus // 2
    if config.gpus < 2 or not 1 <= prefill_gpus < config.gpus:
        raise SimError(
            f"disagg needs --gpus >= 2 and 1 <= --prefill-gpus < --gpus "
            f"(got {config.gpus} and {prefill_gpus})"
        )
    decoders = [
        DecodeOnlyInstance(
            sim,
            f"decode{i}",
            latency,
            config.kv_capacity_tokens,
            config.kv_bytes_per_token,
            config.kv_link_gbps,
            on_finish,
        )
        for i in range(config.gpus - prefill_gpus)
    ]

    def handoff(req: Request, source: PrefillOnlyInstance) -> None:
        decoders[stable_hash("decode:" + req.session) % len(decoders)].receive(req, source)

    prefills: list[Instance] = []
    for i in range(prefill_gpus):
        instance = PrefillOnlyInstance(sim, f"prefill{i}", *args, handoff=handoff)
        prefills.append(instance)
    return Cluster(prefills, decoders)


__all__ = ["DEFAULT_CHUNK", "POLICIES", "Cluster", "build_cluster"]

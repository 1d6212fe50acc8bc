"""One KV-reservation rule (``policy.kv``) for the server's planner view and the simulator."""

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS

from drift_sgl.latency.model import LatencyModel
from drift_sgl.policy.kv import OUTPUT_RESERVE_CLIP, admission_kv_tokens, running_kv_room
from drift_sgl.policy.slo import SloTable, SloTarget
from drift_sgl.scheduler.slo_view import SloView
from drift_sgl.sim import cli
from drift_sgl.sim.engine import Request, Simulator
from drift_sgl.sim.policies.mux import MuxInstance

PROFILE = Path(__file__).resolve().parents[2] / "bench/profiles/llama-3.1-8b-h100.estimate.json"


def test_admission_reserves_the_prompt_and_the_clipped_output():
    assert admission_kv_tokens(300, 200, clip=4096) == 500
    assert admission_kv_tokens(300, 10_000, clip=4096) == 300 + 4096
    assert admission_kv_tokens(300, 10_000, clip=None) == 10_300  # the simulator: no clip
    assert admission_kv_tokens(300, 0, clip=4096) == 300


def test_a_running_request_keeps_its_remaining_output_times_the_ratio():
    assert running_kv_room(200, 50, ratio=0.5, clip=4096) == 75
    assert running_kv_room(10_000, 0, ratio=1.0, clip=4096) == 4096
    assert running_kv_room(200, 250, ratio=1.0, clip=4096) == 0  # past max_new: nothing


@pytest.mark.skipif(
    "SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION" in os.environ, reason="SGLang's clip is overridden"
)
def test_the_default_clip_is_sglangs():
    # The server passes SGLang's value (its env var may change it); the default must match.
    assert OUTPUT_RESERVE_CLIP == CLIP_MAX_NEW_TOKENS


@dataclass
class FakeReq:
    rid: str
    max_new_tokens: int | None = 100
    ignore_eos: bool = False
    output_ids: list = field(default_factory=list)
    origin_input_ids: list = field(default_factory=lambda: list(range(50)))

    def __post_init__(self):
        self.priority = None
        self.sampling_params = SimpleNamespace(
            max_new_tokens=self.max_new_tokens, ignore_eos=self.ignore_eos, custom_params=None
        )
        self.time_stats = SimpleNamespace(wait_queue_entry_time=1.0)


def view(clip=4096):
    return SloView(SloTable(default=SloTarget(ttft_ms=1000.0, tpot_ms=None)), output_clip=clip)


def test_the_servers_view_of_a_waiting_request_is_sglangs_admission_charge():
    # SGLang's PrefillAdder charges a new request its extend plus min(max_new, clip),
    # without the new-token ratio: the planner must not offer what SGLang then refuses.
    queue = [FakeReq("short", 100), FakeReq("long", 9000), FakeReq("unset", None)]
    waiting = view(clip=4096).waiting(queue, lambda req: 20, 0, None)
    assert {w.rid: w.kv_tokens for w in waiting} == {
        "short": 30 + 100,
        "long": 30 + 4096,
        "unset": 30 + 4096,
    }


def test_the_servers_admission_room_leaves_running_requests_their_outputs():
    running = [
        FakeReq("a", 100, output_ids=[0] * 20),  # 80 left x ratio 0.5
        FakeReq("b", 100, ignore_eos=True, output_ids=[0] * 30),  # fixed length: 70 x 1
        FakeReq("c", 9000),  # clipped: 4096 x 0.5
    ]
    assert view(clip=4096).kv_room(running, new_token_ratio=0.5) == 40 + 70 + 2048


def sim_request(output_tokens: int) -> Request:
    return Request(
        rid="s#0",
        session="s",
        turn=0,
        segments=(("s:i0", 300),),
        out_segment=("s:o0", output_tokens),
        prompt_tokens=300,
        output_tokens=output_tokens,
        arrival_ms=0.0,
        deadline_ms=1000.0,
        group=None,
    )


@pytest.mark.parametrize("output_tokens", [1, 250, 9000])
def test_a_simulated_request_reserves_its_whole_output(output_tokens):
    # Fixed length and never retracted: the rule with the clip lifted.
    req = sim_request(output_tokens)
    assert req.kv_need(300) == admission_kv_tokens(300, output_tokens, clip=None)
    assert req.kv_need(300, with_output=False) == 300


def test_the_simulated_planner_sees_what_the_simulated_admission_reserves():
    latency = LatencyModel.load(PROFILE)
    config, _ = cli.make_config("drift", latency, 2000.0, 50.0)
    instance = MuxInstance(
        Simulator(), "gpu0", latency, config, lambda req, now: None, planner=True
    )
    req = sim_request(250)
    instance.waiting.append(req)
    planned = instance._view(req).kv_tokens
    assert instance.admit(req)
    assert instance.cache.private_tokens == planned == 300 + 250

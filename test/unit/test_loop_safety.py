"""The loop's safety nets without a server: the liveness watchdog, test faults,
the planner's view of priorities, and which gangs run block by block."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from drift_sgl.policy.slo import SloTable, SloTarget
from drift_sgl.scheduler.failures import failure_message, is_fatal
from drift_sgl.scheduler.faults import ENV_VAR, InjectedFault, TestFaults
from drift_sgl.scheduler.gang import PrefillGang
from drift_sgl.scheduler.liveness import StallWatchdog
from drift_sgl.scheduler.slo_view import SloView

# --- StallWatchdog ------------------------------------------------------------


def test_a_stall_is_reported_once_after_the_timeout_and_enough_steps():
    dog = StallWatchdog(timeout_s=5.0, min_steps=3)
    assert not dog.observe(0.0, work_waiting=True, progressed=False)
    assert not dog.observe(6.0, work_waiting=True, progressed=False)  # 2 steps only
    assert dog.observe(6.1, work_waiting=True, progressed=False)
    # Reported, then counted afresh.
    assert dog.stalled_steps == 0
    assert not dog.observe(6.2, work_waiting=True, progressed=False)


def test_one_slow_step_is_not_a_stall():
    dog = StallWatchdog(timeout_s=5.0, min_steps=100)
    assert not dog.observe(0.0, True, False)
    assert not dog.observe(100.0, True, False)


@pytest.mark.parametrize(("waiting", "progressed"), [(True, True), (False, False)])
def test_progress_or_no_work_resets_the_count(waiting, progressed):
    dog = StallWatchdog(timeout_s=1.0, min_steps=2)
    dog.observe(0.0, True, False)
    dog.observe(0.5, waiting, progressed)
    assert dog.stalled_steps == 0
    assert not dog.observe(2.0, True, False)  # the clock started again at 2.0


def test_reset_forgets_a_stall_in_progress():
    dog = StallWatchdog(timeout_s=1.0, min_steps=1)
    dog.observe(0.0, True, False)
    dog.reset()
    assert not dog.observe(10.0, True, False)


# --- TestFaults ---------------------------------------------------------------


def test_no_faults_without_the_variable():
    faults = TestFaults.from_env({})
    assert faults == TestFaults() and not faults.held("anything")


def test_hold_admission_matches_a_prefix():
    faults = TestFaults.from_env({ENV_VAR: "hold-admission=held-"})
    assert faults.held("held-123") and not faults.held("other")


def test_raise_in_forward_raises_only_for_a_marked_request():
    faults = TestFaults.from_env({ENV_VAR: "hold-admission=held-,raise-in-forward=bad-"})
    assert faults.held("held-1")
    faults.after_forward(["good-1", "held-2"])
    with pytest.raises(InjectedFault, match="bad-7"):
        faults.after_forward(["good-1", "bad-7"])
    TestFaults().after_forward(["bad-7"])  # off by default


@pytest.mark.parametrize(
    "value", ["hold-admision=x", "hold-admission=", "crash", "raise-in-forward="]
)
def test_unknown_or_empty_faults_are_errors(value):
    with pytest.raises(ValueError, match=ENV_VAR):
        TestFaults.from_env({ENV_VAR: value})


# --- which failures end only their requests -------------------------------------


@pytest.mark.parametrize(
    "err",
    [
        InjectedFault("test fault"),
        IndexError("index out of range in self"),
        ValueError("bad grammar"),
        RuntimeError("shape mismatch"),
    ],
)
def test_ordinary_errors_end_only_their_requests(err):
    assert not is_fatal(err, tp_size=1)


@pytest.mark.parametrize(
    "err",
    [
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("NCCL communicator was aborted"),
        RuntimeError("CUDA error: device-side assert triggered"),
        KeyboardInterrupt(),
    ],
)
def test_errors_that_break_shared_state_are_fatal(err):
    assert is_fatal(err, tp_size=1)


def test_with_tensor_parallelism_every_error_is_fatal():
    # Ranks must end the same requests at the same step; one rank's error cannot be agreed on.
    assert is_fatal(IndexError("x"), tp_size=2)


def test_failure_message_names_the_phase_and_the_error():
    message = failure_message("a decode step", IndexError("index 7 is out of bounds\nmore"))
    assert "a decode step" in message
    assert "IndexError: index 7 is out of bounds" in message and "more" not in message
    assert "other requests were not affected" in message


# --- the planner's view of priorities ------------------------------------------------


@dataclass
class FakeReq:
    rid: str
    priority: int | None = None
    output_ids: list = field(default_factory=list)
    origin_input_ids: list = field(default_factory=lambda: [1, 2, 3])
    sampling_params: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(max_new_tokens=8, custom_params=None)
    )
    time_stats: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(wait_queue_entry_time=0.0)
    )


def waiting_rids(queue, priority_sign):
    view = SloView(SloTable(default=SloTarget(ttft_ms=None, tpot_ms=None)))
    views = view.waiting(queue, lambda req: 0, 0, priority_sign)
    return [w.rid for w in views]


def test_without_priorities_every_fresh_request_is_offered():
    queue = [FakeReq("a", 1), FakeReq("b", 5), FakeReq("c", output_ids=[7])]
    assert waiting_rids(queue, None) == ["a", "b"]  # c was retracted: resumed apart


@pytest.mark.parametrize(("sign", "offered"), [(-1, ["b", "d"]), (1, ["a"])])
def test_only_the_most_urgent_priority_is_offered(sign, offered):
    # SGLang's order: sign -1 (default) serves high values first, +1 low values first.
    queue = [FakeReq("a", 1), FakeReq("b", 5), FakeReq("c", 3), FakeReq("d", 5)]
    assert waiting_rids(queue, sign) == offered


def test_deadlines_still_order_the_offered_requests():
    queue = [FakeReq("late", 5), FakeReq("early", 5)]
    queue[0].time_stats.wait_queue_entry_time = 2.0
    queue[1].time_stats.wait_queue_entry_time = 1.0
    view = SloView(SloTable(default=SloTarget(ttft_ms=100.0, tpot_ms=None)))
    views = view.waiting(queue, lambda req: 0, 0, -1)
    assert [w.rid for w in views] == ["early", "late"]
    assert all(math.isfinite(w.deadline_ms) for w in views)


# --- PrefillGang ------------------------------------------------------------------


def gang(layer_split: bool, done: int = 0) -> PrefillGang:
    batch = SimpleNamespace(split_index=done, extend_num_tokens=10)
    return PrefillGang(batch=batch, num_layers=6, layer_split=layer_split)


def test_a_layer_split_gang_runs_the_blocks_asked_for():
    assert gang(True).next_block(2) == 2
    assert gang(True, done=5).next_block(2) == 1


def test_a_whole_gang_runs_every_layer_at_once():
    assert gang(False).next_block(1) == 6

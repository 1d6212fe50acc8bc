"""The multiplexing step (drift_sgl.mux) on a fake engine, and the decision log.

The fake engine records every call ``mux_step`` makes; the policies are
scripted. The simulator's drift and the server run this same step; the
decision log shows that they also decide alike (here on simulated states,
in test/e2e/test_slo.py on a real server's).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drift_sgl.latency.model import LatencyModel
from drift_sgl.mux import GangSlots, MuxEngine, mux_step
from drift_sgl.mux.decision_log import DecisionLog, read_decision_log, replay
from drift_sgl.policy import MuxDecision, MuxState, SloPlanner
from drift_sgl.sim import cli
from drift_sgl.sim.driver import simulate
from drift_sgl.sim.policies import mux as sim_mux
from drift_sgl.sim.trace import Turn

ROOT = Path(__file__).resolve().parents[2]
H100 = ROOT / "bench" / "profiles" / "llama-3.1-8b-h100.estimate.json"
IDLE = MuxState(
    decode_batch_size=0, prefill_new_tokens=0, prefill_layers_left=0, num_layers=4, splits=()
)


@dataclass
class ScriptedPolicy:
    """Returns the decisions it is given, in order; re-plans to ``replanned``."""

    decisions: list[MuxDecision]
    chooses_requests: bool = True
    replanned: MuxDecision | None = None

    def decide(self, state: MuxState) -> MuxDecision:
        return self.decisions.pop(0)

    def replan(self, decision: MuxDecision, formed: MuxState) -> MuxDecision:
        return self.replanned or decision


@dataclass
class FakeEngine:
    """Gangs are names; ``complete`` names the gangs whose last block has finished."""

    formed: list[str | None] = field(default_factory=list)
    complete: set[str] = field(default_factory=set)
    calls: list[tuple] = field(default_factory=list)
    gangs: GangSlots[str] = field(default_factory=GangSlots)

    def gang_complete(self, gang: str) -> bool:
        return gang in self.complete

    def merge_gang(self, gang: str) -> None:
        self.calls.append(("merge", gang))

    def begin_step(self) -> None:
        self.calls.append(("begin",))

    def admit_own(self) -> str | None:
        gang = self.formed.pop(0)
        self.calls.append(("admit_own", gang))
        return gang

    def decide(self, policy) -> MuxDecision:
        decision = policy.decide(IDLE)
        self.calls.append(("decide", decision))
        return decision

    def shed(self, rids: tuple[str, ...]) -> None:
        self.calls.append(("shed", rids))

    def admit_gang(self, decision: MuxDecision) -> str | None:
        gang = self.formed.pop(0)
        self.calls.append(("admit", decision.admit, gang))
        return gang

    def replan(self, policy, decision: MuxDecision) -> MuxDecision:
        decision = policy.replan(decision, IDLE)
        self.calls.append(("replan", decision))
        return decision

    def launch(self, decision: MuxDecision) -> tuple:
        self.calls.append(("launch", decision, self.gangs.current))
        return ("launched", decision)


def names(engine: FakeEngine) -> list[str]:
    return [call[0] for call in engine.calls]


def test_one_step_merges_first_then_decides_sheds_admits_replans_and_launches():
    first = MuxDecision(split_index=1, prefill_layers=2, admit=("a",), shed=("late",))
    better = MuxDecision(split_index=2, prefill_layers=4, admit=("a",), shed=("late",))
    engine = FakeEngine(formed=["g1"], complete={"g0"})
    engine.gangs.start("g0")
    launched = mux_step(ScriptedPolicy([first], replanned=better), engine)
    assert names(engine) == ["merge", "begin", "decide", "shed", "admit", "replan", "launch"]
    assert engine.calls[0] == ("merge", "g0")
    assert engine.calls[3] == ("shed", ("late",))
    # The re-planned decision is launched, with the formed gang running.
    assert launched == ("launched", better)
    assert engine.calls[-1] == ("launch", better, "g1")


def test_no_replan_when_admission_formed_no_gang():
    decision = MuxDecision(split_index=1, prefill_layers=2, admit=("a",))
    engine = FakeEngine(formed=[None])
    mux_step(ScriptedPolicy([decision], replanned=MuxDecision(0, 9)), engine)
    assert names(engine) == ["begin", "decide", "shed", "admit", "launch"]
    assert engine.calls[-1] == ("launch", decision, None)


def test_admissions_wait_while_a_gang_runs_unless_they_pre_empt_it():
    engine = FakeEngine(formed=["short"])
    engine.gangs.start("long")
    wait = MuxDecision(split_index=1, prefill_layers=1, admit=("x",))
    mux_step(ScriptedPolicy([wait]), engine)
    assert "admit" not in names(engine) and engine.gangs.current == "long"

    pre_empt = MuxDecision(split_index=1, prefill_layers=1, admit=("s",), preempt=True)
    mux_step(ScriptedPolicy([pre_empt]), engine)
    assert (engine.gangs.current, engine.gangs.paused) == ("short", "long")

    # The pre-empting gang completes: it merges and the long one resumes, same step.
    engine.calls.clear()
    engine.complete.add("short")
    mux_step(ScriptedPolicy([MuxDecision(split_index=1, prefill_layers=1)]), engine)
    assert engine.calls[0] == ("merge", "short")
    assert (engine.gangs.current, engine.gangs.paused) == ("long", None)
    assert engine.calls[-1][2] == "long"


def test_a_policy_that_chooses_no_requests_lets_the_engine_admit():
    rule = ScriptedPolicy([MuxDecision(0, 4), MuxDecision(0, 4)], chooses_requests=False)
    engine = FakeEngine(formed=["own"])
    mux_step(rule, engine)
    assert names(engine) == ["begin", "admit_own", "decide", "shed", "launch"]
    assert engine.gangs.current == "own"
    # With a gang in flight, the engine's admission is not asked again.
    engine.calls.clear()
    mux_step(rule, engine)
    assert names(engine) == ["begin", "decide", "shed", "launch"]


def test_gang_slots_do_not_nest_pre_emption():
    gangs: GangSlots[str] = GangSlots()
    assert not gangs and list(gangs) == []
    gangs.start("a")
    gangs.start("b")
    assert list(gangs) == ["b", "a"]
    with pytest.raises(RuntimeError, match="nest"):
        gangs.start("c")
    assert gangs.finish() == "b" and gangs.current == "a" and gangs.paused is None
    assert gangs.finish() == "a" and not gangs
    with pytest.raises(RuntimeError):
        gangs.finish()


# --- the decision log: the simulator's states, replayed ------------------------


def conversation(sessions=10, turns=3):
    return [
        Turn(f"s{i}", k, i * 0.05 if k == 0 else 0.3, 900 + 131 * ((i + k) % 7), 30 + i)
        for i in range(sessions)
        for k in range(turns)
    ]


def test_the_simulated_drifts_decisions_replay_from_a_decision_log(tmp_path, monkeypatch):
    """Every state the simulator's engine built goes to a log, with its decision;
    replaying the log re-decides all of them alike (states with waiting requests,
    infinite deadlines, admissions, re-plans and pre-emptions round-trip)."""
    latency = LatencyModel.load(H100)
    path = tmp_path / "decisions.jsonl"
    out = path.open("w")

    engine = sim_mux.MuxInstance
    decide, replan = engine.decide, engine.replan

    def logged_decide(self, policy):
        state = self._state()  # what decide reads (it changes previous_split)
        decision = decide(self, policy)
        log.record("decide", state, decision)
        return decision

    def logged_replan(self, policy, first):
        state = self._state(with_waiting=False)
        decision = replan(self, policy, first)
        log.record("replan", state, decision)
        return decision

    log = DecisionLog(out, SloPlanner(latency, overload="serve"), latency)
    monkeypatch.setattr(engine, "decide", logged_decide)
    monkeypatch.setattr(engine, "replan", logged_replan)
    config, _ = cli.make_config("drift", latency, 300.0, 30.0)
    simulate(conversation(), config, latency)
    log.close()

    policy, calls = read_decision_log(str(path))
    calls = list(calls)
    assert isinstance(policy, SloPlanner) and policy.overload == "serve"
    kinds = {c.call for c in calls}
    assert kinds == {"decide", "replan"}
    assert any(c.decision.admit for c in calls) and any(c.state.waiting for c in calls)
    count, differ = replay(str(path))
    assert count == len(calls) and differ == []


def test_a_replay_reports_what_a_changed_planner_decides_differently(tmp_path):
    latency = LatencyModel.load(H100)
    path = tmp_path / "decisions.jsonl"
    planner = SloPlanner(latency)
    with path.open("w") as out:
        log = DecisionLog(out, planner, latency)
        splits = sim_mux.drift_splits(latency.device)
        state = MuxState(
            decode_batch_size=8,
            prefill_new_tokens=2000,
            prefill_layers_left=32,
            num_layers=32,
            splits=splits,
            decode_kv_tokens=8000,
            decode_tpot_ms=30.0,
        )
        log.record("decide", state, planner.decide(state))
        log.record("decide", state, MuxDecision(split_index=0, prefill_layers=1))
        out.write('{"call": "decide", "sta')  # a line cut short by a stopping server
    count, differ = replay(str(path))
    assert count == 2 and [d.index for d in differ] == [2]
    header = json.loads(path.read_text().splitlines()[0])
    assert header["policy"] == "SloPlanner" and "latency" not in header["params"]


def engine_members() -> set[str]:
    """What ``MuxEngine`` asks: its methods and its ``gangs``."""
    methods = {name for name, value in vars(MuxEngine).items() if callable(value)}
    return {name for name in methods if not name.startswith("_")} | {"gangs"}


def test_the_server_and_the_simulator_are_whole_engines():
    """Read from the source, without importing SGLang (a minute on this machine):
    ``DriftScheduler`` defines every member ``mux_step`` uses, and so does the
    simulator's ``MuxInstance`` (``gangs`` is set in its ``__init__``)."""
    wanted = engine_members()
    assert {"launch", "admit_gang", "merge_gang", "gangs"} <= wanted
    source = (ROOT / "python/drift_sgl/scheduler/drift_scheduler.py").read_text()
    server = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "DriftScheduler"
    )
    defined = {node.name for node in server.body if isinstance(node, ast.FunctionDef)}
    assert wanted <= defined, wanted - defined
    simulated = set(dir(sim_mux.MuxInstance)) | {"gangs"}
    assert wanted <= simulated, wanted - simulated
    assert "self.gangs" in (ROOT / "python/drift_sgl/sim/policies/mux.py").read_text()

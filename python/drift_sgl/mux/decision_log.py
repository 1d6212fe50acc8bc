"""Every policy call of a server, written down to be replayed (``--drift-decision-log``).

The first JSON line names the policy and holds the latency model it decides
with; each further line is one call on a state with work (idle spins are left
out): ``{"call": "decide" | "replan", "state":
..., "decision": ...}``, with the ``MuxState`` the server built and the
``MuxDecision`` it got. ``replay`` asks the same policy again over the
recorded states, as the simulator's engine asks it (``MuxInstance.decide`` and
``replan`` are the policy on the state, nothing more), so a log shows whether
the server's loop and the simulator decide alike on the same states, and what
a changed planner would decide on a real server's states
(``python -m drift_sgl.mux.decision_log LOG``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from drift_sgl.latency.model import LatencyModel
from drift_sgl.partition.base import SmSplit
from drift_sgl.policy import (
    LayerBudgetRule,
    MuxDecision,
    MuxPolicy,
    MuxState,
    SloPlanner,
    WaitingRequest,
)

#: The policies a log can name, by class name.
_POLICIES: dict[str, type] = {"SloPlanner": SloPlanner, "LayerBudgetRule": LayerBudgetRule}


def _policy_params(policy: MuxPolicy) -> dict[str, Any]:
    """The policy's settings (dataclass fields), without its latency model and caches."""
    return {
        f.name: getattr(policy, f.name)
        for f in dataclasses.fields(policy)
        if f.init and f.name != "latency"
    }


class DecisionLog:
    """Writes one JSON line per policy call (the header first)."""

    def __init__(self, out: TextIO, policy: MuxPolicy, latency: LatencyModel | None) -> None:
        self._out = out
        header = {
            "policy": type(policy).__name__,
            "params": _policy_params(policy),
            "latency_model": None if latency is None else latency.to_json(),
        }
        self._write(header)

    def record(self, call: str, state: MuxState, decision: MuxDecision) -> None:
        """One call; a state with nothing to run or admit is left out (an idle
        server's loop asks on every spin)."""
        if not (state.has_decode or state.has_prefill or state.waiting):
            return
        self._write(
            {
                "call": call,
                "state": dataclasses.asdict(state),
                "decision": dataclasses.asdict(decision),
            }
        )

    def close(self) -> None:
        self._out.close()

    def _write(self, row: dict[str, Any]) -> None:
        self._out.write(json.dumps(row) + "\n")
        self._out.flush()


@dataclass(frozen=True)
class LoggedCall:
    call: str
    state: MuxState
    decision: MuxDecision


def _state(row: dict[str, Any]) -> MuxState:
    row = dict(row)
    row["splits"] = tuple(SmSplit(**s) for s in row["splits"])
    row["waiting"] = tuple(WaitingRequest(**w) for w in row["waiting"])
    return MuxState(**row)


def _decision(row: dict[str, Any]) -> MuxDecision:
    return MuxDecision(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()})


def read_decision_log(path: str) -> tuple[MuxPolicy, Iterator[LoggedCall]]:
    """The policy the log names (rebuilt with its latency model) and its calls.

    A line cut short by a server that stopped mid-write ends the calls.
    """
    with open(path, encoding="utf-8") as lines:
        header = json.loads(next(lines))
    cls = _POLICIES[header["policy"]]
    params = dict(header["params"])
    if header["latency_model"] is not None:
        params["latency"] = LatencyModel.from_json(header["latency_model"])
    policy = cls(**params)

    def calls() -> Iterator[LoggedCall]:
        with open(path, encoding="utf-8") as lines:
            next(lines)  # the header
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return
                yield LoggedCall(row["call"], _state(row["state"]), _decision(row["decision"]))

    return policy, calls()


@dataclass(frozen=True)
class Disagreement:
    index: int
    call: str
    logged: MuxDecision
    replayed: MuxDecision


def replay(path: str) -> tuple[int, list[Disagreement]]:
    """Re-decide every logged call; returns the number of calls and those that differ.

    A ``replan`` re-plans the decision of the ``decide`` logged before it (the
    server re-plans the decision it got, in the same step).
    """
    policy, calls = read_decision_log(path)
    differ: list[Disagreement] = []
    first: MuxDecision | None = None
    count = 0
    for count, logged in enumerate(calls, start=1):
        if logged.call == "decide":
            again = policy.decide(logged.state)
            first = logged.decision
        elif first is None:
            raise ValueError(f"{path}: call {count} re-plans before any decide")
        else:
            again = policy.replan(first, logged.state)
        if again != logged.decision:
            differ.append(Disagreement(count, logged.call, logged.decision, again))
    return count, differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drift_sgl.mux.decision_log",
        description="Re-decide every call of a --drift-decision-log file with the policy "
        "and latency model it names; print a JSON summary (exit 1 when any decision differs).",
    )
    parser.add_argument("log", help="a file written by --drift-decision-log")
    args = parser.parse_args(argv)
    count, differ = replay(args.log)
    print(
        json.dumps(
            {
                "calls": count,
                "differ": len(differ),
                "first_differences": [
                    {
                        "call_index": d.index,
                        "call": d.call,
                        "logged": dataclasses.asdict(d.logged),
                        "replayed": dataclasses.asdict(d.replayed),
                    }
                    for d in differ[:5]
                ],
            }
        )
    )
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())

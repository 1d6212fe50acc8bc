"""Generate a synthetic multi-turn trace (format: python/drift_sgl/sim/trace.py).

    python bench/traces/generate.py conversation|agent|tiny --sessions N --seed S --out FILE
        [--summary]

Two workloads, both deterministic for a seed (stdlib ``random`` only, so the
committed traces regenerate byte for byte):

- ``conversation``: chat sessions, sized after published multi-turn chat
  statistics (ShareGPT, Mooncake's conversation trace): a few short shared
  system prompts, a handful of turns, user messages of ~150 tokens, answers of
  ~250 tokens, seconds of think time between turns.
- ``agent``: tool-using agent runs, after Mooncake's tool&agent trace: long
  shared tool definitions, many turns whose inputs are tool outputs of widely
  varied length, short tool-call outputs, a longer final answer, and
  sub-second to few-second tool execution between turns.
- ``tiny``: the agent's shapes shrunk for the tiny CPU test model (prompts
  of tens of tokens, 2-6 turns, a 1,500-token context), for benchmarks and
  tests that drive real servers on a CPU.

bench/traces/README.md explains every distribution and why.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from drift_sgl.sim.trace import Turn, describe, write_trace
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
    from drift_sgl.sim.trace import Turn, describe, write_trace

#: A turn's prompt plus its output stays below this, so that the traces fit
#: a model with a 32K context (Llama-3.1-8B-class models have 32K or more).
MAX_CONTEXT_TOKENS = 32_000

#: Session arrivals are spread over this many seconds. The simulator replaces
#: them (``with_session_rate``), so this only makes the raw trace replayable.
ARRIVAL_SPAN_S = 300.0

#: (id, tokens, weight). None: no system prompt (API users who send none).
CHAT_SYSTEM_PROMPTS: tuple[tuple[str | None, int, float], ...] = (
    ("chat-sys-0", 120, 0.35),
    ("chat-sys-1", 380, 0.25),
    ("chat-sys-2", 760, 0.20),
    ("chat-sys-3", 1450, 0.10),
    (None, 0, 0.10),
)

#: Tool definitions and instructions of three agents (id, tokens, weight).
AGENT_SYSTEM_PROMPTS: tuple[tuple[str | None, int, float], ...] = (
    ("agent-tools-0", 2300, 0.5),
    ("agent-tools-1", 3900, 0.3),
    ("agent-tools-2", 5700, 0.2),
)


def lognormal(rng: random.Random, median: float, sigma: float, low: float, high: float) -> float:
    """A lognormal draw with the given median, clipped to [low, high]."""
    return min(high, max(low, rng.lognormvariate(math.log(median), sigma)))


def tokens(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return round(lognormal(rng, median, sigma, low, high))


def seconds(rng: random.Random, median: float, sigma: float, low: float, high: float) -> float:
    # Milliseconds are plenty, and short numbers keep the file readable.
    return round(lognormal(rng, median, sigma, low, high), 3)


def turn_count(rng: random.Random, minimum: int, maximum: int, go_on: float) -> int:
    """``minimum`` plus a geometric number of further turns, capped at ``maximum``.

    Each turn is followed by another with probability ``go_on``: sessions
    mostly end early, with a long tail, as measured session lengths do.
    """
    count = minimum
    while count < maximum and rng.random() < go_on:
        count += 1
    return count


def pick_prefix(
    rng: random.Random, prompts: Sequence[tuple[str | None, int, float]]
) -> tuple[str | None, int]:
    prefix_id, prefix_tokens, _ = rng.choices(prompts, weights=[p[2] for p in prompts])[0]
    return prefix_id, prefix_tokens


def build_session(
    session: str,
    arrival_s: float,
    prefix: tuple[str | None, int],
    planned: Sequence[tuple[int, int, float]],
    max_context: int = MAX_CONTEXT_TOKENS,
) -> list[Turn]:
    """Turns from planned (new input, output, think time), cut at the context limit.

    All of a session is drawn before it is cut, so where one session is cut
    does not change the random draws of the next.
    """
    prefix_id, prefix_tokens = prefix
    context = prefix_tokens
    turns: list[Turn] = []
    for k, (new_input, output, think_s) in enumerate(planned):
        if context + new_input + output >= max_context:
            break  # as a client does whose conversation no longer fits
        turns.append(
            Turn(
                session=session,
                turn=k,
                delay_s=arrival_s if k == 0 else think_s,
                new_input_tokens=new_input,
                output_tokens=output,
                shared_prefix_id=prefix_id,
                shared_prefix_tokens=prefix_tokens,
            )
        )
        context += new_input + output
    assert turns, f"{session}: turn 0 alone exceeds {max_context} tokens"
    return turns


def conversation_trace(n_sessions: int, seed: int) -> list[Turn]:
    rng = random.Random(seed)
    trace: list[Turn] = []
    clock = 0.0
    for i in range(n_sessions):
        clock += rng.expovariate(n_sessions / ARRIVAL_SPAN_S)
        prefix = pick_prefix(rng, CHAT_SYSTEM_PROMPTS)
        n_turns = turn_count(rng, 1, 12, go_on=0.8)  # mean ~4.7
        planned = [
            (
                tokens(rng, 150, 1.0, 8, 4000),  # user message
                tokens(rng, 250, 0.7, 16, 1500),  # answer
                seconds(rng, 8.0, 0.6, 3.0, 30.0),  # reading and typing
            )
            for _ in range(n_turns)
        ]
        trace += build_session(f"conv-{i:04d}", round(clock, 3), prefix, planned)
    return trace


def agent_trace(n_sessions: int, seed: int) -> list[Turn]:
    rng = random.Random(seed)
    trace: list[Turn] = []
    clock = 0.0
    for i in range(n_sessions):
        clock += rng.expovariate(n_sessions / ARRIVAL_SPAN_S)
        prefix = pick_prefix(rng, AGENT_SYSTEM_PROMPTS)
        n_turns = turn_count(rng, 4, 30, go_on=6 / 7)  # mean ~9.9
        planned = []
        for k in range(n_turns):
            if k == 0:
                new_input = tokens(rng, 200, 0.8, 16, 2000)  # the user's task
            else:
                # A tool's output: a status line, a file, a search result page.
                new_input = tokens(rng, 600, 1.3, 20, 12000)
            if k == n_turns - 1:
                output = tokens(rng, 400, 0.6, 32, 2000)  # the final answer
            else:
                output = tokens(rng, 80, 0.6, 8, 600)  # a tool call
            planned.append((new_input, output, seconds(rng, 0.4, 1.0, 0.05, 3.0)))
        trace += build_session(f"agent-{i:04d}", round(clock, 3), prefix, planned)
    return trace


#: The tiny test model's context is 2,048 tokens; the chat template adds a few
#: tokens per message, and replayed text can tokenize a little longer.
TINY_MAX_CONTEXT_TOKENS = 1_500
TINY_ARRIVAL_SPAN_S = 30.0
TINY_SYSTEM_PROMPTS: tuple[tuple[str | None, int, float], ...] = (
    ("tiny-sys-0", 48, 0.5),
    ("tiny-sys-1", 120, 0.3),
    (None, 0, 0.2),
)


def tiny_trace(n_sessions: int, seed: int) -> list[Turn]:
    """A short agent-like workload for the tiny CPU model (bench/configs/cpu-tiny.yaml).

    The shapes of ``agent`` (shared prefixes, growing history, short outputs,
    sub-second think times), shrunk so that a CPU serves it in seconds.
    """
    rng = random.Random(seed)
    trace: list[Turn] = []
    clock = 0.0
    for i in range(n_sessions):
        clock += rng.expovariate(n_sessions / TINY_ARRIVAL_SPAN_S)
        prefix = pick_prefix(rng, TINY_SYSTEM_PROMPTS)
        n_turns = turn_count(rng, 2, 6, go_on=0.6)  # mean ~3.3
        planned = [
            (
                tokens(rng, 40, 0.8, 4, 400),  # a message or a tool output
                tokens(rng, 16, 0.5, 4, 64),  # a short answer or tool call
                seconds(rng, 0.3, 0.8, 0.05, 2.0),
            )
            for _ in range(n_turns)
        ]
        trace += build_session(
            f"tiny-{i:04d}", round(clock, 3), prefix, planned, TINY_MAX_CONTEXT_TOKENS
        )
    return trace


GENERATORS = {"conversation": conversation_trace, "agent": agent_trace, "tiny": tiny_trace}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="generate.py",
        description="Write a synthetic multi-turn trace (JSONL, one turn per line).",
    )
    parser.add_argument("kind", choices=sorted(GENERATORS), help="which workload")
    parser.add_argument("--sessions", type=positive_int, required=True, help="number of sessions")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="trace file to write")
    parser.add_argument(
        "--summary", action="store_true", help="print the trace's describe() summary as JSON"
    )
    args = parser.parse_args(argv)
    if args.out.is_dir():
        parser.error(f"--out: {args.out} is a directory")
    if not args.out.parent.is_dir():
        parser.error(f"--out: directory {args.out.parent} does not exist")

    turns = GENERATORS[args.kind](args.sessions, args.seed)
    try:
        write_trace(args.out, turns)
    except OSError as err:
        parser.exit(1, f"generate.py: cannot write {args.out}: {err}\n")
    if args.summary:
        print(json.dumps(describe(turns), indent=2))


if __name__ == "__main__":
    main()

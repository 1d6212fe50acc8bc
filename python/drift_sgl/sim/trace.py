"""Multi-turn request traces: one JSON object per line, one line per turn.

Each line is::

    {"session": "conv-0007", "turn": 2, "delay_s": 8.4,
     "new_input_tokens": 150, "output_tokens": 250,
     "shared_prefix": {"id": "chat-sys-1", "tokens": 420}}

- ``session``: the conversation (or agent run) the turn belongs to.
- ``turn``: 0, 1, 2, ... within the session, contiguous, no duplicates.
- ``delay_s``: for turn 0, the session's arrival offset from the trace start;
  for a later turn, the think time (user typing, tool running) between the
  previous turn's last output token and this turn's arrival. Later turns are
  timed from the previous answer, not from the trace start, because a client
  cannot send turn k before it has seen turn k-1's answer: when the server is
  slow, the whole session shifts, as it does in reality.
- ``new_input_tokens`` (>= 1): what this turn adds to the prompt (the user's
  message, a tool's output).
- ``output_tokens`` (>= 1): how many tokens the model generates.
- ``shared_prefix`` (optional, absent or null): a prefix shared across
  sessions (a system prompt, tool definitions), ``{"id": str, "tokens": int}``.
  Every turn of a session names the same one.

Turn k's prompt is the shared prefix, then every earlier turn's input and
output, then its own new input, so all of it but the new input could come
from a prefix cache. Tokens are counts only: the simulator needs lengths, and
a real-server replay makes up token ids of these lengths.

Lines may come in any order and blank lines are skipped; ``read_trace``
returns the turns grouped by session (in order of first appearance) and by
turn. A bad trace is rejected whole with a ``TraceError`` naming the line.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("session", "turn", "delay_s", "new_input_tokens", "output_tokens")
OPTIONAL_KEYS = ("shared_prefix",)
PREFIX_KEYS = ("id", "tokens")


class TraceError(ValueError):
    """A trace does not follow the format; the message names the file and line."""


@dataclass(frozen=True)
class Turn:
    """One request of a session; see the module docstring for the fields."""

    session: str
    turn: int
    delay_s: float
    new_input_tokens: int
    output_tokens: int
    shared_prefix_id: str | None = None
    shared_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        # Checked here too (not only when reading) so that turns built in code,
        # by the generators or with_session_rate, cannot be invalid either.
        problem = _problem(self)
        if problem:
            raise TraceError(problem)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "session": self.session,
            "turn": self.turn,
            "delay_s": self.delay_s,
            "new_input_tokens": self.new_input_tokens,
            "output_tokens": self.output_tokens,
        }
        if self.shared_prefix_id is not None:
            row["shared_prefix"] = {
                "id": self.shared_prefix_id,
                "tokens": self.shared_prefix_tokens,
            }
        return row

    @classmethod
    def from_json(cls, row: Any) -> Turn:
        """Build a turn from a decoded JSON object; raises ``TraceError`` (no line number)."""
        if not isinstance(row, dict):
            raise TraceError(f"expected a JSON object, got {_json_type(row)}")
        unknown = [key for key in row if key not in REQUIRED_KEYS + OPTIONAL_KEYS]
        if unknown:
            raise TraceError(f"unknown key(s) {', '.join(map(repr, unknown))}")
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise TraceError(f"missing key(s) {', '.join(missing)}")
        if not isinstance(row["session"], str):
            raise TraceError(f"session must be a string, got {row['session']!r}")
        # type(...) is int, not isinstance: JSON true/false are bools, which
        # Python would otherwise accept as 1/0.
        for key in ("turn", "new_input_tokens", "output_tokens"):
            if type(row[key]) is not int:
                raise TraceError(f"{key} must be an integer, got {row[key]!r}")
        if type(row["delay_s"]) not in (int, float):
            raise TraceError(f"delay_s must be a number, got {row['delay_s']!r}")
        prefix_id, prefix_tokens = _shared_prefix(row.get("shared_prefix"))
        try:
            delay_s = float(row["delay_s"])
        except OverflowError:  # an integer too large for a float
            raise TraceError(
                f"delay_s must be a finite number >= 0, got {row['delay_s']}"
            ) from None
        return cls(
            session=row["session"],
            turn=row["turn"],
            delay_s=delay_s,
            new_input_tokens=row["new_input_tokens"],
            output_tokens=row["output_tokens"],
            shared_prefix_id=prefix_id,
            shared_prefix_tokens=prefix_tokens,
        )


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _shared_prefix(value: Any) -> tuple[str | None, int]:
    if value is None:
        return None, 0
    if not isinstance(value, dict):
        raise TraceError(
            f'shared_prefix must be null or {{"id": str, "tokens": int}}, got {value!r}'
        )
    unknown = [key for key in value if key not in PREFIX_KEYS]
    if unknown:
        raise TraceError(f"unknown key(s) in shared_prefix: {', '.join(map(repr, unknown))}")
    missing = [key for key in PREFIX_KEYS if key not in value]
    if missing:
        raise TraceError(f"shared_prefix is missing key(s) {', '.join(missing)}")
    if not isinstance(value["id"], str):
        raise TraceError(f"shared_prefix id must be a string, got {value['id']!r}")
    if type(value["tokens"]) is not int:
        raise TraceError(f"shared_prefix tokens must be an integer, got {value['tokens']!r}")
    return value["id"], value["tokens"]


def _problem(t: Turn) -> str | None:
    if not t.session:
        return "session must be a non-empty string"
    if t.turn < 0:
        return f"turn must be an integer >= 0, got {t.turn}"
    if not (math.isfinite(t.delay_s) and t.delay_s >= 0):
        return f"delay_s must be a finite number >= 0, got {t.delay_s}"
    if t.new_input_tokens < 1:
        return f"new_input_tokens must be an integer >= 1, got {t.new_input_tokens}"
    if t.output_tokens < 1:
        return f"output_tokens must be an integer >= 1, got {t.output_tokens}"
    if t.shared_prefix_id is None:
        if t.shared_prefix_tokens != 0:
            return "shared_prefix_tokens must be 0 without a shared prefix id"
    else:
        if not t.shared_prefix_id:
            return "shared_prefix id must be a non-empty string"
        if t.shared_prefix_tokens < 1:
            return f"shared_prefix tokens must be an integer >= 1, got {t.shared_prefix_tokens}"
    return None


def parse_trace(lines: Iterable[str], source: str = "<trace>") -> list[Turn]:
    """Parse JSONL text (see ``read_trace``); ``source`` names it in errors."""
    parsed: list[tuple[int, Turn]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed.append((number, Turn.from_json(json.loads(line))))
        except json.JSONDecodeError as err:
            raise TraceError(f"{source}:{number}: not valid JSON ({err.msg})") from None
        except TraceError as err:
            raise TraceError(f"{source}:{number}: {err}") from None
    if not parsed:
        raise TraceError(f"{source}: empty trace (no turns)")

    # Session checks need all of a session's lines, which may be anywhere.
    by_session: dict[str, list[tuple[int, Turn]]] = {}
    for number, turn in parsed:
        by_session.setdefault(turn.session, []).append((number, turn))
    ordered: list[Turn] = []
    for name, rows in by_session.items():
        first_number, first = rows[0]
        for number, turn in rows[1:]:
            if (turn.shared_prefix_id, turn.shared_prefix_tokens) != (
                first.shared_prefix_id,
                first.shared_prefix_tokens,
            ):
                raise TraceError(
                    f"{source}:{number}: session {name!r} turn {turn.turn} has shared prefix "
                    f"{_prefix_text(turn)} but line {first_number} has {_prefix_text(first)}"
                )
        rows.sort(key=lambda row: row[1].turn)
        for index, (number, turn) in enumerate(rows):
            if turn.turn < index:  # sorted, so a repeat shows up as falling behind
                raise TraceError(
                    f"{source}:{number}: session {name!r} has turn {turn.turn} twice "
                    f"(also line {rows[index - 1][0]})"
                )
            if turn.turn > index:
                raise TraceError(
                    f"{source}:{number}: session {name!r} has turn {turn.turn} but no turn {index}"
                    " (turns must be numbered 0, 1, 2, ...)"
                )
        ordered.extend(turn for _, turn in rows)
    return ordered


def _prefix_text(t: Turn) -> str:
    if t.shared_prefix_id is None:
        return "none"
    return f"{t.shared_prefix_id!r} ({t.shared_prefix_tokens} tokens)"


def read_trace(path: str | Path) -> list[Turn]:
    """Read and validate a trace file.

    Returns the turns sorted by session (first appearance in the file) and
    turn. Raises ``TraceError`` (naming the file and line) or ``OSError``.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_trace(handle, source=str(path))
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a UTF-8 text file") from None


def write_trace(path: str | Path, turns: Iterable[Turn]) -> None:
    """Write turns as JSONL, in the given order (keys in the documented order)."""
    with open(path, "w", encoding="utf-8") as out:
        for turn in turns:
            out.write(json.dumps(turn.to_json()) + "\n")


def sessions(turns: Iterable[Turn]) -> list[tuple[Turn, ...]]:
    """Turns grouped by session, sessions in first-appearance order, each sorted by turn."""
    grouped: dict[str, list[Turn]] = {}
    for turn in turns:
        grouped.setdefault(turn.session, []).append(turn)
    return [tuple(sorted(group, key=lambda t: t.turn)) for group in grouped.values()]


def with_session_rate(turns: Sequence[Turn], rate: float, seed: int = 0) -> list[Turn]:
    """Replace each session's arrival (turn 0's ``delay_s``) by a Poisson process.

    Sessions arrive with exponential gaps of mean ``1 / rate`` seconds, in
    first-appearance order; later turns keep their think times, so the offered
    load scales with ``rate`` while each session keeps its shape. The same
    seed gives the same arrivals. Returns the turns in the given order.
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number > 0 (sessions per second), got {rate}")
    rng = random.Random(seed)
    arrivals: dict[str, float] = {}
    clock = 0.0
    for turn in turns:
        if turn.session not in arrivals:
            clock += rng.expovariate(rate)
            arrivals[turn.session] = clock
    return [
        replace(turn, delay_s=arrivals[turn.session]) if turn.turn == 0 else turn for turn in turns
    ]


def tile_sessions(turns: Sequence[Turn], count: int) -> list[Turn]:
    """The trace's sessions cycled until there are ``count`` (at least all of them once).

    Copy c of session s is named ``s~c``; shared prefixes keep their ids (a
    system prompt is the same for every user).
    """
    groups = sessions(turns)
    out = [t for group in groups for t in group]
    for i in range(len(groups), count):
        copy, group = divmod(i, len(groups))
        out.extend(replace(t, session=f"{t.session}~{copy}") for t in groups[group])
    return out


def at_session_rate(turns: Sequence[Turn], rate: float, seed: int, window_s: float) -> list[Turn]:
    """The workload of a run at ``rate`` sessions per second.

    Sessions are cycled (``tile_sessions``) until their Poisson arrivals
    (``with_session_rate``) span about ``window_s`` seconds, so that a higher
    rate means denser load over the same time, not the same few sessions in a
    burst. The simulator and the real-server replay build their runs with this,
    so that the same (trace, rate, seed, window) is the same workload in both.
    """
    count = max(len(sessions(turns)), math.ceil(rate * window_s))
    return with_session_rate(tile_sessions(turns, count), rate, seed)


def trace_window_s(turns: Sequence[Turn]) -> float:
    """Seconds between the trace's first and last session arrival."""
    starts = [s[0].delay_s for s in sessions(turns)]
    return max(starts) - min(starts)


def trace_session_rate(turns: Sequence[Turn]) -> float:
    """Sessions per second of the trace's own arrivals (1.0 if they all start at once)."""
    span = trace_window_s(turns)
    count = len(sessions(turns))
    return (count - 1) / span if span > 0 and count > 1 else 1.0


def first_sessions(turns: Sequence[Turn], count: int) -> list[Turn]:
    """The turns of the first ``count`` sessions (in trace order)."""
    keep = {s[0].session for s in sessions(turns)[:count]}
    return [t for t in turns if t.session in keep]


def prompt_tokens(session_turns: Sequence[Turn], k: int) -> int:
    """Prompt length of turn ``k`` of one session (``session_turns`` sorted by turn).

    The shared prefix, every earlier turn's input and output, and turn k's own
    new input.
    """
    if not 0 <= k < len(session_turns):
        raise ValueError(f"turn {k} is not in a session of {len(session_turns)} turn(s)")
    if session_turns[k].turn != k:
        raise ValueError(f"session_turns[{k}] is turn {session_turns[k].turn}; sort by turn")
    history = sum(t.new_input_tokens + t.output_tokens for t in session_turns[:k])
    return session_turns[k].shared_prefix_tokens + history + session_turns[k].new_input_tokens


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks, as numpy's default does.
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _stats(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": round(sum(ordered) / len(ordered), digits),
        "p50": round(_percentile(ordered, 50), digits),
        "p99": round(_percentile(ordered, 99), digits),
        "max": round(float(ordered[-1]), digits),
    }


def describe(turns: Sequence[Turn]) -> dict[str, Any]:
    """Summary statistics of a trace (for ``python -m drift_sgl.sim`` and the docs).

    ``cacheable_prompt_share`` is the fraction of all prompt tokens a perfect
    (unbounded) prefix cache would serve: every turn's shared prefix and
    history, less the first computation of each distinct shared prefix.
    ``think_time_s`` covers turns after the first (turn 0's delay is an
    arrival offset, not a think time).
    """
    if not turns:
        raise ValueError("describe() needs at least one turn")
    grouped = sessions(turns)
    prompts = [prompt_tokens(group, k) for group in grouped for k in range(len(group))]
    outputs = [t.output_tokens for t in turns]
    think = [t.delay_s for t in turns if t.turn > 0]
    prefixes = {t.shared_prefix_id: t.shared_prefix_tokens for t in turns if t.shared_prefix_id}
    total_prompt = sum(prompts)
    new_input = sum(t.new_input_tokens for t in turns)
    cacheable = total_prompt - new_input - sum(prefixes.values())
    summary: dict[str, Any] = {
        "sessions": len(grouped),
        "turns": len(turns),
        "turns_per_session_mean": round(len(turns) / len(grouped), 2),
        "shared_prefixes": len(prefixes),
        "prompt_tokens": _stats(prompts),
        "output_tokens": _stats(outputs),
        "think_time_s": _stats(think, digits=2) if think else None,
        "total_prompt_tokens": total_prompt,
        "total_output_tokens": sum(outputs),
        "total_tokens": total_prompt + sum(outputs),
        "cacheable_prompt_share": round(cacheable / total_prompt, 4),
    }
    return summary

"""The multi-turn trace format (drift_sgl.sim.trace) and bench/traces/generate.py."""

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from drift_sgl.sim.trace import (
    TraceError,
    Turn,
    describe,
    prompt_tokens,
    read_trace,
    sessions,
    with_session_rate,
    write_trace,
)

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO / "bench" / "traces"
GENERATE = TRACES / "generate.py"

DROP = object()  # a field value that removes the key


def line(**fields) -> str:
    row = {
        "session": "s",
        "turn": 0,
        "delay_s": 1.5,
        "new_input_tokens": 10,
        "output_tokens": 20,
        **fields,
    }
    return json.dumps({k: v for k, v in row.items() if v is not DROP})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(text + "\n" for text in lines))
    return path


def example_session() -> tuple[Turn, ...]:
    return (
        Turn("a", 0, 0.0, 10, 20, "sys", 100),
        Turn("a", 1, 2.0, 30, 40, "sys", 100),
        Turn("a", 2, 3.0, 50, 60, "sys", 100),
    )


def test_round_trip(tmp_path):
    turns = [*example_session(), Turn("b", 0, 7.25, 5, 5), Turn("b", 1, 0.0, 1, 1)]
    path = tmp_path / "t.jsonl"
    write_trace(path, turns)
    assert read_trace(path) == turns
    rows = [json.loads(text) for text in path.read_text().splitlines()]
    assert rows[0]["shared_prefix"] == {"id": "sys", "tokens": 100}
    assert "shared_prefix" not in rows[3]  # absent, not null, without one


def test_null_shared_prefix_and_blank_lines_are_accepted(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", ["", line(shared_prefix=None), "   "])
    assert read_trace(path) == [Turn("s", 0, 1.5, 10, 20)]


BAD_LINES = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got array"),
    ('"turn"', "expected a JSON object, got string"),
    (line(output_tokens=DROP), "missing key(s) output_tokens"),
    (line(session=DROP, turn=DROP), "missing key(s) session, turn"),
    (line(prompt="hi"), "unknown key(s) 'prompt'"),
    (line(session=5), "session must be a string"),
    (line(session=""), "session must be a non-empty string"),
    (line(turn="1"), "turn must be an integer"),
    (line(turn=True), "turn must be an integer, got True"),
    (line(turn=1.0), "turn must be an integer, got 1.0"),
    (line(turn=-1), "turn must be an integer >= 0, got -1"),
    (line(delay_s="1"), "delay_s must be a number"),
    (line(delay_s=False), "delay_s must be a number"),
    (line(delay_s=None), "delay_s must be a number"),
    (line(delay_s=-0.5), "delay_s must be a finite number >= 0, got -0.5"),
    (line(delay_s=float("nan")), "delay_s must be a finite number >= 0, got nan"),
    (line(delay_s=float("inf")), "delay_s must be a finite number >= 0, got inf"),
    (line(delay_s=10**400), "delay_s must be a finite number >= 0"),
    (line(new_input_tokens=0), "new_input_tokens must be an integer >= 1, got 0"),
    (line(new_input_tokens=2.5), "new_input_tokens must be an integer, got 2.5"),
    (line(output_tokens=0), "output_tokens must be an integer >= 1, got 0"),
    (line(output_tokens=True), "output_tokens must be an integer, got True"),
    (line(output_tokens="3"), "output_tokens must be an integer"),
    (line(shared_prefix="sys"), "shared_prefix must be null or"),
    (line(shared_prefix=["sys", 5]), "shared_prefix must be null or"),
    (line(shared_prefix={"id": "p"}), "shared_prefix is missing key(s) tokens"),
    (line(shared_prefix={"tokens": 5}), "shared_prefix is missing key(s) id"),
    (line(shared_prefix={"id": "p", "tokens": 0}), "shared_prefix tokens must be an integer >= 1"),
    (line(shared_prefix={"id": "p", "tokens": True}), "shared_prefix tokens must be an integer"),
    (line(shared_prefix={"id": "", "tokens": 5}), "shared_prefix id must be a non-empty string"),
    (line(shared_prefix={"id": 3, "tokens": 5}), "shared_prefix id must be a string"),
    (line(shared_prefix={"id": "p", "tokens": 5, "x": 1}), "unknown key(s) in shared_prefix"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_a_bad_line_is_named(tmp_path, bad, message):
    # A good line, a blank line, then the bad one: line 3 (blank lines count).
    path = write_lines(tmp_path / "trace.jsonl", [line(session="ok"), "", bad])
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)


PREFIX_P = {"id": "p", "tokens": 5}

BAD_SESSIONS = [
    ([line(turn=0), line(turn=1), line(turn=1)], 4, "has turn 1 twice (also line 3)"),
    ([line(turn=1), line(turn=0), line(turn=0)], 4, "has turn 0 twice"),
    ([line(turn=0), line(turn=2)], 3, "has turn 2 but no turn 1"),
    ([line(turn=1), line(turn=2)], 2, "has turn 1 but no turn 0"),
    (
        [
            line(turn=0, shared_prefix=PREFIX_P),
            line(turn=1, shared_prefix={"id": "q", "tokens": 5}),
        ],
        3,
        "turn 1 has shared prefix 'q' (5 tokens) but line 2 has 'p' (5 tokens)",
    ),
    (
        [
            line(turn=0, shared_prefix=PREFIX_P),
            line(turn=1, shared_prefix={"id": "p", "tokens": 6}),
        ],
        3,
        "has shared prefix 'p' (6 tokens)",
    ),
    ([line(turn=0, shared_prefix=PREFIX_P), line(turn=1)], 3, "has shared prefix none"),
    ([line(turn=1), line(turn=0, shared_prefix=PREFIX_P)], 3, "but line 2 has none"),
]


@pytest.mark.parametrize(("lines", "number", "message"), BAD_SESSIONS)
def test_a_bad_session_is_named(tmp_path, lines, number, message):
    # Line 1 is another session's, so the numbers below are file line numbers.
    path = write_lines(tmp_path / "trace.jsonl", [line(session="other"), *lines])
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert str(err.value).startswith(f"{path}:{number}: session 's' ")
    assert message in str(err.value)


@pytest.mark.parametrize("lines", [[], ["", "  "]])
def test_an_empty_trace_is_an_error(tmp_path, lines):
    path = write_lines(tmp_path / "trace.jsonl", lines)
    with pytest.raises(TraceError, match="empty trace"):
        read_trace(path)


def test_a_turn_built_in_code_is_checked_too():
    with pytest.raises(TraceError, match="output_tokens must be an integer >= 1"):
        Turn("s", 0, 0.0, 1, 0)
    with pytest.raises(TraceError, match="shared_prefix_tokens must be 0"):
        Turn("s", 0, 0.0, 1, 1, None, 5)


def test_lines_out_of_order_are_sorted(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            line(session="b", turn=1),
            line(session="a", turn=1),
            line(session="b", turn=0),
            line(session="a", turn=0),
            line(session="b", turn=2),
        ],
    )
    turns = read_trace(path)
    assert [(t.session, t.turn) for t in turns] == [
        ("b", 0), ("b", 1), ("b", 2), ("a", 0), ("a", 1),
    ]  # fmt: skip
    shuffled = [turns[4], turns[0], turns[2], turns[3], turns[1]]
    assert [[(t.session, t.turn) for t in group] for group in sessions(shuffled)] == [
        [("a", 0), ("a", 1)],
        [("b", 0), ("b", 1), ("b", 2)],
    ]


def many_sessions(n: int) -> list[Turn]:
    return [Turn(f"s{i}", k, 100.0 + k, 5, 5) for i in range(n) for k in range(3)]


def test_with_session_rate_is_deterministic_and_changes_only_arrivals():
    turns = many_sessions(2000)
    rated = with_session_rate(turns, rate=4.0, seed=7)
    assert rated == with_session_rate(turns, rate=4.0, seed=7)
    assert rated != with_session_rate(turns, rate=4.0, seed=8)
    for before, after in zip(turns, rated, strict=True):
        assert (after.session, after.turn) == (before.session, before.turn)
        if before.turn == 0:
            assert after == Turn(**{**before.__dict__, "delay_s": after.delay_s})
        else:
            assert after == before
    arrivals = [t.delay_s for t in rated if t.turn == 0]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    mean_gap = arrivals[-1] / len(arrivals)
    assert mean_gap == pytest.approx(1 / 4.0, rel=0.1)


@pytest.mark.parametrize("rate", [0, -1.0, float("nan"), float("inf")])
def test_with_session_rate_needs_a_positive_rate(rate):
    with pytest.raises(ValueError, match="rate must be"):
        with_session_rate(many_sessions(2), rate)


def test_prompt_tokens_by_hand():
    session = example_session()
    assert prompt_tokens(session, 0) == 100 + 10
    assert prompt_tokens(session, 1) == 100 + (10 + 20) + 30
    assert prompt_tokens(session, 2) == 100 + (10 + 20) + (30 + 40) + 50
    assert prompt_tokens((Turn("b", 0, 0.0, 7, 9),), 0) == 7
    with pytest.raises(ValueError):
        prompt_tokens(session, 3)
    with pytest.raises(ValueError, match="sort by turn"):
        prompt_tokens(session[::-1], 0)


def test_describe_by_hand():
    turns = [*example_session(), Turn("b", 0, 0.0, 5, 5, "sys", 100), Turn("c", 0, 1.0, 1, 1)]
    summary = describe(turns)
    prompts = [110, 160, 250, 105, 1]
    assert summary["sessions"] == 3 and summary["turns"] == 5
    assert summary["turns_per_session_mean"] == pytest.approx(5 / 3, abs=0.01)
    assert summary["shared_prefixes"] == 1
    assert summary["prompt_tokens"]["mean"] == pytest.approx(sum(prompts) / 5, abs=0.1)
    assert summary["prompt_tokens"]["p50"] == 110
    assert summary["prompt_tokens"]["max"] == 250
    assert summary["output_tokens"]["p50"] == 20
    assert summary["think_time_s"]["mean"] == 2.5
    assert summary["total_prompt_tokens"] == sum(prompts)
    assert summary["total_output_tokens"] == 20 + 40 + 60 + 5 + 1
    assert summary["total_tokens"] == sum(prompts) + 126
    # All but the new inputs (10+30+50+5+1) and the first use of "sys" (100).
    cacheable = sum(prompts) - 96 - 100
    assert summary["cacheable_prompt_share"] == pytest.approx(cacheable / sum(prompts), abs=1e-4)


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GENERATE), *args], cwd=REPO, capture_output=True, text=True
    )


def generated(tmp_path: Path, kind: str, n: int, seed: int, name: str = "t.jsonl") -> Path:
    out = tmp_path / name
    result = generate(kind, "--sessions", str(n), "--seed", str(seed), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def context_lengths(turns: list[Turn]) -> list[int]:
    """Prompt plus output of every turn."""
    return [
        prompt_tokens(group, k) + group[k].output_tokens
        for group in sessions(turns)
        for k in range(len(group))
    ]


@pytest.mark.parametrize("kind", ["conversation", "agent", "tiny"])
def test_generators_are_deterministic_for_a_seed(tmp_path, kind):
    first = generated(tmp_path, kind, 12, seed=3, name="a.jsonl")
    again = generated(tmp_path, kind, 12, seed=3, name="b.jsonl")
    other = generated(tmp_path, kind, 12, seed=4, name="c.jsonl")
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    turns = read_trace(first)
    assert len(sessions(turns)) == 12
    assert max(context_lengths(turns)) < (1_500 if kind == "tiny" else 32_000)


def test_agent_trace_structure(tmp_path):
    turns = read_trace(generated(tmp_path, "agent", 40, seed=1))
    for group in sessions(turns):
        assert group[0].shared_prefix_tokens >= 2000
        assert 1 <= len(group) <= 30
        if len(group) < 4:
            # Cut by the context limit: the next turn (at most a 12,000-token
            # tool output and a 2,000-token answer) would not have fitted.
            last = len(group) - 1
            assert prompt_tokens(group, last) + group[last].output_tokens >= 32_000 - 14_000
        assert all(t.delay_s <= 3.0 for t in group[1:])


def test_conversation_trace_structure(tmp_path):
    turns = read_trace(generated(tmp_path, "conversation", 40, seed=1))
    for group in sessions(turns):
        assert 1 <= len(group) <= 12
        assert group[0].shared_prefix_tokens == 0 or 100 <= group[0].shared_prefix_tokens <= 1500
        prompts = [prompt_tokens(group, k) for k in range(len(group))]
        assert all(later > earlier for earlier, later in itertools.pairwise(prompts))
        assert all(3.0 <= t.delay_s <= 30.0 for t in group[1:])


def test_summary_prints_describe(tmp_path):
    out = tmp_path / "t.jsonl"
    result = generate("agent", "--sessions", "5", "--seed", "0", "--out", str(out), "--summary")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == describe(read_trace(out))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chat", "--sessions", "3", "--out", "OUT"], "invalid choice: 'chat'"),
        (["agent", "--sessions", "0", "--out", "OUT"], "--sessions: must be >= 1, got 0"),
        (["agent", "--sessions", "many", "--out", "OUT"], "expected a whole number"),
        (["agent", "--sessions", "3", "--seed", "x", "--out", "OUT"], "--seed: invalid int"),
        (["agent", "--out", "OUT"], "the following arguments are required: --sessions"),
        (["agent", "--sessions", "3", "--out", "MISSING/t.jsonl"], "does not exist"),
        (["agent", "--sessions", "3", "--out", "."], "is a directory"),
    ],
)
def test_generator_argument_errors(tmp_path, args, message):
    args = [
        a.replace("OUT", str(tmp_path / "t.jsonl")).replace("MISSING", str(tmp_path / "no"))
        for a in args
    ]
    args = [str(tmp_path) if a == "." else a for a in args]
    result = generate(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "t.jsonl").exists()


def documented_commands() -> list[tuple[list[str], str]]:
    """The regeneration commands in bench/traces/README.md: (arguments, --out)."""
    readme = (TRACES / "README.md").read_text()
    found = re.findall(r"^python bench/traces/generate\.py (.+)$", readme, flags=re.MULTILINE)
    commands = []
    for text in found:
        args = text.split()
        out = args[args.index("--out") + 1]
        commands.append((args, out))
    return commands


def test_committed_traces_are_what_the_documented_commands_write(tmp_path):
    commands = documented_commands()
    readme = (TRACES / "README.md").read_text()
    assert sorted(out for _, out in commands) == [
        "bench/traces/agent.jsonl",
        "bench/traces/conversation.jsonl",
        "bench/traces/cpu-tiny.jsonl",
    ]
    for args, committed in commands:
        fresh = tmp_path / Path(committed).name
        args = [str(fresh) if a == committed else a for a in args]
        result = generate(*args)
        assert result.returncode == 0, result.stderr
        assert fresh.read_bytes() == (REPO / committed).read_bytes(), committed
        # The README shows the summary the command prints.
        if "--summary" in args:
            assert result.stdout.strip() in readme, f"README summary of {committed} is stale"

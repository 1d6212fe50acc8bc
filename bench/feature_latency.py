"""Request features on drift and on plain SGLang: same answers, and how long they take.

    python bench/feature_latency.py [--model-path DIR] [--rounds 7] [--json OUT]

Starts a drift server and a plain SGLang server on the same model (the tiny
random Llama unless ``--model-path``; on a machine without an NVIDIA driver
both run on the CPU with the settings drift fills in), then sends each request
of ``REQUESTS`` to one server and then the other, ``--rounds`` times,
interleaved (the order flips every round), so that both see the same machine.
Both get the same KV pool (``--max-total-tokens``): sized from free memory, the
server started first would take most of it, and on a CPU the pool size alone
moved these latencies by up to 2x. Round 0 compiles the grammars and is
reported apart (``first_ms``); later rounds give the median. Prints one JSON
object: per request kind and system the latencies, whether the answers were
equal, and drift's median over SGLang's. Exit status 1 when a server does not
start or an answer differs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from drift_sgl.cpu.environment import SGLANG_CPU_ARGS
from drift_sgl.tools.server_process import ServerProcess, ServerStartError, start_local_server

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["paris", "rome"]}},
            },
        },
    }
]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0}
#: name -> (route, body); every answer is greedy, so both servers must agree.
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {**CHAT, "max_tokens": 16}),
    "chat json_object": (
        "/v1/chat/completions",
        {**CHAT, "max_tokens": 16, "response_format": {"type": "json_object"}},
    ),
    "chat json_schema": (
        "/v1/chat/completions",
        {
            **CHAT,
            "max_tokens": 32,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": SCHEMA},
            },
        },
    ),
    "chat tool_choice required": (
        "/v1/chat/completions",
        {**CHAT, "max_tokens": 32, "tools": TOOLS, "tool_choice": "required"},
    ),
    "generate regex": (
        "/generate",
        {
            "text": "Answer:",
            "sampling_params": {"max_new_tokens": 8, "temperature": 0, "regex": "(yes|no)"},
        },
    ),
}


def timed(server: ServerProcess, route: str, body: dict) -> tuple[float, Any]:
    started = time.perf_counter()
    resp = requests.post(server.url + route, json=body, timeout=300)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    payload = resp.json()
    if isinstance(payload, dict):
        payload.pop("id", None)
        payload.pop("created", None)
        payload.pop("meta_info", None)
        payload.pop("usage", None)
    return elapsed_ms, (resp.status_code, payload)


def measure(servers: dict[str, ServerProcess], rounds: int) -> dict[str, Any]:
    times: dict[str, dict[str, list[float]]] = {k: {s: [] for s in servers} for k in REQUESTS}
    equal = {kind: True for kind in REQUESTS}
    for round_index in range(rounds):
        # Whoever goes second finds the machine warmer (caches, the other
        # server just gone idle): flip the order so neither always gets it.
        order = list(servers.items())
        if round_index % 2:
            order.reverse()
        for kind, (route, body) in REQUESTS.items():
            answers = []
            for name, server in order:
                elapsed_ms, answer = timed(server, route, body)
                times[kind][name].append(elapsed_ms)
                answers.append(answer)
            equal[kind] &= all(a == answers[0] for a in answers)
    report = {}
    for kind, per_system in times.items():
        medians = {name: statistics.median(ms[1:] or ms) for name, ms in per_system.items()}
        report[kind] = {
            "equal_answers": equal[kind],
            "first_ms": {name: round(ms[0], 1) for name, ms in per_system.items()},
            "median_ms": {name: round(ms, 1) for name, ms in medians.items()},
            "drift_over_sglang": round(medians["drift"] / medians["sglang"], 3),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, help="default: the tiny random Llama")
    parser.add_argument("--rounds", type=int, default=7, help="round 0 warms up (default 7)")
    parser.add_argument(
        "--max-total-tokens",
        type=int,
        default=100_000,
        help="KV pool of each server, the same for both (default 100000)",
    )
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2")
    work = Path(tempfile.mkdtemp(prefix="feature-latency-"))
    model = args.model_path
    common: tuple[str, ...] = ("--max-total-tokens", str(args.max_total_tokens))
    if model is None:
        from drift_sgl.tools.tiny_model import write_tiny_model

        model = write_tiny_model(work / "tiny-llama")
        # As in the tests: SGLang's float16 default is slow on a CPU, and its
        # rounding turns the random model's near-ties into greedy flips.
        common += ("--dtype", "float32")
    servers: dict[str, ServerProcess] = {}
    try:
        servers["drift"] = start_local_server(
            "drift_sgl.launch_server", model, work / "drift.log", common
        )
        servers["sglang"] = start_local_server(
            "sglang.launch_server", model, work / "sglang.log", common, SGLANG_CPU_ARGS
        )
        report = {
            "model": str(model),
            "rounds": args.rounds,
            "max_total_tokens": args.max_total_tokens,
            "requests": measure(servers, args.rounds),
        }
    except ServerStartError as err:
        print(f"feature_latency: {err}", file=sys.stderr)
        return 1
    finally:
        for server in servers.values():
            server.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if all(r["equal_answers"] for r in report["requests"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

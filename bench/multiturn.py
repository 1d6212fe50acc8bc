"""Replay a multi-turn trace against a running server and report goodput under SLOs.

    python bench/multiturn.py --url http://127.0.0.1:30000 \\
        --trace bench/traces/conversation.jsonl --ttft-slo-ms 2000 --tpot-slo-ms 100 \\
        [--rate 0.5] [--client openai|frontend] [--json OUT]

Works with any SGLang-compatible server (drift, SGLang, vLLM for the OpenAI
client). Each session is a closed loop: a turn is sent its think time after
the previous answer, with the whole conversation so far (see
``drift_sgl.loadgen.replay``). ``--client openai`` streams
``/v1/chat/completions``; ``--client frontend`` runs an SGLang frontend
program (``sgl.function`` on a ``RuntimeEndpoint``) per turn.

Prints a progress bar and a one-line summary on stderr and the JSON report
on stdout (and to ``--json``): ``goodput_rps``, ``slo_attainment``,
``throughput_tok_s``, ``ttft_p99_ms``, ``tbt_p99_ms``, ``prefix_hit_rate``
and more, with the simulator's definitions (``drift_sgl.sim.metrics``);
``--per-turn`` adds a row per turn. Bad input: one line on stderr, exit 2;
a server that cannot be reached: exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from drift_sgl.loadgen.clients import ServerInfoError
from drift_sgl.loadgen.replay import Limits
from drift_sgl.loadgen.runner import CLIENTS, Replayer, Target
from drift_sgl.sim.trace import TraceError, first_sessions, read_trace, trace_window_s


class UsageError(Exception):
    """Bad input; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench/multiturn.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:30000")
    p.add_argument("--trace", required=True, type=Path, help="trace JSONL (bench/traces/)")
    p.add_argument("--ttft-slo-ms", type=float, required=True)
    p.add_argument("--tpot-slo-ms", type=float, required=True)
    p.add_argument("--client", choices=CLIENTS, default="openai")
    p.add_argument("--rate", type=float, help="Poisson session arrivals per second "
                   "(default: the trace's own arrival times)")  # fmt: skip
    p.add_argument("--window-s", type=float, help="with --rate: cycle the sessions until their "
                   "arrivals span this long (default: the trace's arrival span)")  # fmt: skip
    p.add_argument("--sessions", type=int, help="use only the first N sessions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-requests", type=int, help="send at most this many turns")
    p.add_argument("--duration-s", type=float, help="send no turn after this many seconds")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per request")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="bearer token (default: $OPENAI_API_KEY)")  # fmt: skip
    p.add_argument("--model", help="model name to send (default: what the server serves)")
    p.add_argument("--tokenizer", help="tokenizer path (default: the server's)")
    p.add_argument("--extra-body", type=json.loads, default={},
                   help="JSON object merged into every chat request")  # fmt: skip
    p.add_argument("--per-turn", action="store_true", help="add one record per turn")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", type=Path, help="also write the report here")
    return p


def _check(args: argparse.Namespace) -> None:
    for flag in ("ttft_slo_ms", "tpot_slo_ms", "rate", "sessions", "max_requests", "duration_s",
                 "timeout_s"):  # fmt: skip
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if args.window_s is not None and args.window_s < 0:
        raise UsageError(f"--window-s must be >= 0, got {args.window_s}")
    if not isinstance(args.extra_body, dict):
        raise UsageError("--extra-body must be a JSON object")


def run(args: argparse.Namespace) -> dict[str, Any]:
    _check(args)
    try:
        turns = read_trace(args.trace)
    except TraceError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"cannot read trace {args.trace}: {err.strerror or err}") from None
    if args.sessions:
        turns = first_sessions(turns, args.sessions)
    target = Target(
        url=args.url,
        client=args.client,
        api_key=args.api_key,
        model=args.model,
        tokenizer=args.tokenizer,
        timeout_s=args.timeout_s,
        extra_body=args.extra_body,
    )
    replayer = Replayer(target)
    window = trace_window_s(turns) if args.window_s is None else args.window_s
    report = replayer.run(
        turns,
        args.ttft_slo_ms,
        args.tpot_slo_ms,
        Limits(args.max_requests, args.duration_s),
        rate=args.rate,
        seed=args.seed,
        window_s=window,
        per_turn=args.per_turn,
        progress=not args.quiet,
    )
    return {"url": args.url, "trace": str(args.trace), **report}


def summary_line(report: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} ms"

    hits = report["prefix_hit_rate"]
    return (
        f"multiturn: {report['requests']} requests ({report['failed_requests']} failed),"
        f" goodput {report['goodput_rps']:.3f} req/s, SLO attainment"
        f" {report['slo_attainment']:.1%}, {report['throughput_tok_s']:.1f} tok/s,"
        f" TTFT p99 {ms(report['ttft_p99_ms'])}, TBT p99 {ms(report['tbt_p99_ms'])},"
        f" prefix hits {'n/a' if hits is None else f'{hits:.1%}'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        report = run(args)
    except (UsageError, ValueError) as err:
        print(f"multiturn: error: {err}", file=sys.stderr)
        return 2
    except ServerInfoError as err:
        print(f"multiturn: error: {err}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=1)
    if args.json:
        try:
            args.json.write_text(text + "\n", encoding="utf-8")
        except OSError as err:
            print(f"multiturn: error: cannot write {args.json}: {err.strerror or err}",
                  file=sys.stderr)  # fmt: skip
            print(text)
            return 1
    print(summary_line(report), file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

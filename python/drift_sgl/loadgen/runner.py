"""One server, many replays: what bench/multiturn.py, goodput.py and calibrate.py share.

A ``Replayer`` asks the server once what it serves (model name, tokenizer),
loads the tokenizer once, and then runs a trace at any load and reports it
(``loadgen.report``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drift_sgl.loadgen.clients import FrontendClient, OpenAIChatClient, discover
from drift_sgl.loadgen.replay import Limits, ReplayResult, TurnOutcome, replay
from drift_sgl.loadgen.report import summarize_replay, turn_rows
from drift_sgl.loadgen.text import TextMaker, load_tokenizer
from drift_sgl.sim.trace import Turn, at_session_rate, sessions

CLIENTS = ("openai", "frontend")


@dataclass(frozen=True)
class Target:
    """A server and how to talk to it."""

    url: str
    client: str = "openai"
    api_key: str | None = None
    model: str | None = None  # default: what the server says it serves
    tokenizer: str | None = None  # default: the server's tokenizer path
    timeout_s: float = 600.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.client not in CLIENTS:
            raise ValueError(f"client must be one of {', '.join(CLIENTS)}, got {self.client!r}")


class Replayer:
    """Replays traces against one server; see the module docstring."""

    def __init__(self, target: Target) -> None:
        self.target = target
        info = {} if target.model and target.tokenizer else discover(target.url, target.api_key)
        self.model = target.model or info["model"]
        tokenizer = target.tokenizer or info.get("tokenizer")
        if not tokenizer:
            raise ValueError(f"{target.url} does not name its tokenizer; pass one (--tokenizer)")
        self.text = TextMaker(load_tokenizer(tokenizer))

    def run(
        self,
        turns: Sequence[Turn],
        ttft_slo_ms: float,
        tpot_slo_ms: float,
        limits: Limits | None = None,
        rate: float | None = None,
        seed: int = 0,
        window_s: float = 0.0,
        per_turn: bool = False,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Replay ``turns`` (at ``rate`` sessions/s, else the trace's timing) and report it."""
        limits = limits or Limits()
        if rate is not None:
            turns = at_session_rate(turns, rate, seed, window_s)
        label = "trace timing" if rate is None else f"{rate:.4g} sessions/s"
        total = len(turns) if limits.max_requests is None else min(len(turns), limits.max_requests)
        result = asyncio.run(self._replay(turns, limits, label, total, progress))
        report: dict[str, Any] = {
            "rate_sessions_per_s": rate,
            "sessions": len(sessions(turns)),
            **summarize_replay(result, ttft_slo_ms, tpot_slo_ms),
            "ttft_slo_ms": ttft_slo_ms,
            "tpot_slo_ms": tpot_slo_ms,
            "client": self.target.client,
        }
        if per_turn:
            report["turns"] = turn_rows(result)
        return report

    async def _replay(
        self, turns: Sequence[Turn], limits: Limits, label: str, total: int, progress: bool
    ) -> ReplayResult:
        from tqdm import tqdm

        t = self.target
        if t.client == "frontend":
            client: Any = FrontendClient(t.url, t.api_key, max_concurrency=len(sessions(turns)))
        else:
            client = OpenAIChatClient(t.url, self.model, t.api_key, t.timeout_s, t.extra_body)
        bar = tqdm(total=total, desc=label, unit="req", disable=not progress, file=sys.stderr)
        failures = 0

        def on_turn(outcome: TurnOutcome) -> None:
            nonlocal failures
            failures += not outcome.answer.ok
            bar.update(1)
            if failures:
                bar.set_postfix(failed=failures)

        try:
            return await replay(turns, client, self.text, limits, on_turn)
        finally:
            bar.close()
            await client.close()

"""Replay a multi-turn trace against a live server, one closed loop per session.

Session s starts ``delay_s`` (of its turn 0) after the replay starts. Turn k
is sent ``delay_s`` (its think time) after turn k-1's answer has fully
arrived, with the whole conversation so far: the shared prefix as the system
message, every earlier user message and the answer the server actually gave,
then the new user message. Reusing that prefix is the server's job, as it is
with real clients. A failed turn ends its session (a client cannot go on
without the answer).

Limits bound a run: ``max_requests`` turns in all, and no turn is sent once
``duration_s`` have passed (answers in flight are still awaited, each bounded
by the client's timeout); sessions waiting to start or thinking then stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drift_sgl.loadgen.clients import ChatClient, Messages
from drift_sgl.loadgen.stream import StreamedAnswer
from drift_sgl.loadgen.text import TextMaker
from drift_sgl.sim.trace import Turn, sessions


@dataclass(frozen=True)
class Limits:
    """When a replay stops sending (None: no bound)."""

    max_requests: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")


@dataclass(frozen=True)
class TurnOutcome:
    """One sent turn; the answer's times are seconds since the replay started."""

    session: str
    turn: int
    expected_output_tokens: int
    answer: StreamedAnswer


@dataclass(frozen=True)
class ReplayResult:
    outcomes: tuple[TurnOutcome, ...]
    turns_in_trace: int
    wall_s: float

    @property
    def not_sent(self) -> int:
        """Turns never sent: cut by a limit, or after a failed turn of their session."""
        return self.turns_in_trace - len(self.outcomes)


class _Budget:
    """The limits, shared by all sessions of one replay."""

    def __init__(self, limits: Limits, now: Callable[[], float]) -> None:
        self.limits = limits
        self.now = now
        self.sent = 0

    def seconds_left(self) -> float:
        if self.limits.duration_s is None:
            return float("inf")
        return self.limits.duration_s - self.now()

    async def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if the run ends first; False if it has ended."""
        left = self.seconds_left()
        if seconds >= left:
            await asyncio.sleep(max(left, 0.0))
            return False
        await asyncio.sleep(max(seconds, 0.0))
        return True

    def take(self) -> bool:
        """Count one more request, if the limits allow it now."""
        if self.seconds_left() <= 0:
            return False
        if self.limits.max_requests is not None and self.sent >= self.limits.max_requests:
            return False
        self.sent += 1
        return True


async def replay(
    turns: Sequence[Turn],
    client: ChatClient,
    text: TextMaker,
    limits: Limits | None = None,
    on_turn: Callable[[TurnOutcome], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> ReplayResult:
    """Run every session of ``turns`` concurrently against ``client``."""
    start = clock()

    def now() -> float:
        return clock() - start

    budget = _Budget(limits or Limits(), now)
    outcomes: list[TurnOutcome] = []

    async def run_session(group: Sequence[Turn]) -> None:
        messages: Messages = []
        first = group[0]
        if first.shared_prefix_id is not None:
            system = text.text(f"prefix/{first.shared_prefix_id}", first.shared_prefix_tokens)
            messages.append({"role": "system", "content": system})
        if not await budget.wait(first.delay_s - now()):
            return
        for turn in group:
            if turn.turn > 0 and not await budget.wait(turn.delay_s):
                return
            if not budget.take():
                return
            user = text.text(f"{turn.session}/{turn.turn}", turn.new_input_tokens)
            messages.append({"role": "user", "content": user})
            answer = await client.answer(list(messages), turn.output_tokens, now)
            outcome = TurnOutcome(turn.session, turn.turn, turn.output_tokens, answer)
            outcomes.append(outcome)
            if on_turn is not None:
                on_turn(outcome)
            if not answer.ok:
                return
            messages.append({"role": "assistant", "content": answer.text})

    await asyncio.gather(*(run_session(group) for group in sessions(turns)))
    outcomes.sort(key=lambda o: o.answer.sent_s)
    return ReplayResult(tuple(outcomes), len(turns), now())

"""Which points ``profile run`` measures, and in what order.

The candidates are a log-spaced grid per phase and SM share. They are visited
round-robin over the (phase, share, co-run) groups, each group in a fixed
shuffled order, so that stopping at any time (budget, Ctrl-C) leaves every
group covered about evenly across its whole range. Points predicted to cost
more than the remaining budget are skipped.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """One measurement: sizes per sequence, so the harness can build the batch."""

    phase: str
    sm: int
    co_run: bool
    seqs: int
    new_per_seq: int = 0
    prefix_per_seq: int = 0
    kv_per_seq: int = 0

    @property
    def key(self) -> str:
        """A stable name, stored with the sample, to resume an interrupted run."""
        sizes = (
            f"b={self.seqs},n={self.new_per_seq},p={self.prefix_per_seq}"
            if self.phase == "prefill"
            else f"b={self.seqs},kv={self.kv_per_seq}"
        )
        return f"{self.phase}/sm={self.sm}/{'co' if self.co_run else 'solo'}/{sizes}"

    @property
    def seq_len(self) -> int:
        """Longest sequence of the batch (decode: after the timed steps)."""
        if self.phase == "prefill":
            return self.new_per_seq + self.prefix_per_seq
        return self.kv_per_seq + 8

    @property
    def tokens(self) -> int:
        """KV tokens the batch holds at its largest."""
        if self.phase == "prefill":
            return self.seqs * (self.new_per_seq + self.prefix_per_seq)
        return self.seqs * (self.kv_per_seq + 8)


def log_grid(low: int, high: int) -> list[int]:
    """Powers of two and their 1.5x midpoints in [low, high]."""
    values = []
    value = low
    while value <= high:
        values.append(value)
        middle = value * 3 // 2
        if value < middle <= high:
            values.append(middle)
        value *= 2
    return values


@dataclass(frozen=True)
class Limits:
    """What the loaded model and its memory pools can hold."""

    max_tokens: int
    max_requests: int
    max_seq_len: int

    def allow(self, point: Point) -> bool:
        return (
            point.tokens <= self.max_tokens
            and point.seqs <= self.max_requests
            and point.seq_len < self.max_seq_len
        )


def candidates(phase: str, sm: int, co_run: bool, limits: Limits) -> list[Point]:
    points = []
    if phase == "prefill":
        sizes = log_grid(16, limits.max_tokens)
        for new, ratio, seqs in itertools.product(sizes, (0, 1, 4), (1, 4)):
            points.append(
                Point(phase, sm, co_run, seqs, new_per_seq=new, prefix_per_seq=ratio * new)
            )
    else:
        for seqs, kv in itertools.product(log_grid(1, 512), log_grid(64, 16384)):
            points.append(Point(phase, sm, co_run, seqs, kv_per_seq=kv))
    return [p for p in points if limits.allow(p)]


def visiting_order(groups: list[list[Point]], seed: int = 0) -> list[Point]:
    """Round-robin over the groups, each shuffled with a fixed seed."""
    shuffled = []
    for index, group in enumerate(groups):
        order = list(group)
        random.Random(f"{seed}/{index}").shuffle(order)
        shuffled.append(order)
    return [
        point for batch in itertools.zip_longest(*shuffled) for point in batch if point is not None
    ]


def plan_points(
    shares: list[int], co_run_shares: list[int], limits: Limits, seed: int = 0
) -> list[Point]:
    """Every candidate, in visiting order; co-run groups are thinned to every 3rd point."""
    groups = []
    for phase in ("prefill", "decode"):
        for sm in shares:
            groups.append(candidates(phase, sm, False, limits))
        for sm in co_run_shares:
            groups.append(candidates(phase, sm, True, limits)[::3])
    return visiting_order([g for g in groups if g], seed)

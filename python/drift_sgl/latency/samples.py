"""Latency samples: one JSON object per line, as ``profile run`` writes them.

Every line has all the keys of ``Sample`` (extra keys are allowed and kept, so
a sample read and written again loses nothing). A bad line is reported with
its line number; the file is never partly accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

PHASES = ("prefill", "decode")

_INT_KEYS = ("sm", "total_sm", "new_tokens", "prefix_tokens", "batch_size", "kv_tokens")
REQUIRED_KEYS = ("phase", *_INT_KEYS, "co_run", "latency_ms")


class SampleError(ValueError):
    """A sample line does not follow the schema; the message names the line."""


@dataclass(frozen=True)
class Sample:
    """One measured forward pass of one phase.

    Prefill rows: ``batch_size`` is the number of sequences, ``new_tokens`` and
    ``prefix_tokens`` are totals over the batch. Decode rows: ``new_tokens`` equals
    ``batch_size`` and ``kv_tokens`` is the KV length summed over the batch.
    ``co_run`` is true when the other phase ran beside it on the other partition.
    """

    phase: str
    sm: int
    total_sm: int
    new_tokens: int
    prefix_tokens: int
    batch_size: int
    kv_tokens: int
    co_run: bool
    latency_ms: float
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise SampleError(problem)

    def to_json(self) -> dict[str, Any]:
        row = {key: getattr(self, key) for key in REQUIRED_KEYS}
        return {**self.extra, **row}

    @classmethod
    def from_json(cls, row: Any) -> Sample:
        """Build a sample from a decoded JSON object; raises ``SampleError``."""
        if not isinstance(row, dict):
            raise SampleError(f"expected a JSON object, got {type(row).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise SampleError(f"missing key(s) {', '.join(missing)}")
        for key in _INT_KEYS:
            if type(row[key]) is not int:
                raise SampleError(f"{key} must be an integer, got {row[key]!r}")
        if type(row["co_run"]) is not bool:
            raise SampleError(f"co_run must be true or false, got {row['co_run']!r}")
        latency = row["latency_ms"]
        if type(latency) not in (int, float):
            raise SampleError(f"latency_ms must be a number, got {latency!r}")
        extra = {key: value for key, value in row.items() if key not in REQUIRED_KEYS}
        values = {key: row[key] for key in REQUIRED_KEYS}
        values["latency_ms"] = float(latency)
        return cls(**values, extra=extra)


def _problem(s: Sample) -> str | None:
    if s.phase not in PHASES:
        return f"phase must be one of {', '.join(PHASES)}, got {s.phase!r}"
    if not 1 <= s.sm <= s.total_sm:
        return f"sm must be in 1..total_sm ({s.total_sm}), got {s.sm}"
    for key in ("new_tokens", "prefix_tokens", "batch_size", "kv_tokens"):
        if getattr(s, key) < 0:
            return f"{key} must be >= 0, got {getattr(s, key)}"
    if s.batch_size < 1 or s.new_tokens < 1:
        return "batch_size and new_tokens must be >= 1"
    if s.phase == "decode" and s.new_tokens != s.batch_size:
        return f"decode rows need new_tokens == batch_size, got {s.new_tokens} != {s.batch_size}"
    if s.phase == "prefill" and s.new_tokens < s.batch_size:
        return f"prefill rows need new_tokens >= batch_size, got {s.new_tokens} < {s.batch_size}"
    if not (math.isfinite(s.latency_ms) and s.latency_ms > 0):
        return f"latency_ms must be a positive finite number, got {s.latency_ms}"
    return None


def parse_samples(lines: Iterable[str], source: str = "<samples>") -> list[Sample]:
    """Parse JSONL text; blank lines are skipped. Raises ``SampleError`` naming the line."""
    samples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            samples.append(Sample.from_json(json.loads(line)))
        except json.JSONDecodeError as err:
            raise SampleError(f"{source}:{number}: not valid JSON ({err.msg})") from None
        except SampleError as err:
            raise SampleError(f"{source}:{number}: {err}") from None
    return samples


def read_samples(path: str | Path) -> list[Sample]:
    """Read a samples file; raises ``SampleError`` (with the line number) or ``OSError``."""
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_samples(handle, source=str(path))
    except UnicodeDecodeError:
        raise SampleError(f"{path}: not a text file") from None


def write_sample(handle: IO[str], sample: Sample) -> None:
    """Append one sample as a line and flush it (an interrupted run keeps it)."""
    handle.write(json.dumps(sample.to_json(), sort_keys=True) + "\n")
    handle.flush()

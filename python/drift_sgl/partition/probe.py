"""Check that each partition really runs on the SMs it was given.

The SM-id probe (``sgl-kernel-ext``) launches many spinning blocks on a stream
and records the ``%smid`` each block ran on. A green-context stream must only
ever show SMs of its own group: at most its realized count (confined), all of
them once enough blocks ran (covered), and none of the other phase's (disjoint).
The verdict logic is here, free of CUDA; the probe itself is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from drift_sgl.partition.base import SmSplit

#: ``probe(stream_handle, blocks, spin_ns) -> [smid per block]``
SmIdProbe = Callable[[int, int, int], list[int]]

#: The probe's entry for a block that never wrote its SM id (not an SM).
NO_SMID = 0xFFFFFFFF


@dataclass(frozen=True)
class PhaseProbe:
    """The SMs one phase's stream ran on, against its realized count."""

    expected_sms: int
    seen_sms: tuple[int, ...]
    #: Blocks that recorded no SM id; any makes the verdict fail.
    unwritten_blocks: int = 0

    @property
    def confined(self) -> bool:
        return len(self.seen_sms) <= self.expected_sms

    @property
    def covered(self) -> bool:
        return len(self.seen_sms) == self.expected_sms and self.unwritten_blocks == 0


@dataclass(frozen=True)
class SplitProbe:
    """The verdict on one split."""

    split: SmSplit
    prefill: PhaseProbe | None
    decode: PhaseProbe | None

    @property
    def disjoint(self) -> bool:
        if self.prefill is None or self.decode is None:
            return True
        return not set(self.prefill.seen_sms) & set(self.decode.seen_sms)

    @property
    def ok(self) -> bool:
        phases = [p for p in (self.prefill, self.decode) if p is not None]
        return self.disjoint and all(p.confined and p.covered for p in phases)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the verdicts spelled out."""
        out: dict[str, Any] = {"split": asdict(self.split), "disjoint": self.disjoint}
        for name in ("prefill", "decode"):
            phase = getattr(self, name)
            out[name] = None
            if phase is not None:
                out[name] = {
                    "expected_sms": phase.expected_sms,
                    "seen_sms": len(phase.seen_sms),
                    "smids": list(phase.seen_sms),
                    "confined": phase.confined,
                    "covered": phase.covered,
                    "unwritten_blocks": phase.unwritten_blocks,
                }
        out["ok"] = self.ok
        return out


def probe_split(
    probe: SmIdProbe,
    split: SmSplit,
    prefill_stream: int,
    decode_stream: int,
    total_sms: int,
    blocks_per_sm: int = 8,
    spin_ns: int = 20_000,
) -> SplitProbe:
    """Run the probe on both streams of a split (a phase with no SMs is skipped).

    ``blocks_per_sm`` x ``total_sms`` blocks that each spin ``spin_ns`` are far
    more than a group can hold at once, so they spread over every SM it has.
    """
    blocks = blocks_per_sm * total_sms

    def phase(stream: int, expected: int) -> PhaseProbe | None:
        if expected == 0:
            return None
        ids = probe(stream, blocks, spin_ns)
        seen = tuple(sorted({i for i in ids if i != NO_SMID}))
        return PhaseProbe(expected, seen, unwritten_blocks=ids.count(NO_SMID))

    return SplitProbe(
        split=split,
        prefill=phase(prefill_stream, split.prefill_units),
        decode=phase(decode_stream, split.decode_units),
    )

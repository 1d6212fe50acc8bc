"""SM arithmetic for green-context partitions, kept free of CUDA so it runs anywhere.

A green context gets its SMs from ``cuDevSmResourceSplitByCount``, which hands
out groups in whole units of the GPU's granularity (Hopper: at least 8 SMs, in
multiples of 8; Ampere: at least 4, in multiples of 2). CUDA 13 reports the
granularity itself (``minSmPartitionSize``, ``smCoscheduledAlignment``); the
table below is only the fallback for older drivers. Requests are rounded by the
driver, so the backend reads the realized counts back and uses those.

The split table follows ``partition.base``: index 0 prefill only, then the
mixed splits with the decode share ascending, then decode only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drift_sgl.partition.base import SmSplit

#: Decode shares of the automatic split set, as fractions of the device's SMs.
#: Decode is memory-bound and saturates early, so the set is dense at the low
#: end; the high end serves large decode batches under tight TPOT targets.
AUTO_DECODE_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


@dataclass(frozen=True)
class SmGranularity:
    """How a GPU's SMs can be split: every group has ``min_count`` SMs or more, in
    multiples of ``multiple``."""

    min_count: int
    multiple: int
    #: Where the numbers come from: ``driver`` (queried) or ``table`` (by compute capability).
    source: str = "table"

    def __post_init__(self) -> None:
        if self.min_count < 1 or self.multiple < 1:
            raise ValueError(f"bad SM granularity {self}")

    def round_up(self, sms: int) -> int:
        """The group size the driver grants for a request of ``sms``."""
        return max(self.min_count, math.ceil(sms / self.multiple) * self.multiple)


def granularity_for(major: int, minor: int) -> SmGranularity:
    """The documented split granularity of a compute capability (fallback table).

    Compute capability 10 and later (Blackwell) split like Hopper; upstream's
    table raises there, which is one of the crashes drift avoids.
    """
    del minor  # no minor version changes the rule so far
    if major < 6:
        raise ValueError(f"compute capability {major}.x has no green contexts")
    if major == 6:
        return SmGranularity(1, 1)
    if major == 7:
        return SmGranularity(2, 2)
    if major == 8:
        return SmGranularity(4, 2)
    return SmGranularity(8, 8)


def driver_granularity(
    min_partition: int, alignment: int, fallback: SmGranularity
) -> SmGranularity:
    """The driver's figures where it reports them (0 = not reported), else ``fallback``."""
    if min_partition > 0 and alignment > 0:
        return SmGranularity(min_partition, alignment, source="driver")
    return fallback


def auto_pairs(total_sms: int, granularity: SmGranularity) -> tuple[tuple[int, int], ...]:
    """The mixed (prefill, decode) pairs ``--drift-splits auto`` asks for.

    Decode shares come from ``AUTO_DECODE_FRACTIONS``, rounded down to the
    granularity (never below its minimum); prefill gets every remaining SM.
    Shares that collapse onto the same count are dropped.
    """
    pairs: dict[int, tuple[int, int]] = {}
    for fraction in AUTO_DECODE_FRACTIONS:
        decode = (int(total_sms * fraction) // granularity.multiple) * granularity.multiple
        decode = max(decode, granularity.min_count)
        if total_sms - decode >= granularity.min_count:
            pairs.setdefault(decode, (total_sms - decode, decode))
    return tuple(pairs[d] for d in sorted(pairs))


def parse_splits(spec: str) -> tuple[tuple[int, int], ...] | None:
    """Parse ``--drift-splits``: ``auto`` (None) or ``"p1:d1,p2:d2,..."``.

    Each pair names the SMs of one mixed split (prefill:decode); the
    prefill-only and decode-only splits are always added. Raises ``ValueError``
    with what is wrong.
    """
    text = spec.strip()
    if text == "auto":
        return None
    pairs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 2:
            raise ValueError(f"{item.strip()!r} is not PREFILL_SMS:DECODE_SMS")
        try:
            prefill, decode = int(parts[0]), int(parts[1])
        except ValueError:
            raise ValueError(f"{item.strip()!r}: SM counts must be integers") from None
        if prefill < 1 or decode < 1:
            raise ValueError(
                f"{item.strip()!r}: both phases need SMs in a mixed split (the "
                "prefill-only and decode-only splits are always there)"
            )
        pairs.append((prefill, decode))
    if len({d for _, d in pairs}) != len(pairs):
        raise ValueError("two splits give decode the same number of SMs")
    return tuple(sorted(pairs, key=lambda pair: pair[1]))


def grant(pair: tuple[int, int], total_sms: int, granularity: SmGranularity) -> tuple[int, int]:
    """The (prefill, decode) SMs the driver grants for ``pair``.

    Decode is split off the whole device first and rounded up; prefill takes
    the remaining SMs, or a rounded group of them when it asked for fewer.
    Raises ``ValueError`` when the device cannot hold the pair.
    """
    prefill, decode = pair
    decode_granted = granularity.round_up(decode)
    remaining = total_sms - decode_granted
    if remaining < granularity.min_count:
        raise ValueError(
            f"{prefill}:{decode} leaves prefill {remaining} of the device's {total_sms} SMs once "
            f"decode is rounded to {decode_granted} (groups of at least {granularity.min_count}, "
            f"in multiples of {granularity.multiple})"
        )
    return min(remaining, granularity.round_up(prefill)), decode_granted


def granted_pairs(
    pairs: tuple[tuple[int, int], ...], total_sms: int, granularity: SmGranularity
) -> tuple[tuple[int, int], ...]:
    """``pairs`` as the driver will grant them, duplicates dropped, decode share ascending."""
    granted = {grant(pair, total_sms, granularity) for pair in pairs}
    return tuple(sorted(granted, key=lambda pair: (pair[1], -pair[0])))


def split_table(total_sms: int, mixed: tuple[tuple[int, int], ...]) -> tuple[SmSplit, ...]:
    """The full table: prefill only, the ``mixed`` pairs (in order), decode only."""
    return (
        SmSplit(prefill_units=total_sms, decode_units=0),
        *(SmSplit(prefill_units=p, decode_units=d) for p, d in mixed),
        SmSplit(prefill_units=0, decode_units=total_sms),
    )


def planned_split_table(
    total_sms: int,
    granularity: SmGranularity,
    requested: tuple[tuple[int, int], ...] | None = None,
) -> tuple[SmSplit, ...]:
    """The table a backend builds: the ``requested`` pairs (``--drift-splits``) or the
    automatic set, as the driver grants them, between prefill only and decode only.

    The simulator builds drift's table with it too, so it plans over the splits
    the server would have.
    """
    pairs = auto_pairs(total_sms, granularity) if requested is None else requested
    return split_table(total_sms, granted_pairs(pairs, total_sms, granularity))

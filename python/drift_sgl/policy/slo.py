"""SLO targets: the server-wide default and per-request classes.

A class is named by the request's routing key, a field SGLang already carries
from HTTP to the scheduler: the ``x-smg-routing-key`` header on the OpenAI
endpoints, ``"routing_key"`` in a ``/generate`` body. ``--drift-slo-classes``
maps names to targets, as inline JSON or a JSON file::

    {"interactive": {"ttft_ms": 500, "tpot_ms": 40}, "batch": {"ttft_ms": 30000}}

A target a class leaves out is the server-wide one (``--drift-ttft-slo-ms``,
``--drift-tpot-slo-ms``); a request without a class, or with a name no class
has, gets the server-wide targets (an unknown name is logged once: a gateway
may set routing keys for its own purposes, so it is not an error).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TARGET_KEYS = ("ttft_ms", "tpot_ms")


@dataclass(frozen=True)
class SloTarget:
    """Latency targets of a request; None: no target."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def __post_init__(self) -> None:
        for name in _TARGET_KEYS:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of milliseconds, got {value}")


@dataclass(frozen=True)
class SloTable:
    """The default targets and the named classes."""

    default: SloTarget = SloTarget()
    classes: Mapping[str, SloTarget] = field(default_factory=dict)

    def lookup(self, name: str | None) -> tuple[SloTarget, bool]:
        """The targets for a class name, and whether the name was known (None counts as known)."""
        if name is None:
            return self.default, True
        target = self.classes.get(name)
        return (self.default, False) if target is None else (target, True)


def parse_slo_classes(text: str, default: SloTarget) -> dict[str, SloTarget]:
    """Classes from inline JSON or a JSON file's path; raises ``ValueError`` naming the problem."""
    source = "--drift-slo-classes"
    stripped = text.strip()
    if not stripped.startswith("{"):
        path = Path(stripped)
        if not path.is_file():
            raise ValueError(f"neither a JSON object nor a file: {text!r}")
        source, stripped = str(path), path.read_text(encoding="utf-8")
    try:
        rows: Any = json.loads(stripped)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(rows, dict) or not rows:
        raise ValueError(f"{source}: expected a non-empty object of class name -> targets")
    classes = {}
    for name, row in rows.items():
        if not isinstance(row, dict) or not row:
            raise ValueError(
                f"{source}: class {name!r}: expected an object like {{'ttft_ms': 500}}"
            )
        unknown = set(row) - set(_TARGET_KEYS)
        if unknown:
            raise ValueError(
                f"{source}: class {name!r}: unknown key(s) {sorted(unknown)}; use ttft_ms, tpot_ms"
            )
        values = {}
        for key in _TARGET_KEYS:
            value = row.get(key, getattr(default, key))
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"{source}: class {name!r}: {key} must be a number, got {value!r}")
            values[key] = None if value is None else float(value)
        try:
            classes[name] = SloTarget(**values)
        except ValueError as err:
            raise ValueError(f"{source}: class {name!r}: {err}") from None
    return classes

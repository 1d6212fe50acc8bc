"""SLO targets: the server-wide default and per-request classes.

A request names a class, or states its targets, with the ``x-slo-class``,
``x-slo-ttft-ms`` and ``x-slo-tpot-ms`` headers or an ``"slo"`` body field
(``drift_sgl.door.slo`` carries them to the scheduler). ``--drift-slo-classes``
maps names to targets, as inline JSON or a JSON file::

    {"interactive": {"ttft_ms": 500, "tpot_ms": 40}, "batch": {"ttft_ms": 30000}}

A target a class leaves out is the server-wide one (``--drift-ttft-slo-ms``,
``--drift-tpot-slo-ms``); a target the request states itself beats its class's.
A request without a class gets the server-wide targets; the HTTP door refuses
an unknown class name (400), so one only arrives from SGLang's Python
``Engine``, which has no door: it gets the server-wide targets, logged once.
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

    def resolve(
        self, name: str | None, ttft_ms: float | None = None, tpot_ms: float | None = None
    ) -> tuple[SloTarget, bool]:
        """The targets a request states, else its class's; and whether the class is known."""
        base, known = self.lookup(name)
        target = SloTarget(
            ttft_ms=base.ttft_ms if ttft_ms is None else ttft_ms,
            tpot_ms=base.tpot_ms if tpot_ms is None else tpot_ms,
        )
        return target, known


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

"""A request's own SLO, from HTTP to the scheduler.

A client (or a gateway in front of drift) states what one request needs with
the headers LLM gateways and inference schedulers use::

    x-slo-ttft-ms: 500        time-to-first-token target, ms
    x-slo-tpot-ms: 40         time-per-output-token target, ms
    x-slo-class: interactive  a class of --drift-slo-classes

or with a body field on ``/generate``, ``/v1/completions`` and
``/v1/chat/completions``: ``"slo": {"ttft_ms": 500, "tpot_ms": 40, "class": "interactive"}``.
Precedence, per target: a header, then the body field, then the class's
target, then the server-wide one (``--drift-ttft-slo-ms``, ``--drift-tpot-slo-ms``).
Headers win because a gateway sets them for the operator; the body is the
client's own wish. Junk (a non-number, zero, negative, NaN, an unknown class)
is refused with a 400 naming the header or field.

The targets travel to the scheduler in the request's sampling parameters,
``custom_params["__drift_slo"]``: the same private transport SGLang uses for
its own scheduler-side values (``__sglang_reasoning_end_token_ids``), so they
follow every tokenizer, session and ``n > 1`` path without a new IPC field.
The gateway's ``x-smg-routing-key`` (sticky sessions) is left to the gateway.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from drift_sgl.door.checks import RequestRejected

HEADER_TTFT = "x-slo-ttft-ms"
HEADER_TPOT = "x-slo-tpot-ms"
HEADER_CLASS = "x-slo-class"
#: Routes whose body may carry the field.
SLO_ROUTES = frozenset({"/generate", "/v1/completions", "/v1/chat/completions"})
#: The body field, and its keys -> the header each one stands for.
BODY_FIELD = "slo"
BODY_KEYS = {"ttft_ms": HEADER_TTFT, "tpot_ms": HEADER_TPOT, "class": HEADER_CLASS}
#: Key of ``sampling_params.custom_params`` that carries the targets.
CARRIER_KEY = "__drift_slo"


@dataclass(frozen=True)
class RequestedSlo:
    """What one request asked for; None: not stated (the class or server decides)."""

    slo_class: str | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def as_custom_param(self) -> dict[str, str | float | None]:
        return {"class": self.slo_class, "ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms}

    @classmethod
    def from_custom_params(cls, custom_params: Any) -> RequestedSlo | None:
        """The targets a request carries (None: it stated none, or the carrier is malformed)."""
        if not isinstance(custom_params, dict):
            return None
        row = custom_params.get(CARRIER_KEY)
        if not isinstance(row, dict):
            return None
        name = row.get("class")
        return cls(
            slo_class=name if isinstance(name, str) else None,
            ttft_ms=_positive_or_none(row.get("ttft_ms")),
            tpot_ms=_positive_or_none(row.get("tpot_ms")),
        )


def requested_slo(headers: Mapping[str, str], classes: Collection[str]) -> RequestedSlo | None:
    """The SLO headers of a request (None: it has none); raises ``RequestRejected`` on junk."""
    name = headers.get(HEADER_CLASS)
    ttft = headers.get(HEADER_TTFT)
    tpot = headers.get(HEADER_TPOT)
    if name is None and ttft is None and tpot is None:
        return None
    if name is not None:
        name = name.strip()
        if name not in classes:
            known = ", ".join(sorted(classes)) or "none: the server has no --drift-slo-classes"
            raise RequestRejected(f"{HEADER_CLASS}: unknown SLO class {name!r} (classes: {known})")
    return RequestedSlo(
        slo_class=name,
        ttft_ms=None if ttft is None else _milliseconds(HEADER_TTFT, ttft),
        tpot_ms=None if tpot is None else _milliseconds(HEADER_TPOT, tpot),
    )


def headers_from_body_field(value: Any) -> dict[str, str]:
    """The body's ``"slo"`` object as the headers it stands for; raises ``RequestRejected``."""
    where = f"request body field '{BODY_FIELD}'"
    if not isinstance(value, dict):
        raise RequestRejected(f'{where}: expected an object like {{"ttft_ms": 500}}')
    unknown = set(value) - set(BODY_KEYS)
    if unknown:
        raise RequestRejected(f"{where}: unknown key(s) {sorted(unknown)}; use {sorted(BODY_KEYS)}")
    headers = {}
    for key, header in BODY_KEYS.items():
        item = value.get(key)
        if item is None:
            continue
        if key == "class":
            if not isinstance(item, str):
                raise RequestRejected(f"{where}: class must be a string, got {item!r}")
            headers[header] = item
        elif isinstance(item, bool) or not isinstance(item, int | float):
            raise RequestRejected(f"{where}: {key} must be a number of milliseconds, got {item!r}")
        else:
            headers[header] = repr(float(_milliseconds(f"{where}: {key}", str(item))))
    return headers


def attach(obj: Any, requested: RequestedSlo) -> None:
    """Put ``requested`` into the sampling parameters of a ``GenerateReqInput`` (every prompt)."""
    params = obj.sampling_params
    if params is None:
        obj.sampling_params = params = {}
    for row in params if isinstance(params, list) else [params]:
        if not isinstance(row, dict):
            continue  # SGLang refuses it with its own message
        custom = row.get("custom_params")
        if custom is None:
            custom = {}
        if isinstance(custom, dict):  # anything else: SGLang refuses it with its own message
            row["custom_params"] = {**custom, CARRIER_KEY: requested.as_custom_param()}


def _milliseconds(where: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise RequestRejected(f"{where}: expected a positive number of milliseconds, got {text!r}")
    return value


def _positive_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None

"""Find the highest load a system sustains within its SLOs.

Shared by the simulator (``python -m drift_sgl.sim --find-goodput``) and the
real-server benchmark (``bench/goodput.py``): both call ``find_goodput`` with
a function that runs the workload at a session rate and returns its figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def find_goodput(
    evaluate: Callable[[float], dict[str, Any]],
    bound: float,
    start_rate: float,
    bisect_steps: int = 8,
    max_doublings: int = 12,
    progress: Callable[[float, dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any] | None, list[dict[str, float]]]:
    """The highest rate tried whose attainment >= ``bound`` (None if none) and every try.

    Every rate tried above the returned one failed, by construction.
    """
    results: dict[float, dict[str, Any]] = {}
    search: list[dict[str, float]] = []

    def passes(rate: float) -> bool:
        result = results[rate] = evaluate(rate)
        point = {"rate": rate, "slo_attainment": result["slo_attainment"]}
        if result.get("stopped_early"):
            point["stopped_early"] = True  # the attainment is an upper bound
        search.append(point)
        if progress:
            progress(rate, result)
        return result["slo_attainment"] >= bound and not result.get("stopped_early")

    lo: float | None = None
    hi: float | None = None
    if passes(start_rate):
        lo = start_rate
        for _ in range(max_doublings):
            if not passes(lo * 2):
                hi = lo * 2
                break
            lo *= 2
    else:
        hi = start_rate
        for _ in range(max_doublings):
            if passes(hi / 2):
                lo = hi / 2
                break
            hi /= 2
    if lo is None:
        return None, search
    if hi is not None:
        for _ in range(bisect_steps):
            mid = (lo + hi) / 2
            if passes(mid):
                lo = mid
            else:
                hi = mid
    return results[lo], search

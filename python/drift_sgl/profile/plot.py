"""Predicted vs measured latency, one panel per phase (needs matplotlib: `.[plot]`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from drift_sgl.latency.model import LatencyModel
from drift_sgl.latency.samples import PHASES, Sample


def predicted_ms(profile: LatencyModel, sample: Sample) -> float:
    """Solo prediction for a solo sample, worst case (guarded) for a co-run one."""
    if sample.phase == "prefill":
        return profile.prefill_ms(
            sample.new_tokens,
            sample.prefix_tokens,
            sample.sm,
            worst_case=sample.co_run,
            batch_size=sample.batch_size,
        )
    return profile.decode_ms(sample.batch_size, sample.kv_tokens, sample.sm, sample.co_run)


def plot_predicted_vs_measured(
    profile: LatencyModel, samples: Sequence[Sample], out: str | Path, title: str | None = None
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError as err:
        raise RuntimeError("plotting needs matplotlib: pip install 'drift-sgl[plot]'") from err

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, phase in zip(axes, PHASES, strict=True):
        rows = [s for s in samples if s.phase == phase]
        shares = sorted({s.sm for s in rows})
        for sm in shares:
            for co_run, marker in ((False, "o"), (True, "x")):
                group = [s for s in rows if s.sm == sm and s.co_run == co_run]
                if not group:
                    continue
                label = f"sm={sm}" + (", co-run (worst case)" if co_run else "")
                ax.scatter(
                    [s.latency_ms for s in group],
                    [predicted_ms(profile, s) for s in group],
                    s=12,
                    marker=marker,
                    alpha=0.7,
                    label=label,
                )
        if rows:
            low = min(s.latency_ms for s in rows) * 0.8
            high = max(s.latency_ms for s in rows) * 1.25
            line = [low, high]
            ax.plot(line, line, color="black", linewidth=1)
            ax.fill_between(
                line, [v * 0.92 for v in line], [v * 1.08 for v in line], color="grey", alpha=0.2
            )
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_minor_formatter(NullFormatter())
        error = profile.errors.get(phase, {})
        note = f" (held-out p95 error {error['p95_ape']:.1%})" if error.get("held_out") else ""
        ax.set_title(f"{phase}{note}")
        ax.set_xlabel("measured (ms)")
        ax.set_ylabel("predicted (ms)")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title or profile.describe(), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)

"""drift's Prometheus series, beside SGLang's on ``/metrics`` (``--enable-metrics``).

Created in the scheduler process on the rank where SGLang collects its own
scheduler metrics, with SGLang's labels (``model_name`` and the rest): SGLang
runs prometheus_client in multiprocess mode, so series made here are served by
its HTTP server's ``/metrics`` like its own. docs/monitoring/README.md lists
every series and the Grafana dashboard that plots them.

Every counter of ``MuxCounters`` (``/server_info``) is exported as
``drift:<name>_total``; the loop adds what a counter cannot say: the split it
chose, prefill layers per step, gang sizes and durations, the planner's time,
the decode step's predicted and measured time, and TTFT attainment per SLO class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from drift_sgl.scheduler.counters import MuxCounters

#: Seconds: from tens of microseconds (a planner decision) to seconds (a CPU step).
_SECONDS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
    1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_LAYERS = (1, 2, 4, 8, 16, 32, 64, 128)
_REQUESTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: The class label of a request without one.
NO_CLASS = "default"


class DriftMetrics:
    """The series, and one method per event of the loop."""

    def __init__(self, labels: Mapping[str, str], registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        self.labels = dict(labels)
        names = list(self.labels)
        registry = REGISTRY if registry is None else registry
        self._counters = {
            spec.name: Counter(
                f"drift:{spec.name}",
                f"drift's MuxCounters.{spec.name} (see /server_info and docs/architecture.md).",
                labelnames=names,
                registry=registry,
            ).labels(**self.labels)
            for spec in fields(MuxCounters)
        }
        self._published = MuxCounters()
        self._decode_share = Gauge(
            "drift:decode_share",
            "Share of the device's SM units the chosen split gives decode (1: all).",
            labelnames=names,
            registry=registry,
            multiprocess_mode="mostrecent",
        ).labels(**self.labels)

        def histogram(name: str, documentation: str, buckets: tuple) -> Any:
            return Histogram(
                name, documentation, labelnames=names, registry=registry, buckets=buckets
            ).labels(**self.labels)

        self._prefill_layers = histogram(
            "drift:prefill_layers_per_step",
            "Transformer layers of prefill launched in a step that ran prefill.",
            _LAYERS,
        )
        self._gang_requests = histogram(
            "drift:gang_requests",
            "Requests of a prefill gang, counted when it merges into decode.",
            _REQUESTS,
        )
        self._gang_seconds = histogram(
            "drift:gang_duration_seconds",
            "Time from a gang's start to its merge into decode.",
            _SECONDS,
        )
        self._planner_seconds = histogram(
            "drift:planner_decision_seconds", "Time the policy took to decide one step.", _SECONDS
        )
        self._decode_predicted = histogram(
            "drift:decode_step_predicted_seconds",
            "The latency model's time for the decode step it ran (at the chosen split).",
            _SECONDS,
        )
        self._decode_measured = histogram(
            "drift:decode_step_seconds",
            "Measured time of a decode step (launch to results).",
            _SECONDS,
        )
        self._ttft = Counter(
            "drift:ttft_slo_requests",
            "Requests that got their first token, by SLO class and whether the scheduler "
            "produced it by their TTFT deadline (met: yes/no/none).",
            labelnames=[*names, "slo_class", "met"],
            registry=registry,
        )

    def publish_counters(self, counters: MuxCounters) -> None:
        """Add what each ``MuxCounters`` field gained since the last call."""
        for spec in fields(MuxCounters):
            gained = getattr(counters, spec.name) - getattr(self._published, spec.name)
            if gained > 0:
                self._counters[spec.name].inc(gained)
                setattr(self._published, spec.name, getattr(counters, spec.name))

    def step(self, decode_share: float, prefill_layers: int, planner_s: float) -> None:
        self._decode_share.set(decode_share)
        self._planner_seconds.observe(planner_s)
        if prefill_layers > 0:
            self._prefill_layers.observe(prefill_layers)

    def decode_step(self, predicted_s: float | None, measured_s: float) -> None:
        self._decode_measured.observe(measured_s)
        if predicted_s is not None:
            self._decode_predicted.observe(predicted_s)

    def gang_merged(self, requests: int, seconds: float) -> None:
        self._gang_requests.observe(requests)
        self._gang_seconds.observe(seconds)

    def first_token(self, slo_class: str | None, met: bool | None) -> None:
        label = "none" if met is None else ("yes" if met else "no")
        self._ttft.labels(**self.labels, slo_class=slo_class or NO_CLASS, met=label).inc()


def drift_metrics(metrics_collector: Any) -> DriftMetrics | None:
    """drift's series when SGLang collects metrics on this rank (``--enable-metrics``)."""
    if metrics_collector is None:
        return None
    return DriftMetrics(getattr(metrics_collector, "labels", {}))

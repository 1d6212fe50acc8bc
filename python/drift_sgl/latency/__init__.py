"""Latency model: predicted prefill and decode time per SM share (docs/latency-model.md).

model = LatencyModel.load("profile.json")
model.prefill_ms(new_tokens=2048, prefix_tokens=4096, sm=66)
model.decode_ms(batch_size=64, kv_tokens=200_000, sm=66, worst_case=True)
"""

from drift_sgl.latency.fit import FitError, fit_latency_model
from drift_sgl.latency.identity import DeviceIdentity, ModelIdentity
from drift_sgl.latency.model import ContentionGuard, LatencyModel, PhaseFit, ProfileError
from drift_sgl.latency.samples import Sample, SampleError, read_samples, write_sample

__all__ = [
    "ContentionGuard",
    "DeviceIdentity",
    "FitError",
    "LatencyModel",
    "ModelIdentity",
    "PhaseFit",
    "ProfileError",
    "Sample",
    "SampleError",
    "fit_latency_model",
    "read_samples",
    "write_sample",
]

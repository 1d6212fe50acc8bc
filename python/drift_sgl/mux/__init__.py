"""The multiplexing step, written once for every engine that runs it.

``mux_step`` is the gang life cycle (merge, resume, decide, shed, admit,
re-plan, launch); ``MuxEngine`` is what it asks of an engine. The server's
``DriftScheduler`` (SGLang) and the simulator's ``MuxInstance`` (the latency
model) are the two engines; test/unit/test_mux_step.py drives the step with
a fake one.
"""

from drift_sgl.mux.gangs import GangSlots
from drift_sgl.mux.step import MuxEngine, mux_step

__all__ = ["GangSlots", "MuxEngine", "mux_step"]

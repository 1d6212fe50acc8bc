"""``python -m drift_sgl.profile``: measure, fit, estimate and plot latency profiles."""

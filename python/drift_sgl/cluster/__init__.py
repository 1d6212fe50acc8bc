"""Several drift workers behind SGLang's gateway (``python -m drift_sgl.launch_cluster``)."""

"""The multiplexing scheduler (imports SGLang: load lazily)."""

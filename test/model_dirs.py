"""Model directories for tests that only read a model's config (no weights)."""

from __future__ import annotations

import json
from pathlib import Path


def fake_model_dir(path: Path, architecture: str) -> Path:
    """A model directory whose config.json names ``architecture``."""
    path.mkdir(parents=True)
    config = {
        "architectures": [architecture],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 512,
    }
    (path / "config.json").write_text(json.dumps(config))
    return path

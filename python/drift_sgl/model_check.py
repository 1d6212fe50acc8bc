"""What the launcher knows about the model before any process starts.

drift multiplexes by running a prefill as blocks of transformer layers, which
needs the model class's ``forward_split_prefill`` (SGLang implements it for
Llama, Qwen, Gemma, GLM-4 and some others) and a text-only forward (the
layer-split path embeds tokens only: it never runs a vision or audio encoder).
Embedding and reward models only prefill, so there is nothing to multiplex:
the launcher serves them with SGLang's own scheduler.

Importing SGLang's model registry costs 10-15 s (it imports every model), so
whether a class has ``forward_split_prefill`` is read from the sources of
``sglang.srt.models``, following base classes by name. When that reading is
inconclusive the launcher lets the server start, and the scheduler checks the
loaded model itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drift_sgl.config import DriftConfigError

_CLASS = re.compile(r"^class (\w+)\(([^)]*)\):", re.M)
_SPLIT_PREFILL = re.compile(r"^\s+def forward_split_prefill\(", re.M)
#: Bases that end a search: they define no forward_split_prefill.
_ROOTS = frozenset({"Module", "object", "ABC", "Generic", "PreTrainedModel"})


@dataclass(frozen=True)
class ModelFacts:
    """The served model as SGLang's ``ModelConfig`` describes it."""

    architecture: str
    #: Generates tokens (False: an embedding or reward model, prefill only).
    generative: bool
    #: Takes images, video or audio (SGLang's ``is_multimodal``).
    multimodal: bool
    #: The class has a layer-split prefill (None: the sources do not say).
    split_prefill: bool | None
    #: Uses n-gram embeddings, which SGLang prepares only for its own chunked prefill.
    ngram_embedding: bool = False


def inspect_model(server_args: Any) -> ModelFacts:
    """Read the model's config through SGLang (fast: no weights, no model import)."""
    from sglang.srt.configs.model_config import ModelConfig

    try:
        config = ModelConfig.from_server_args(server_args)
    except (OSError, ValueError, KeyError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        where = server_args.model_path
        raise DriftConfigError(
            "--model-path", f"SGLang cannot load the model's config from {where}: {reason}"
        ) from None
    architectures = list(getattr(config.hf_config, "architectures", None) or ["unknown"])
    return ModelFacts(
        architecture=architectures[0],
        generative=bool(config.is_generation),
        multimodal=bool(config.is_multimodal),
        split_prefill=has_split_prefill(architectures[0]),
        ngram_embedding=bool(getattr(config, "use_ngram_embedding", False)),
    )


def check_servable(facts: ModelFacts) -> None:
    """Refuse, naming the architecture, a generative model drift cannot multiplex."""
    if not facts.generative:
        return
    if facts.multimodal:
        raise DriftConfigError(
            "--model-path",
            f"{facts.architecture} is a multimodal model; drift's layer-split prefill embeds "
            "text only and never runs its vision or audio encoder (serve it with "
            "python -m sglang.launch_server)",
        )
    if facts.ngram_embedding:
        raise DriftConfigError(
            "--model-path",
            f"{facts.architecture} uses n-gram embeddings, which SGLang prepares only inside "
            "its own chunked prefill; serve it with python -m sglang.launch_server",
        )
    if facts.split_prefill is False:
        raise DriftConfigError(
            "--model-path",
            f"{facts.architecture} has no layer-split prefill (forward_split_prefill) in "
            "SGLang; drift serves Llama, Qwen, Gemma, GLM-4 and the other architectures "
            "SGLang can prefill by layers",
        )


def has_split_prefill(architecture: str) -> bool | None:
    """Whether SGLang's class ``architecture`` (or a base) defines forward_split_prefill."""
    classes = _model_classes()
    pending, seen = [architecture], set()
    while pending:
        name = pending.pop()
        if name in seen or name in _ROOTS:
            continue
        seen.add(name)
        if name not in classes:
            return None
        defines, bases = classes[name]
        if defines:
            return True
        pending.extend(bases)
    return False


def _model_classes() -> dict[str, tuple[bool, tuple[str, ...]]]:
    """Every class in ``sglang.srt.models``: (defines forward_split_prefill, base names)."""
    import sglang.srt.models as models

    classes: dict[str, tuple[bool, tuple[str, ...]]] = {}
    for path in sorted(Path(next(iter(models.__path__))).glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        matches = list(_CLASS.finditer(source))
        for i, match in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(source)
            body = source[match.end() : end]
            bases = tuple(
                base.strip().split("[")[0].split(".")[-1]
                for base in match.group(2).split(",")
                if base.strip() and "=" not in base
            )
            classes.setdefault(match.group(1), (bool(_SPLIT_PREFILL.search(body)), bases))
    return classes

"""Checks of one request as it arrives, before SGLang normalises and tokenises it.

SGLang validates much of a request itself (sampling parameters, context length,
``token_ids_logprob``), but not everything that reaches the model: a token id
outside the vocabulary indexes past the embedding table inside the forward and
kills the scheduler process, with every other user's request in it. These
checks cover what SGLang leaves open. Each failure is a ``RequestRejected``
(a ``ValueError``: SGLang's HTTP layer answers it with a 400 in its usual
error format) whose message names the field and the allowed range.

Pure functions over the request's fields: no SGLang import, unit-tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: The most samples one prompt may ask for (``n``); OpenAI's own API allows 128.
MAX_PARALLEL_SAMPLES = 1024

#: Multimodal fields, refused for a text-only model (SGLang would ignore or crash on them).
MULTIMODAL_FIELDS = ("image_data", "video_data", "audio_data")

#: Grammar fields of the sampling parameters: strings, which SGLang's grammar
#: manager compiles in the scheduler (a malformed one ends its request with a 400).
GRAMMAR_FIELDS = ("json_schema", "regex", "ebnf", "structural_tag")


class RequestRejected(ValueError):
    """A request refused at the door; the message names the field and the range."""


@dataclass(frozen=True)
class DoorLimits:
    """What one server accepts."""

    vocab_size: int
    #: Whether the model takes images, video or audio.
    multimodal: bool = False
    #: Input embeddings must have this width (the model's hidden size); None: unchecked.
    hidden_size: int | None = None
    max_parallel_samples: int = MAX_PARALLEL_SAMPLES


#: Fields a batch request may give per prompt, as a list SGLang indexes by prompt.
PER_PROMPT_FIELDS = (
    "rid",
    "sampling_params",
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "token_ids_logprob",
    "lora_path",
    "custom_logit_processor",
)


def check_request(obj: Any, limits: DoorLimits) -> None:
    """Check a ``GenerateReqInput`` or ``EmbeddingReqInput`` before SGLang sees it."""
    _check_batch_lists(obj)
    _check_token_ids("input_ids", getattr(obj, "input_ids", None), limits.vocab_size)
    _check_input_embeds(getattr(obj, "input_embeds", None), limits.hidden_size)
    if not limits.multimodal:
        for name in MULTIMODAL_FIELDS:
            if _present(getattr(obj, name, None)):
                raise RequestRejected(
                    f"{name}: this model takes text only; send no {name.split('_')[0]} input"
                )
    for where, params in _each("sampling_params", getattr(obj, "sampling_params", None)):
        if isinstance(params, dict):
            _check_sampling_params(where, params, limits)
    for where, count in _each("top_logprobs_num", getattr(obj, "top_logprobs_num", None)):
        _check_count(where, count, 0, limits.vocab_size)
    for where, start in _each("logprob_start_len", getattr(obj, "logprob_start_len", None)):
        if start is not None and start != -1:
            _check_count(where, start, 0, None, note="(or -1: from the output only)")
    ids_logprob = getattr(obj, "token_ids_logprob", None)
    _check_token_ids("token_ids_logprob", ids_logprob, limits.vocab_size)


def check_tokenized(obj: Any, input_ids: list[int] | None) -> None:
    """Check one prompt as SGLang tokenised it: there must be something to prefill.

    An empty text tokenises to no tokens with a tokenizer that adds no BOS, and
    a prefill of zero tokens raises inside the model's forward. A request that
    continues a session is exempt: the scheduler puts the session's tokens first.
    """
    if input_ids is None or len(input_ids) > 0:
        return
    if getattr(obj, "input_embeds", None) is None and not getattr(obj, "session_params", None):
        raise RequestRejected(
            "text: the prompt is empty after tokenization; send at least one token"
        )


def _batch_size(obj: Any) -> int | None:
    """The number of prompts of a batch request; None for a single prompt."""
    text, ids = getattr(obj, "text", None), getattr(obj, "input_ids", None)
    if isinstance(text, list):
        return len(text)
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        return len(ids)
    return None


def _check_batch_lists(obj: Any) -> None:
    """A per-prompt list must have an entry for every prompt of the batch."""
    size = _batch_size(obj)
    if size is None:
        for name in ("rid", "sampling_params"):
            if getattr(obj, name, None) == []:
                raise RequestRejected(f"{name}: an empty list; give a single value for one prompt")
        return
    for name in PER_PROMPT_FIELDS:
        value = getattr(obj, name, None)
        if name == "token_ids_logprob" and not (value and isinstance(value[0], list)):
            continue  # one list of ids for every prompt
        if isinstance(value, list) and len(value) < size:
            raise RequestRejected(
                f"{name}: a list of {len(value)} for a batch of {size} prompts; "
                "give one entry per prompt, or a single value for all"
            )


def _check_sampling_params(where: str, params: dict, limits: DoorLimits) -> None:
    n = params.get("n")
    if n is not None:
        _check_count(f"{where}.n", n, 1, limits.max_parallel_samples)
    for name in ("max_new_tokens", "min_new_tokens", "top_k"):
        value = params.get(name)
        if value is not None and not _is_int(value):
            raise RequestRejected(f"{where}.{name}: must be an integer, got {value!r}")
    for name in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty",
                 "repetition_penalty"):  # fmt: skip
        value = params.get(name)
        if value is not None and not _is_finite_number(value):
            raise RequestRejected(f"{where}.{name}: must be a finite number, got {value!r}")
    _check_token_ids(f"{where}.stop_token_ids", params.get("stop_token_ids"), limits.vocab_size)
    bias = params.get("logit_bias")
    if bias is not None:
        _check_logit_bias(f"{where}.logit_bias", bias, limits.vocab_size)
    for name in GRAMMAR_FIELDS:
        text = params.get(name)
        if text is not None and not isinstance(text, str):
            raise RequestRejected(
                f"{where}.{name}: must be a string (a JSON schema serialised to a string), "
                f"got {type(text).__name__}"
            )


def _check_logit_bias(where: str, bias: Any, vocab_size: int) -> None:
    if not isinstance(bias, dict):
        raise RequestRejected(f"{where}: must map token ids to numbers")
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise RequestRejected(f"{where}: key {key!r} is not a token id") from None
        if not 0 <= token < vocab_size:
            raise RequestRejected(
                f"{where}: token id {token} is outside the vocabulary [0, {vocab_size})"
            )
        if not _is_finite_number(value):
            raise RequestRejected(f"{where}[{key}]: must be a finite number, got {value!r}")


def _check_token_ids(where: str, ids: Any, vocab_size: int) -> None:
    """A list of token ids, or a list of such lists (a batch)."""
    if ids is None:
        return
    if not isinstance(ids, (list, tuple)):
        raise RequestRejected(f"{where}: must be a list of token ids")
    for i, item in enumerate(ids):
        if isinstance(item, (list, tuple)):
            _check_token_ids(f"{where}[{i}]", item, vocab_size)
            continue
        if not _is_int(item):
            raise RequestRejected(f"{where}[{i}]: token ids are integers, got {item!r}")
        if not 0 <= item < vocab_size:
            raise RequestRejected(
                f"{where}[{i}]: token id {item} is outside the vocabulary [0, {vocab_size})"
            )


def _check_input_embeds(embeds: Any, hidden_size: int | None) -> None:
    if embeds is None:
        return
    if not isinstance(embeds, list) or not embeds:
        raise RequestRejected("input_embeds: must be a non-empty list of vectors")
    batch = embeds if isinstance(embeds[0], list) and embeds[0] and isinstance(
        embeds[0][0], list) else [embeds]  # fmt: skip
    for b, rows in enumerate(batch):
        if not isinstance(rows, list) or not rows:
            raise RequestRejected(f"input_embeds[{b}]: must be a non-empty list of vectors")
        for i, row in enumerate(rows):
            if not isinstance(row, list) or (hidden_size is not None and len(row) != hidden_size):
                width = len(row) if isinstance(row, list) else type(row).__name__
                raise RequestRejected(
                    f"input_embeds: vector {i} has width {width}; the model's hidden size is "
                    f"{hidden_size}"
                )
            if not all(_is_finite_number(x) for x in row):
                raise RequestRejected(f"input_embeds: vector {i} holds a non-finite number")


def _check_count(where: str, value: Any, low: int, high: int | None, note: str = "") -> None:
    if not _is_int(value):
        raise RequestRejected(f"{where}: must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise RequestRejected(f"{where}: {value} is out of range; allowed: {bound} {note}".strip())


def _each(name: str, value: Any) -> Iterator[tuple[str, Any]]:
    """A single value or a batch's list of values, each with its field name."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield f"{name}[{i}]", item
    elif value is not None:
        yield name, value


def _present(value: Any) -> bool:
    if isinstance(value, list):
        return any(_present(item) for item in value)
    return value not in (None, "", {})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

"""drift_sgl.door.checks: what the door refuses, and what it lets through."""

from __future__ import annotations

import math

import pytest
from sglang.srt.managers.io_struct import EmbeddingReqInput, GenerateReqInput

from drift_sgl.door.checks import DoorLimits, RequestRejected, check_request, check_tokenized

LIMITS = DoorLimits(vocab_size=100, hidden_size=8)


def _generate(**fields) -> GenerateReqInput:
    fields.setdefault("sampling_params", {"max_new_tokens": 4})
    return GenerateReqInput(**fields)


ACCEPTED = {
    "text": _generate(text="hello"),
    "ids at both ends": _generate(input_ids=[0, 99]),
    "batched ids": _generate(input_ids=[[1, 2], [3]]),
    "n within bound": _generate(text="hi", sampling_params={"n": 4, "max_new_tokens": 2}),
    "top logprobs = vocab": _generate(text="hi", return_logprob=True, top_logprobs_num=100),
    "logprob_start_len -1": _generate(text="hi", return_logprob=True, logprob_start_len=-1),
    "stop ids and bias": _generate(
        text="hi", sampling_params={"stop_token_ids": [5], "logit_bias": {"7": -1.5}}
    ),
    "regex string": _generate(text="hi", sampling_params={"regex": "(yes|no)"}),
    "embeddings of the hidden size": _generate(input_embeds=[[0.0] * 8, [1.0] * 8]),
    "batch with one params dict": _generate(text=["a", "b"]),
    "batch with a params list": _generate(
        text=["a", "b"], sampling_params=[{"max_new_tokens": 1}, {"max_new_tokens": 2}]
    ),
    "batch sharing token_ids_logprob": _generate(text=["a", "b"], token_ids_logprob=[1, 2]),
    "embedding request": EmbeddingReqInput(input_ids=[1, 2, 3]),
}

REJECTED = {
    "id = vocab": (_generate(input_ids=[1, 100]), "input_ids[1]: token id 100"),
    "negative id": (_generate(input_ids=[-1]), "input_ids[0]: token id -1"),
    "batched id": (_generate(input_ids=[[1], [2, 10**9]]), "input_ids[1][1]"),
    "id not an int": (_generate(input_ids=[1, 2.0]), "input_ids[1]: token ids are integers"),
    "id a bool": (_generate(input_ids=[True]), "input_ids[0]"),
    "embedding request id": (EmbeddingReqInput(input_ids=[1000]), "input_ids[0]"),
    "n = 0": (_generate(text="hi", sampling_params={"n": 0}), "sampling_params.n: 0"),
    "n negative": (_generate(text="hi", sampling_params={"n": -3}), "allowed: [1, 1024]"),
    "n huge": (_generate(text="hi", sampling_params={"n": 10**6}), "sampling_params.n"),
    "n in a batch": (
        _generate(text=["a", "b"], sampling_params=[{}, {"n": 0}]),
        "sampling_params[1].n",
    ),
    "top logprobs > vocab": (
        _generate(text="hi", return_logprob=True, top_logprobs_num=101),
        "top_logprobs_num: 101 is out of range; allowed: [0, 100]",
    ),
    "top logprobs negative": (
        _generate(text="hi", return_logprob=True, top_logprobs_num=-1),
        "top_logprobs_num",
    ),
    "logprob_start_len < -1": (
        _generate(text="hi", return_logprob=True, logprob_start_len=-2),
        "logprob_start_len: -2",
    ),
    "stop id": (
        _generate(text="hi", sampling_params={"stop_token_ids": [100]}),
        "sampling_params.stop_token_ids[0]",
    ),
    "bias key": (
        _generate(text="hi", sampling_params={"logit_bias": {"100": 1}}),
        "sampling_params.logit_bias: token id 100",
    ),
    "bias key not a number": (
        _generate(text="hi", sampling_params={"logit_bias": {"x": 1}}),
        "sampling_params.logit_bias: key 'x'",
    ),
    "bias value infinite": (
        _generate(text="hi", sampling_params={"logit_bias": {"3": math.inf}}),
        "sampling_params.logit_bias[3]",
    ),
    "token_ids_logprob": (
        _generate(text="hi", return_logprob=True, token_ids_logprob=[5, 100]),
        "token_ids_logprob[1]",
    ),
    "temperature nan": (
        _generate(text="hi", sampling_params={"temperature": math.nan}),
        "sampling_params.temperature: must be a finite number",
    ),
    "top_p infinite": (
        _generate(text="hi", sampling_params={"top_p": math.inf}),
        "sampling_params.top_p",
    ),
    "max_new_tokens a float": (
        _generate(text="hi", sampling_params={"max_new_tokens": 2.5}),
        "sampling_params.max_new_tokens: must be an integer",
    ),
    "json schema not a string": (
        _generate(text="hi", sampling_params={"json_schema": {"type": "object"}}),
        "sampling_params.json_schema: must be a string",
    ),
    "image for a text model": (
        _generate(text="hi", image_data="data:image/png;base64,AAAA"),
        "image_data: this model takes text only",
    ),
    "embeddings of another width": (
        _generate(input_embeds=[[0.0] * 3]),
        "input_embeds: vector 0 has width 3; the model's hidden size is 8",
    ),
    "embeddings with nan": (_generate(input_embeds=[[math.nan] * 8]), "non-finite"),
    "batch params list too short": (
        _generate(text=["a", "b"], sampling_params=[{"max_new_tokens": 1}]),
        "sampling_params: a list of 1 for a batch of 2 prompts",
    ),
    "empty params list for one prompt": (
        _generate(text="a", sampling_params=[]),
        "sampling_params: an empty list",
    ),
    "batch rid list too short": (_generate(text=["a", "b"], rid=["x"]), "rid: a list of 1"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_valid_requests_pass(case):
    check_request(ACCEPTED[case], LIMITS)


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_invalid_requests_are_rejected_naming_the_field(case):
    request, message = REJECTED[case]
    with pytest.raises(RequestRejected) as err:
        check_request(request, LIMITS)
    assert message in str(err.value)


def test_a_rejection_is_a_value_error_which_sglang_answers_with_400():
    assert issubclass(RequestRejected, ValueError)


def test_multimodal_model_takes_images():
    request = _generate(text="hi", image_data="data:image/png;base64,AAAA")
    check_request(request, DoorLimits(vocab_size=100, multimodal=True))


def test_an_empty_prompt_is_refused_once_tokenised():
    with pytest.raises(RequestRejected, match="prompt is empty"):
        check_tokenized(_generate(text=""), [])
    check_tokenized(_generate(text="hi"), [5])
    # A session continuation starts from the session's tokens.
    check_tokenized(_generate(text="", session_params={"id": "s"}), [])

"""Property-based requests against a live server: from valid to hostile.

``request_strategy`` draws one HTTP request for ``/generate``,
``/v1/completions`` or ``/v1/chat/completions``; every field is either a value
the API documents or a hostile one (wrong type, out of range, ids beyond the
vocabulary, malformed grammars, images for a text-only model...). ``fuzz``
sends drawn requests (hypothesis picks and shrinks them) and checks the
invariants every server must keep, whatever it is sent:

- no 5xx answer;
- an answer within ``FuzzLimits.answer_timeout_s``, streams included;
- the server still answers a plain request afterwards.

The test suite runs it with a fixed seed (test/e2e/test_fuzz.py); bench/fuzz.py
runs longer sessions. hypothesis is a test dependency, imported on use.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests

# Token ids beyond any vocabulary, at the edges and far out.
HOSTILE_IDS = (-1, -(2**31), 2**31, 2**63 - 1, 10**6)
REGEXES = ("(yes|no)", "[a-z]{1,4}", "(", "a{2,1}", "\\", "[")
EBNFS = ('root ::= "a" | "b"', "root ::= ( ", "root ::= missing")
JSON_SCHEMAS = (
    '{"type": "object", "properties": {"a": {"type": "integer"}}}',
    '{"type": "nonsense"}',
    "{not json",
    '{"type": 5}',
)
IMAGE = "data:image/png;base64,iVBORw0KGgo="

# Requests that killed a drift server (most kill plain SGLang 0.5.23 too) before
# drift's door checks: name -> (route, body, the field the 400 must name).
OUT_OF_VOCAB = 10**6  # beyond any test model's vocabulary
GOOD_MESSAGES = [{"role": "user", "content": "hello"}]
HOSTILE_REQUESTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "generate ids beyond the vocabulary": (
        "/generate",
        {"input_ids": [5, OUT_OF_VOCAB + 10], "sampling_params": {"max_new_tokens": 2}},
        "input_ids[1]",
    ),
    "generate negative id": ("/generate", {"input_ids": [5, -3]}, "input_ids[1]"),
    "generate batched ids": ("/generate", {"input_ids": [[5], [7, 10**9]]}, "input_ids[1][1]"),
    "completions prompt ids": (
        "/v1/completions",
        {"model": "tiny", "prompt": [5, OUT_OF_VOCAB], "max_tokens": 2},
        "input_ids[1]",
    ),
    "completions negative prompt id": (
        "/v1/completions",
        {"model": "tiny", "prompt": [[5, 6], [5, -1]], "max_tokens": 2},
        "input_ids[1][1]",
    ),
    "generate top logprobs": (
        "/generate",
        {"text": "hi", "return_logprob": True, "top_logprobs_num": 10**9},
        "top_logprobs_num",
    ),
    "completions logprobs": (
        "/v1/completions",
        {"model": "tiny", "prompt": "hi", "logprobs": 10**6, "max_tokens": 2},
        "top_logprobs_num",
    ),
    "chat top logprobs": (
        "/v1/chat/completions",
        {"model": "tiny", "messages": GOOD_MESSAGES, "logprobs": True, "top_logprobs": 10**6},
        "top_logprobs_num",
    ),
    "chat n 0": (
        "/v1/chat/completions",
        {"model": "tiny", "messages": GOOD_MESSAGES, "n": 0},
        ".n",
    ),
    "completions negative n": (
        "/v1/completions",
        {"model": "tiny", "prompt": "hi", "n": -2, "max_tokens": 2},
        ".n",
    ),
    "generate image for a text model": (
        "/generate",
        {"text": "hi", "image_data": "data:image/png;base64,iVBORw0KGgo="},
        "image_data",
    ),
    "generate stop token ids": (
        "/generate",
        {"text": "hi", "sampling_params": {"stop_token_ids": [OUT_OF_VOCAB + 5]}},
        "stop_token_ids",
    ),
    "chat logit bias": (
        "/v1/chat/completions",
        {"model": "tiny", "messages": GOOD_MESSAGES, "logit_bias": {str(OUT_OF_VOCAB + 7): 5}},
        "logit_bias",
    ),
    "generate token ids logprob": (
        "/generate",
        {"text": "hi", "return_logprob": True, "token_ids_logprob": [OUT_OF_VOCAB + 1]},
        "token_ids_logprob",
    ),
    "generate empty prompt": ("/generate", {"text": "", "sampling_params": {}}, "prompt is empty"),
    "generate batch with too few sampling params": (
        "/generate",
        {"text": ["hi", "yo"], "sampling_params": [{"max_new_tokens": 2}]},
        "sampling_params",
    ),
    "generate malformed regex": (
        "/generate",
        {"text": "hi", "sampling_params": {"max_new_tokens": 2, "regex": "(unclosed"}},
        "regex",
    ),
    "generate malformed ebnf": (
        "/generate",
        {"text": "hi", "sampling_params": {"max_new_tokens": 2, "ebnf": "root ::= ( "}},
        "ebnf",
    ),
    "chat malformed json schema": (
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": GOOD_MESSAGES,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": 5}},
            },
        },
        "json",
    ),
}


@dataclass(frozen=True)
class FuzzLimits:
    """The bounds a request's answer must keep."""

    answer_timeout_s: float = 60.0


@dataclass
class FuzzReport:
    """What one fuzz session sent and got back."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    by_path: Counter = field(default_factory=Counter)
    slowest_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "by_path": dict(self.by_path),
            "slowest_s": round(self.slowest_s, 3),
        }


class InvariantBroken(AssertionError):
    """The server broke an invariant; the message holds the request."""


def request_strategy(vocab_size: int):
    """A hypothesis strategy of ``(path, body)`` pairs: half of them valid in
    every field, half with hostile values mixed into any field."""
    from hypothesis import strategies as st

    return st.one_of(_requests(st, vocab_size, False), _requests(st, vocab_size, True))


def _requests(st: Any, vocab_size: int, hostile_mode: bool):
    hostile = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        st.lists(st.integers(-5, 5), max_size=3),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    )

    def maybe(valid, bad=()):
        """``valid``; in hostile mode also ``bad`` values and any hostile value."""
        if not hostile_mode:
            return valid
        return st.one_of(valid, valid, *([st.sampled_from(bad)] if bad else []), hostile)

    token_id = maybe(st.integers(0, vocab_size - 1), HOSTILE_IDS)
    ids = st.lists(token_id, min_size=1, max_size=8)
    # Valid lengths stay short, so a session is hundreds of requests a minute on a CPU.
    max_tokens = maybe(st.integers(1, 6), (-1, 0, 10**12, "8", 2.5, 2**64))
    small_count = maybe(st.integers(0, 1), (-1, 10**9))
    prob = maybe(st.floats(0.05, 1.0), (0.0, 2.5, -1.0))
    penalty = maybe(st.floats(-2.0, 2.0), (3.0, -2.5))
    grammar = {
        "regex": maybe(st.sampled_from(REGEXES[:2]), REGEXES[2:]),
        "ebnf": maybe(st.sampled_from(EBNFS[:1]), EBNFS[1:]),
        "json_schema": maybe(st.sampled_from(JSON_SCHEMAS[:1]), JSON_SCHEMAS[1:]),
    }
    common = {
        "temperature": prob,
        "top_p": prob,
        "top_k": maybe(st.integers(1, 50), (0, -2)),
        "min_p": prob,
        "frequency_penalty": penalty,
        "presence_penalty": penalty,
        "stop": maybe(st.lists(st.text(min_size=1, max_size=3), max_size=3)),
        "stop_token_ids": maybe(ids),
        "n": maybe(st.integers(1, 3), (0, -1, 10**7)),
        "logit_bias": maybe(st.dictionaries(token_id.map(str), st.floats(-100, 100), max_size=2)),
        "seed": maybe(st.integers(0, 2**31)),
    }
    sampling = st.fixed_dictionaries(
        {"max_new_tokens": max_tokens},
        optional={**common, **grammar, "min_new_tokens": small_count, "ignore_eos": st.booleans()},
    )
    texts = st.one_of(
        st.text(min_size=1, max_size=40),
        st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3),
    )
    prompt_fields = {
        "text": maybe(texts, ("",)),
        "input_ids": maybe(st.one_of(ids, st.lists(ids, min_size=1, max_size=3)), ([], [[]])),
    }
    generate = st.fixed_dictionaries(
        {"sampling_params": maybe(sampling)},
        optional={
            **(prompt_fields if hostile_mode else {}),
            "return_logprob": maybe(st.booleans()),
            "top_logprobs_num": maybe(st.integers(0, 5), (-1, vocab_size + 1, 10**9)),
            "logprob_start_len": maybe(st.integers(-1, 0), (-7, 10**6)),
            "token_ids_logprob": maybe(ids),
            "stream": st.booleans(),
            **({"image_data": st.just(IMAGE)} if hostile_mode else {}),
        },
    )
    if not hostile_mode:  # exactly one of the two prompt fields
        one_prompt = st.sampled_from(sorted(prompt_fields)).flatmap(
            lambda name: prompt_fields[name].map(lambda value: {name: value})
        )
        generate = st.tuples(generate, one_prompt).map(lambda pair: {**pair[0], **pair[1]})
    openai_common = {
        **common,
        "logprobs": maybe(st.booleans()),
        "stream": st.booleans(),
        "stream_options": maybe(st.fixed_dictionaries({"include_usage": st.booleans()})),
    }
    completions = st.fixed_dictionaries(
        {
            "model": st.just("default"),
            "max_tokens": max_tokens,
            "prompt": maybe(
                st.one_of(
                    st.text(min_size=1, max_size=40), ids, st.lists(ids, min_size=1, max_size=2)
                )
            ),
        },
        optional={
            **openai_common,
            "logprobs": maybe(st.integers(0, 5)),
            "echo": st.booleans(),
            **grammar,
        },
    )
    part = st.fixed_dictionaries(
        {"type": st.just("text"), "text": st.text(min_size=1, max_size=10)}
    )
    image = st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.just({"url": IMAGE})}
    )
    parts = st.one_of(part, image) if hostile_mode else part
    content = st.one_of(st.text(min_size=1, max_size=40), st.lists(parts, min_size=1, max_size=2))
    roles = ["user", "system", "assistant", "bogus"] if hostile_mode else ["user"]
    message = st.fixed_dictionaries({"role": st.sampled_from(roles), "content": maybe(content)})
    schemas = JSON_SCHEMAS if hostile_mode else JSON_SCHEMAS[:1]
    response_format = maybe(
        st.one_of(
            st.just({"type": "json_object"}),
            st.just({"type": "text"}),
            st.sampled_from(schemas).map(
                lambda s: {"type": "json_schema", "json_schema": {"name": "x", "schema": _loads(s)}}
            ),
        )
    )
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    chat = st.fixed_dictionaries(
        {
            "model": st.just("default"),
            "messages": maybe(st.lists(message, min_size=1, max_size=3), ([],)),
            "max_tokens": max_tokens,
        },
        optional={
            **openai_common,
            "top_logprobs": maybe(st.integers(0, 5)),
            "response_format": response_format,
            "tools": maybe(st.just([tool])),
            "tool_choice": maybe(st.sampled_from(["auto", "required", "none"])),
            **grammar,
        },
    )
    return st.one_of(
        st.tuples(st.just("/generate"), generate),
        st.tuples(st.just("/v1/completions"), completions),
        st.tuples(st.just("/v1/chat/completions"), chat),
    )


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def send(url: str, path: str, body: Any, limits: FuzzLimits, headers: dict | None = None):
    """Send one request, read the whole answer; returns (status, seconds)."""
    start = time.monotonic()
    data = json.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    stream = isinstance(body, dict) and body.get("stream") is True
    with requests.post(
        url + path, data=data, headers=hdrs, timeout=limits.answer_timeout_s, stream=stream
    ) as resp:
        for _ in resp.iter_content(chunk_size=None):
            if time.monotonic() - start > limits.answer_timeout_s:
                raise InvariantBroken(f"no end of the answer in {limits.answer_timeout_s} s")
        return resp.status_code, time.monotonic() - start


def alive(url: str, headers: dict | None = None) -> bool:
    """Whether the server answers a plain request."""
    body = {"text": "hello", "sampling_params": {"max_new_tokens": 1}}
    try:
        resp = requests.post(url + "/generate", json=body, headers=headers, timeout=60)
    except requests.RequestException:
        return False
    return resp.status_code == 200


def fuzz(
    url: str,
    vocab_size: int,
    examples: int,
    seed: int | None = 0,
    limits: FuzzLimits = FuzzLimits(),
    headers: dict | None = None,
) -> FuzzReport:
    """Send ``examples`` drawn requests; raises ``InvariantBroken`` (after
    hypothesis shrank the request) when the server breaks an invariant.
    ``seed`` None draws afresh; an int repeats the same requests."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fixed_seed

    report = FuzzReport()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(request_strategy(vocab_size))
    def one_request(request: tuple[str, Any]) -> None:
        path, body = request
        try:
            status, seconds = send(url, path, body, limits, headers)
        except requests.RequestException as err:
            broken = "server down" if not alive(url, headers) else "no answer"
            raise InvariantBroken(f"{broken} ({err}) after {path} {json.dumps(body)}") from None
        report.requests += 1
        report.statuses[status] += 1
        report.by_path[path] += 1
        report.slowest_s = max(report.slowest_s, seconds)
        if status >= 500:
            raise InvariantBroken(f"HTTP {status} for {path} {json.dumps(body)}")

    if seed is not None:
        one_request = fixed_seed(seed)(one_request)
    one_request()
    if not alive(url, headers):
        raise InvariantBroken("the server no longer answers a plain request")
    return report


def duplicate_rid_burst(
    url: str, copies: int = 4, rid: str = "fuzz-duplicate", headers: dict | None = None
) -> list[int]:
    """Send ``copies`` requests with one request id at the same moment, half of
    them streamed; returns their statuses (SGLang serves one, refuses the rest)."""
    from concurrent.futures import ThreadPoolExecutor

    limits = FuzzLimits()

    def one(i: int) -> int:
        body = {
            "text": "the same request, again",
            "rid": rid,
            "stream": i % 2 == 1,
            "sampling_params": {"max_new_tokens": 32, "ignore_eos": True},
        }
        return send(url, "/generate", body, limits, headers)[0]

    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(one, range(copies)))

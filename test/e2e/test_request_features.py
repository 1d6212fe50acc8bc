"""Every request feature of SGLang's APIs gives SGLang's answer through drift.

The same request goes to the shared drift server and to plain SGLang on the
same tiny model; greedy answers must be equal field for field (ids and clocks
aside, see e2e/parity.py). Constrained decoding is comparable too: the grammar
masks the same logits on both servers.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from e2e.client import assert_kv_pool_empty, drift_state, iter_sse, open_chat_stream, post
from e2e.parity import assert_equivalent, assert_same_answer

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "what is the weather in paris?"}]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 6}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "the weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["paris", "rome"]}},
                "required": ["city"],
            },
        },
    }
]


def sampling(**extra):
    return {"max_new_tokens": 16, "temperature": 0, **extra}


def chat_request(**extra):
    return {"model": "tiny", "messages": MESSAGES, "max_tokens": 24, "temperature": 0, **extra}


# --- structured outputs ------------------------------------------------------

GENERATE_CONSTRAINTS = {
    "regex": {"regex": "(yes|no)"},
    "json_schema": {"json_schema": json.dumps(SCHEMA), "max_new_tokens": 48},
    "ebnf": {"ebnf": 'root ::= "yes" | "no" | "maybe"'},
    "structural_tag": {
        "structural_tag": json.dumps(
            {
                "type": "structural_tag",
                "structures": [
                    {"begin": "<f>", "schema": {"type": "object"}, "end": "</f>"},
                ],
                "triggers": ["<f>"],
            }
        )
    },
}


@pytest.mark.parametrize("kind", sorted(GENERATE_CONSTRAINTS))
def test_generate_with_a_grammar(drift_server, sglang_server, kind):
    body = {"text": "Answer:", "sampling_params": sampling(**GENERATE_CONSTRAINTS[kind])}
    out = assert_same_answer(drift_server, sglang_server, "/generate", body, timeout=60)
    if kind == "regex":
        assert out["text"] in ("yes", "no")


CHAT_FORMATS = {
    "json_object": {"type": "json_object"},
    "json_schema": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
    "structural_tag": {
        "type": "structural_tag",
        "structures": [{"begin": "<f>", "schema": {"type": "object"}, "end": "</f>"}],
        "triggers": ["<f>"],
    },
}


@pytest.mark.parametrize("kind", sorted(CHAT_FORMATS))
def test_chat_response_format(drift_server, sglang_server, kind):
    body = chat_request(response_format=CHAT_FORMATS[kind], max_tokens=48)
    out = assert_same_answer(drift_server, sglang_server, "/v1/chat/completions", body, 60)
    if kind != "structural_tag":
        assert out["choices"][0]["message"]["content"].startswith("{")


def test_the_first_users_curl_answers(drift_server):
    """The request of the issue that found the bug: it used to hang for good."""
    body = chat_request(response_format={"type": "json_object"}, max_tokens=16)
    resp = post(drift_server, "/v1/chat/completions", body, timeout=30)
    assert resp.status_code == 200, resp.text


def test_constrained_requests_under_concurrency(drift_server, sglang_server):
    """Grammar requests wait for their grammar beside running work, then join it."""
    bodies = [
        {"text": f"q{i}:", "sampling_params": sampling(regex=f"(yes|no|n{i}[0-9]+)")}
        for i in range(6)
    ]
    results: dict[int, object] = {}

    def run(i):
        results[i] = post(drift_server, "/generate", bodies[i], timeout=60).json()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    for i, body in enumerate(bodies):
        assert_equivalent(results[i], post(sglang_server, "/generate", body).json(), body)


# --- tool calls ---------------------------------------------------------------

TOOL_CHOICES = {
    "auto": "auto",
    "required": "required",
    "named": {"type": "function", "function": {"name": "get_weather"}},
}


@pytest.mark.parametrize("choice", sorted(TOOL_CHOICES))
def test_tool_calls(drift_server, sglang_server, choice):
    body = chat_request(tools=TOOLS, tool_choice=TOOL_CHOICES[choice], max_tokens=64)
    assert_same_answer(drift_server, sglang_server, "/v1/chat/completions", body, 60)


# --- sampling features --------------------------------------------------------

GENERATE_FEATURES = {
    "n=3": {"text": "hello", "sampling_params": sampling(n=3)},
    "batch": {"text": ["a b c", "hello there"], "sampling_params": sampling()},
    "input_ids": {"input_ids": [5, 6, 7, 8, 9], "sampling_params": sampling()},
    "output_logprobs": {
        "text": "hello world",
        "sampling_params": sampling(max_new_tokens=6),
        "return_logprob": True,
        "top_logprobs_num": 3,
    },
    "input_logprobs": {
        "text": "the quick brown fox",
        "sampling_params": sampling(max_new_tokens=4),
        "return_logprob": True,
        "logprob_start_len": 2,
        "top_logprobs_num": 2,
        "token_ids_logprob": [1, 2, 3],
    },
    "stop_strings": {"text": "hello", "sampling_params": sampling(stop=["a", "e"])},
    "stop_token_ids": {"text": "hello", "sampling_params": sampling(stop_token_ids=[21, 68])},
    "min_new_tokens": {
        "text": "hello",
        "sampling_params": sampling(stop=["a"], min_new_tokens=6),
    },
    "penalties": {
        "text": "repeat repeat repeat",
        "sampling_params": sampling(
            frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.2
        ),
    },
    "logit_bias": {"text": "hello", "sampling_params": sampling(logit_bias={"21": 50.0})},
    "stop_regex": {"text": "hello", "sampling_params": sampling(stop_regex=["[0-9]"])},
    "hidden_states": {"text": "hello", "sampling_params": sampling(), "return_hidden_states": True},
    "entropy_and_prompt_ids": {
        "text": "hello",
        "sampling_params": sampling(),
        "return_entropy": True,
        "return_prompt_token_ids": True,
    },
    # max_new_tokens 0: a prefill-only request (scoring), no token sampled.
    "prefill_only_logprobs": {
        "text": "score this sentence",
        "sampling_params": {"max_new_tokens": 0},
        "return_logprob": True,
        "logprob_start_len": 0,
    },
}


def test_custom_logit_processor(drift_server, sglang_server):
    from sglang.srt.sampling.custom_logit_processor import DisallowedTokensLogitsProcessor

    body = {
        "text": "hello",
        "sampling_params": sampling(custom_params={"token_ids": [166, 21]}),
        "custom_logit_processor": DisallowedTokensLogitsProcessor().to_str(),
    }
    out = assert_same_answer(drift_server, sglang_server, "/generate", body)
    assert not {166, 21} & set(out["output_ids"])


def test_beam_search_is_refused_with_a_clear_error(drift_server):
    """SGLang's layer-split prefill cannot serve beam search (a beam request used to
    kill the scheduler); drift refuses the request and keeps serving."""
    body = {"text": "hello", "sampling_params": sampling(beam_width=3)}
    resp = post(drift_server, "/generate", body)
    assert resp.status_code == 400, resp.text
    assert "beam search" in resp.json()["error"]["message"]
    assert post(drift_server, "/generate", {"text": "hi", "sampling_params": sampling()}).ok


@pytest.mark.parametrize("feature", sorted(GENERATE_FEATURES))
def test_generate_features(drift_server, sglang_server, feature):
    assert_same_answer(drift_server, sglang_server, "/generate", GENERATE_FEATURES[feature])


OPENAI_FEATURES = {
    "chat n=2": ("/v1/chat/completions", chat_request(n=2, max_tokens=8)),
    "chat logprobs": ("/v1/chat/completions", chat_request(logprobs=True, top_logprobs=2)),
    "chat stop": ("/v1/chat/completions", chat_request(stop=["a"], min_tokens=3)),
    "completion echo logprobs": (
        "/v1/completions",
        {
            "model": "t",
            "prompt": "hello world",
            "max_tokens": 5,
            "temperature": 0,
            "logprobs": 2,
            "echo": True,
        },
    ),
    "completion of token ids": (
        "/v1/completions",
        {"model": "t", "prompt": [5, 6, 7, 8], "max_tokens": 6, "temperature": 0},
    ),
    "score": (
        "/v1/score",
        {"query": "is it good?", "items": ["yes it is", "no"], "label_token_ids": [21, 68]},
    ),
    "anthropic messages": (
        "/v1/messages",
        {"model": "t", "messages": MESSAGES, "max_tokens": 8, "temperature": 0},
    ),
    "ollama chat": (
        "/api/chat",
        {
            "model": "t",
            "messages": MESSAGES,
            "stream": False,
            "options": {"num_predict": 8, "temperature": 0},
        },
    ),
}


@pytest.mark.parametrize("feature", sorted(OPENAI_FEATURES))
def test_openai_features(drift_server, sglang_server, feature):
    path, body = OPENAI_FEATURES[feature]
    assert_same_answer(drift_server, sglang_server, path, body)


def streamed(server, body):
    with open_chat_stream(server, body) as resp:
        assert resp.status_code == 200
        chunks = list(iter_sse(resp))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    usage = [c["usage"] for c in chunks if c.get("usage")]
    return text, usage[-1]


def test_streaming_with_usage(drift_server, sglang_server):
    body = chat_request(stream=True, stream_options={"include_usage": True}, max_tokens=12)
    text, usage = streamed(drift_server, body)
    assert (text, usage) == streamed(sglang_server, body)
    assert usage["completion_tokens"] > 0


# --- SGLang's frontend language (agents) --------------------------------------


def agent_program():
    import sglang as sgl

    @sgl.function
    def agent(s, question):
        s += sgl.system("you are a tool-using agent")
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("plan", max_tokens=8, temperature=0))
        s += sgl.user("which tool?")
        s += sgl.assistant(sgl.select("tool", choices=["search", "calculator", "weather"]))
        s += sgl.user("yes or no?")
        s += sgl.assistant(sgl.gen("verdict", max_tokens=4, regex="(yes|no)", temperature=0))
        s += sgl.user("a colour?")
        s += sgl.assistant(sgl.gen("colour", choices=["red", "green", "blue"]))
        branches = s.fork(2)
        for i, branch in enumerate(branches):
            branch += sgl.user(f"branch {i}")
            branch += sgl.assistant(sgl.gen("idea", max_tokens=6, temperature=0))
        s += sgl.user("merge " + branches[0]["idea"] + branches[1]["idea"])
        s += sgl.assistant(sgl.gen("final", max_tokens=8, temperature=0))

    return agent


def run_agent(server):
    import sglang as sgl

    backend = sgl.RuntimeEndpoint(server.url, api_key=server.api_key)
    state = agent_program().run(question="weather in paris?", backend=backend)
    names = ("plan", "tool", "verdict", "colour", "final")
    return {name: state[name] for name in names}, state.text()


def test_frontend_agent_program(drift_server, sglang_server):
    ours = run_agent(drift_server)
    assert ours == run_agent(sglang_server)
    assert ours[0]["verdict"] in ("yes", "no")
    assert ours[0]["tool"] in ("search", "calculator", "weather")


# --- sessions, control routes -------------------------------------------------


def session_turns(server):
    session = post(server, "/open_session", {"capacity_of_str_len": 2000}).json()
    params = {"max_new_tokens": 6, "temperature": 0}
    first = post(
        server,
        "/generate",
        {"text": "first turn", "session_params": {"id": session}, "sampling_params": params},
    ).json()
    rid = first["meta_info"]["id"]
    second = post(
        server,
        "/generate",
        {
            "text": " second turn",
            "session_params": {"id": session, "rid": rid},
            "sampling_params": params,
        },
    ).json()
    branch = post(
        server,
        "/generate",
        {
            "text": " another branch",
            "session_params": {"id": session, "rid": rid, "offset": -1, "replace": True},
            "sampling_params": params,
        },
    ).json()
    closed = post(server, "/close_session", {"session_id": session}).status_code
    after = post(
        server,
        "/generate",
        {"text": "x", "session_params": {"id": session, "rid": rid}, "sampling_params": params},
    )
    turns = [first, second, branch]
    return turns, closed, after.status_code, second["meta_info"]["cached_tokens"]


def test_session_api(drift_server, sglang_server):
    ours = session_turns(drift_server)
    assert_equivalent(ours[:3], session_turns(sglang_server)[:3])
    _, closed, after, cached = ours
    assert cached > 0  # the second turn reused the session's context
    assert closed == 200 and after == 400


def long_generation(server, tag: str, tokens: int = 300) -> threading.Thread:
    def run():
        body = {
            "text": f"{tag} " + uuid.uuid4().hex,
            "sampling_params": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True},
        }
        thread.result = post(server, "/generate", body).json()

    thread = threading.Thread(target=run, daemon=True)
    thread.result = None
    thread.start()
    return thread


def test_abort_all(drift_server):
    threads = [long_generation(drift_server, f"abort-all {i}", 2000) for i in range(4)]
    time.sleep(1.0)
    assert post(drift_server, "/abort_request", {"abort_all": True}).status_code == 200
    for thread in threads:
        thread.join(timeout=60)
        assert thread.result["meta_info"]["finish_reason"]["type"] == "abort", thread.result
    assert_kv_pool_empty(drift_server)


def test_pause_in_place_then_continue_keeps_tokens(drift_server, sglang_server):
    body = {"text": "pause me", "sampling_params": sampling(max_new_tokens=80, ignore_eos=True)}
    expected = post(sglang_server, "/generate", body).json()
    thread = threading.Thread(
        target=lambda: setattr(thread, "result", post(drift_server, "/generate", body).json())
    )
    thread.start()
    time.sleep(0.3)
    assert post(drift_server, "/pause_generation", {"mode": "in_place"}).status_code == 200
    time.sleep(0.5)
    assert post(drift_server, "/continue_generation", {}).status_code == 200
    thread.join(timeout=60)
    assert_equivalent(thread.result, expected)


def test_update_weights_from_disk_mid_traffic(drift_server, sglang_server, tiny_model_dir):
    """An RL loop reloads weights while requests run; nothing is lost and the
    reloaded server answers as SGLang does."""
    threads = [long_generation(drift_server, f"reload {i}", 60) for i in range(3)]
    time.sleep(0.3)
    resp = post(drift_server, "/update_weights_from_disk", {"model_path": str(tiny_model_dir)})
    assert resp.status_code == 200 and resp.json()["success"], resp.text
    for thread in threads:
        thread.join(timeout=60)
        assert len(thread.result["output_ids"]) == 60
    body = {"text": "after the reload", "sampling_params": sampling()}
    assert_same_answer(drift_server, sglang_server, "/generate", body)
    assert drift_state(drift_server)["gang_in_flight"] is None

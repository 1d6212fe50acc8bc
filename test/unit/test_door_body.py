"""drift_sgl.door.body: body size bound and validator crashes, on a bare ASGI app."""

from __future__ import annotations

import asyncio

import orjson
from pydantic import BaseModel, model_validator

from drift_sgl.door.body import BodyCheckMiddleware, openai_request_models


class Fragile(BaseModel):
    """A request model whose validator assumes ``fmt`` is a dict, like SGLang's."""

    fmt: object = None

    @model_validator(mode="before")
    @classmethod
    def read_fmt(cls, data):
        if isinstance(data, dict) and data.get("fmt") is not None:
            data["fmt"].get("type")  # AttributeError for a non-dict
        return data


async def _echo_app(scope, receive, send):
    """Answers 200 with the body it received."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _call(middleware, body: bytes, path="/v1/chat/completions", method="POST", chunks=1):
    size = len(body)
    headers = [(b"content-length", str(size).encode())] if chunks == 1 else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    step = max(1, -(-size // chunks))
    parts = [body[i : i + step] for i in range(0, size, step)] or [b""]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return status, payload


def _middleware(max_bytes=1000):
    return BodyCheckMiddleware(_echo_app, max_bytes, {"/v1/chat/completions": Fragile})


def test_a_valid_body_reaches_the_app_unchanged():
    body = orjson.dumps({"fmt": {"type": "text"}})
    assert _call(_middleware(), body) == (200, body)


def test_a_validator_crash_is_a_400_naming_it():
    status, payload = _call(_middleware(), orjson.dumps({"fmt": 1}))
    assert status == 400
    error = orjson.loads(payload)
    assert error["code"] == 400 and "AttributeError" in error["message"]


def test_malformed_json_is_left_to_sglang():
    assert _call(_middleware(), b'{"fmt": ')[0] == 200


def test_a_body_over_the_bound_is_a_413():
    for chunks in (1, 7):  # with a Content-Length, and streamed without one
        status, payload = _call(_middleware(100), b"x" * 500, chunks=chunks)
        assert status == 413
        assert "--drift-max-request-mb" in orjson.loads(payload)["message"]


def test_other_routes_and_methods_pass():
    body = orjson.dumps({"fmt": 1})
    assert _call(_middleware(), body, path="/generate")[0] == 200
    assert _call(_middleware(), b"", method="GET")[0] == 200


def test_the_checked_routes_use_sglangs_request_models():
    models = openai_request_models()
    assert models["/v1/chat/completions"].__name__ == "ChatCompletionRequest"
    assert models["/v1/completions"].__name__ == "CompletionRequest"


def test_a_checked_route_with_an_slo_field_parses_the_body_once(monkeypatch):
    import drift_sgl.door.body as door_body

    parses = []

    class CountingJson:
        JSONDecodeError = orjson.JSONDecodeError
        dumps = staticmethod(orjson.dumps)

        @staticmethod
        def loads(raw):
            parses.append(raw)
            return orjson.loads(raw)

    monkeypatch.setattr(door_body, "orjson", CountingJson)
    seen = {}

    async def app(scope, receive, send):
        seen.update((k.decode(), v.decode()) for k, v in scope["headers"])
        await _echo_app(scope, receive, send)

    middleware = BodyCheckMiddleware(app, 1000, {"/v1/chat/completions": Fragile})
    body = orjson.dumps({"fmt": {"type": "text"}, "slo": {"ttft_ms": 500}})
    assert _call(middleware, body) == (200, body)
    assert seen["x-slo-ttft-ms"] == "500.0" and len(parses) == 1
    # Both checks still act on the one parse: a validator crash is a 400.
    assert _call(middleware, orjson.dumps({"fmt": 1, "slo": {"ttft_ms": 500}}))[0] == 400

"""The HTTP body, checked before SGLang's routes parse it: size, and its parse.

An ASGI middleware the launcher adds to SGLang's FastAPI app:

- a body over ``max_bytes`` is refused with a 413 before it is read whole
  (clients sending gigabytes would otherwise take the server's memory);
- a JSON body on an OpenAI route is validated with SGLang's own request model
  first. Some of that model's validators assume a field's type and raise an
  ``AttributeError`` or ``TypeError`` on another one (``"response_format": 1``),
  which FastAPI answers with a 500; here that becomes a 400 naming the cause.
  Validation errors pydantic reports itself are left to SGLang's handler (its
  400, its format). JSON nesting is bounded by the parser (orjson: 1024 levels);
- a request's ``"slo"`` body field (``drift_sgl.door.slo``) becomes the
  ``x-slo-*`` headers it stands for, where the request has no such header, so
  that the tokenizer manager reads a request's SLO from one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from drift_sgl.door.checks import RequestRejected
from drift_sgl.door.slo import BODY_FIELD, SLO_ROUTES, headers_from_body_field

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Default bound on a request body: far above any prompt that fits a context window.
DEFAULT_MAX_BYTES = 64 * 2**20


def openai_request_models() -> dict[str, type]:
    """Route -> SGLang's pydantic request model, for the routes checked here."""
    from sglang.srt.entrypoints.openai import protocol

    return {
        "/v1/chat/completions": protocol.ChatCompletionRequest,
        "/v1/completions": protocol.CompletionRequest,
        "/v1/embeddings": protocol.EmbeddingRequest,
        "/v1/responses": protocol.ResponsesRequest,
        "/v1/score": protocol.ScoringRequest,
        "/v1/tokenize": protocol.TokenizeRequest,
        "/v1/detokenize": protocol.DetokenizeRequest,
        "/tokenize": protocol.TokenizeRequest,
        "/detokenize": protocol.DetokenizeRequest,
    }


class BodyCheckMiddleware:
    """Bounds every POST body; pre-validates the OpenAI routes' bodies."""

    def __init__(
        self, app: App, max_bytes: int = DEFAULT_MAX_BYTES, models: dict | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.models = openai_request_models() if models is None else models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _error(send, 413, self._too_large(declared))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _error(send, 413, self._too_large(size))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        path = scope.get("path", "")
        model = self.models.get(path)
        with_slo = path in SLO_ROUTES and b'"%s"' % BODY_FIELD.encode() in body
        # Malformed JSON (None here) is left to SGLang's handler and its own 400.
        parsed = _parse(body) if model is not None or with_slo else None
        if model is not None and parsed is not None:
            problem = _validator_crash(model, parsed)
            if problem is not None:
                await _error(send, 400, problem)
                return
        if with_slo and parsed is not None:
            try:
                scope = _with_slo_headers(scope, parsed)
            except RequestRejected as err:
                await _error(send, 400, str(err))
                return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self, size: int) -> str:
        return (
            f"request body: {size} bytes is over this server's limit of {self.max_bytes} "
            "bytes (--drift-max-request-mb)"
        )


def _parse(body: bytes) -> Any:
    """The body's JSON, parsed once for both checks; None if it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _validator_crash(model: type, parsed: Any) -> str | None:
    """The message of a crash in ``model``'s validators on the parsed body, else None."""
    from pydantic import ValidationError

    try:
        model.model_validate(parsed)
    except ValidationError:
        return None
    except Exception as err:  # a validator that assumed a field's type
        return f"invalid request body: {type(err).__name__}: {err}"
    return None


def _with_slo_headers(scope: Scope, parsed: Any) -> Scope:
    """``scope`` with the headers the parsed body's SLO field stands for, where absent."""
    if not isinstance(parsed, dict) or parsed.get(BODY_FIELD) is None:
        return scope
    wanted = headers_from_body_field(parsed[BODY_FIELD])
    present = {name.lower() for name, _ in scope.get("headers", ())}
    added = [
        (name.encode(), value.encode())
        for name, value in wanted.items()
        if name.encode() not in present
    ]
    return {**scope, "headers": [*scope.get("headers", ()), *added]} if added else scope


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the client's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _error(send: Send, status: int, message: str) -> None:
    """An error in the format of SGLang's OpenAI routes."""
    kind = "RequestTooLarge" if status == 413 else "BadRequestError"
    payload = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

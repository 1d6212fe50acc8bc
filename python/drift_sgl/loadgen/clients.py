"""Two ways a multi-turn client talks to a server, measured the same way.

- ``OpenAIChatClient``: ``POST /v1/chat/completions`` with ``stream: true``,
  as OpenAI SDK users and most agent frameworks do. Works with any
  OpenAI-compatible server (SGLang, drift, vLLM).
- ``FrontendClient``: an SGLang frontend program (``sgl.function``) run on a
  ``RuntimeEndpoint``, as SGLang's own agent programs are written: the
  frontend renders the chat template and streams ``/generate``.

Both answer ``answer(messages, max_tokens, clock)`` with a ``StreamedAnswer``
and never raise for what the server does: a refused, failed or timed-out
request comes back with ``error`` set. Answers ask for exactly ``max_tokens``
tokens (``ignore_eos``), so output lengths follow the trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from drift_sgl.loadgen.stream import StreamedAnswer, read_chat_stream

Messages = list[dict[str, str]]


def chat_stream_body(
    model: str, messages: Messages, max_tokens: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A streamed, greedy chat request for exactly ``max_tokens`` tokens, with usage."""
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }


class ChatClient(Protocol):
    async def answer(
        self, messages: Messages, max_tokens: int, clock: Callable[[], float]
    ) -> StreamedAnswer: ...

    async def close(self) -> None: ...


class OpenAIChatClient:
    """Streamed chat completions over one aiohttp session (create it inside the event loop)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        import aiohttp

        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.model = model
        self.extra_body = dict(extra_body or {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._errors = (aiohttp.ClientError, asyncio.TimeoutError)
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            # One connection per in-flight request: sessions are concurrent.
            connector=aiohttp.TCPConnector(limit=0),
        )

    def body(self, messages: Messages, max_tokens: int) -> dict[str, Any]:
        return chat_stream_body(self.model, messages, max_tokens, self.extra_body)

    async def answer(
        self, messages: Messages, max_tokens: int, clock: Callable[[], float]
    ) -> StreamedAnswer:
        sent = clock()
        try:
            async with self._session.post(self.url, json=self.body(messages, max_tokens)) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:300]
                    return StreamedAnswer(sent_s=sent, error=f"HTTP {resp.status}: {detail}")
                return await read_chat_stream(resp.content, sent, clock)
        except self._errors as err:
            return StreamedAnswer(sent_s=sent, error=f"{type(err).__name__}: {err}")

    async def close(self) -> None:
        await self._session.close()


class FrontendClient:
    """One ``sgl.function`` per turn on a ``RuntimeEndpoint``, run in worker threads.

    The frontend is synchronous, so each turn runs in a thread of its own pool
    (sized for the concurrent sessions; the default pool would queue them).
    """

    def __init__(
        self, base_url: str, api_key: str | None = None, max_concurrency: int = 256
    ) -> None:
        import sglang as sgl

        self.backend = sgl.RuntimeEndpoint(base_url.rstrip("/"), api_key=api_key)
        self.program = _chat_turn_program(sgl)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="sgl-fe")

    async def answer(
        self, messages: Messages, max_tokens: int, clock: Callable[[], float]
    ) -> StreamedAnswer:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, messages, max_tokens, clock)

    def _run(
        self, messages: Messages, max_tokens: int, clock: Callable[[], float]
    ) -> StreamedAnswer:
        sent = clock()
        times: list[float] = []
        parts: list[str] = []
        try:
            state = self.program.run(
                messages=messages, max_tokens=max_tokens, backend=self.backend, stream=True
            )
            for chunk in state.text_iter("answer"):
                if chunk:
                    times.append(clock())
                    parts.append(chunk)
            error = state.error()
            meta = state.get_meta_info("answer") or {}
        except Exception as err:  # the frontend raises what requests raises
            return StreamedAnswer(sent_s=sent, error=f"{type(err).__name__}: {err}")
        if error is not None:
            return StreamedAnswer(sent_s=sent, error=f"{type(error).__name__}: {error}")
        if not times:
            return StreamedAnswer(sent_s=sent, error="the answer has no text")
        return StreamedAnswer(
            sent_s=sent,
            token_times_s=tuple(times),
            text="".join(parts),
            prompt_tokens=meta.get("prompt_tokens"),
            cached_tokens=meta.get("cached_tokens"),
            output_tokens=meta.get("completion_tokens") or len(times),
        )

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _chat_turn_program(sgl: Any) -> Any:
    """An SGLang frontend program: the conversation so far, then one generated answer."""
    roles = {"system": sgl.system, "user": sgl.user, "assistant": sgl.assistant}

    @sgl.function
    def chat_turn(s: Any, messages: Messages, max_tokens: int) -> None:
        for message in messages:
            s += roles[message["role"]](message["content"])
        s += sgl.assistant(sgl.gen("answer", max_tokens=max_tokens, ignore_eos=True, temperature=0))

    return chat_turn


class ServerInfoError(RuntimeError):
    """The server could not be asked what it serves."""


def discover(base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> dict[str, str]:
    """The served model's name and tokenizer path, asked of the server.

    SGLang answers ``/model_info`` (older versions ``/get_model_info``); any
    OpenAI-compatible server answers ``/v1/models``, whose first entry names
    the model (vLLM adds its local path as ``root``). Returns ``model`` and,
    when the server says, ``tokenizer``.
    """
    import json
    import urllib.error
    import urllib.request

    def get(path: str) -> dict[str, Any] | None:
        request = urllib.request.Request(base_url.rstrip("/") + path)
        if api_key:
            request.add_header("Authorization", f"Bearer {api_key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError:
            return None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ServerInfoError(f"cannot reach {base_url}: {err}") from err

    info: dict[str, str] = {}
    models = get("/v1/models")
    if models and models.get("data"):
        entry = models["data"][0]
        info["model"] = entry.get("id", "")
        if entry.get("root"):
            info["tokenizer"] = entry["root"]
    sglang_info = get("/model_info") or get("/get_model_info") or {}
    if sglang_info.get("tokenizer_path"):
        info["tokenizer"] = sglang_info["tokenizer_path"]
    if not info.get("model"):
        info["model"] = sglang_info.get("served_model_name") or sglang_info.get("model_path", "")
    if not info["model"]:
        raise ServerInfoError(f"{base_url} answers neither /v1/models nor /model_info")
    return info

"""Token times of one streamed answer, and the latencies they give.

A streamed OpenAI chat completion is a series of server-sent events, one
``data: {json}`` line each, ending with ``data: [DONE]``. A client sees a
token when the event carrying its text arrives, so an event's time is when
its line was read. With ``stream_options.include_usage`` the last event
carries ``usage``: the server's counts of prompt, cached and output tokens.

Latencies, as the simulator defines them (``drift_sgl.sim.metrics``):

- TTFT = first text event - request sent;
- TPOT = (last text event - first text event) / (output tokens - 1), with the
  server's output count when it reports one (an event may carry several
  tokens), else the number of text events; one-token answers have no TPOT;
- inter-token gaps: the time between consecutive text events.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamedAnswer:
    """What a client saw of one answer (times in seconds on the caller's clock)."""

    sent_s: float
    token_times_s: tuple[float, ...] = ()
    text: str = ""
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float | None:
        return self.token_times_s[0] - self.sent_s if self.token_times_s else None

    @property
    def tpot_s(self) -> float | None:
        if not self.token_times_s or self.output_tokens < 2:
            return None
        return (self.token_times_s[-1] - self.token_times_s[0]) / (self.output_tokens - 1)

    @property
    def gaps_s(self) -> list[float]:
        times = self.token_times_s
        return [b - a for a, b in itertools.pairwise(times)]


async def read_chat_stream(
    lines: AsyncIterable[bytes], sent_s: float, clock: Callable[[], float]
) -> StreamedAnswer:
    """Read an OpenAI chat-completion event stream to its end.

    ``clock`` is read as each event line arrives. Never raises for what the
    server sent: a malformed event, an error event or a stream that stops
    before ``[DONE]`` gives an answer with ``error`` set.
    """
    times: list[float] = []
    parts: list[str] = []
    usage: dict | None = None
    done = False
    async for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, keep-alives
        payload = line[len(b"data:") :].strip()
        if payload == b"[DONE]":
            done = True
            break
        now = clock()
        try:
            event = json.loads(payload)
        except ValueError:
            return _failed(sent_s, times, parts, f"malformed event: {payload[:200]!r}")
        if not isinstance(event, dict):
            return _failed(sent_s, times, parts, f"unexpected event: {payload[:200]!r}")
        if event.get("error"):
            return _failed(sent_s, times, parts, f"server error: {_message(event['error'])}")
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
        text = "".join(_delta_text(choice) for choice in event.get("choices") or ())
        if text:
            parts.append(text)
            times.append(now)
    if not done:
        return _failed(sent_s, times, parts, "the stream ended before [DONE]")
    if not times:
        return _failed(sent_s, times, parts, "the answer has no text")
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    return StreamedAnswer(
        sent_s=sent_s,
        token_times_s=tuple(times),
        text="".join(parts),
        prompt_tokens=usage.get("prompt_tokens"),
        cached_tokens=details.get("cached_tokens"),
        output_tokens=usage.get("completion_tokens") or len(times),
    )


def _delta_text(choice: object) -> str:
    if not isinstance(choice, dict):
        return ""
    delta = choice.get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _message(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


def _failed(sent_s: float, times: list[float], parts: list[str], error: str) -> StreamedAnswer:
    return StreamedAnswer(
        sent_s=sent_s,
        token_times_s=tuple(times),
        text="".join(parts),
        output_tokens=len(times),
        error=error,
    )

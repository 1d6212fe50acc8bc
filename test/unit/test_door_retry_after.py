"""drift_sgl.door.retry_after: a 429 gets Retry-After, other answers are untouched."""

from __future__ import annotations

import asyncio

import pytest

from drift_sgl.door.retry_after import RetryAfterMiddleware


def _answer(status: int, headers: list) -> list:
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/generate", "headers": []}
    asyncio.run(RetryAfterMiddleware(app)(scope, receive, send))
    return sent[0]["headers"]


def test_a_429_gets_retry_after():
    assert (b"retry-after", b"1") in _answer(429, [])


def test_a_429_that_says_when_keeps_its_own():
    assert _answer(429, [(b"Retry-After", b"7")]) == [(b"Retry-After", b"7")]


@pytest.mark.parametrize("status", [200, 400, 503])
def test_other_answers_are_untouched(status):
    assert _answer(status, [(b"x", b"y")]) == [(b"x", b"y")]

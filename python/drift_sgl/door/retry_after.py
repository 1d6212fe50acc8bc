"""``Retry-After`` on every 429 the server answers.

drift answers a request it sheds under overload with a 429 (the server is full,
not broken). HTTP says a 429 may tell the client when to come back; SGLang's
error responses carry no such header, so this ASGI middleware adds one where
a 429 has none. SGLang's gateway passes it on to the client (it does not wait
for it itself: it retries on another worker after its own back-off).
"""

from __future__ import annotations

from drift_sgl.door.body import App, Message, Receive, Scope, Send

#: Seconds a shed client is asked to wait: about one planning horizon, long
#: enough for the queue that caused the shed to move.
RETRY_AFTER_S = 1


class RetryAfterMiddleware:
    """Adds ``Retry-After: RETRY_AFTER_S`` to a 429 response that has none."""

    def __init__(self, app: App, seconds: int = RETRY_AFTER_S) -> None:
        self.app = app
        self.header = (b"retry-after", str(seconds).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 429:
                headers = list(message.get("headers", ()))
                if all(name.lower() != b"retry-after" for name, _ in headers):
                    message = {**message, "headers": [*headers, self.header]}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)

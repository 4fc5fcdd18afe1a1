"""A cap on the requests one client address has in flight at once.

hypercorn has no per-address limit, so one host opening thousands of
connections (each holding a request open) could take every slot. This ASGI
wrapper counts the HTTP requests being served per peer address and answers
429 `too_many_requests` (with Retry-After) past the cap, before the app
sees the request.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
# An ASGI application (the app, or another wrapper of it).
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class PerClientLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        peer = (scope.get("client") or ("",))[0]
        if self.in_flight[peer] >= self.limit:
            return await self._refuse(send)
        self.in_flight[peer] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[peer] -= 1
            if not self.in_flight[peer]:
                del self.in_flight[peer]

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {
                "type": "https://ingestd.dev/problems/too_many_requests",
                "title": "Too Many Requests",
                "status": 429,
                "code": "too_many_requests",
                "detail": f"this address already has {self.limit} requests in flight "
                "(limits.max_requests_per_client); wait for some to finish",
                "limit": self.limit,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

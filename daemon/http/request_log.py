"""The outermost ASGI wrapper of the app: one log line per HTTP request
(method, route — the URL rule, not the raw path —, status, bytes in and out,
duration, request id, tenant, upload or file id), the request latency
metrics, and the `X-Request-Id` answer header."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from ..core import logs
from ..core.logs import RequestInfo
from ..core.metrics import Metrics
from .client_limit import ASGIApp

# A client's X-Request-Id is kept if it is this short and printable ASCII.
MAX_REQUEST_ID = 64


def sane_request_id(value: str | None) -> str | None:
    if not value or len(value) > MAX_REQUEST_ID:
        return None
    if all(0x21 <= ord(ch) <= 0x7E for ch in value):
        return value
    return None


class RequestLog:
    """ASGI wrapper: the request id, one log line and the latency metrics per request.

    `api_of(path)` names the upload API a path belongs to (or None); `metrics`
    has a `requests` histogram labelled by method, route and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, api_of: Callable[[str], str | None]) -> None:
        self.app = app
        self.metrics = metrics
        self.api_of = api_of
        self.log = structlog.stdlib.get_logger("ingestd.access")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = _header(scope, b"x-request-id")
        request_id = sane_request_id(raw) or uuid.uuid4().hex
        info = RequestInfo(request_id=request_id, api=self.api_of(scope.get("path", "")))
        with logs.request(info):
            ctx = structlog.contextvars.bind_contextvars(request_id=request_id)
            started = time.perf_counter()
            status: int | None = None
            bytes_in = 0
            bytes_out = 0
            echo = (b"x-request-id", request_id.encode())

            async def counting_receive() -> Any:
                nonlocal bytes_in
                message = await receive()
                if message["type"] == "http.request":
                    bytes_in += len(message.get("body", b""))
                return message

            async def tagging_send(message: Any) -> None:
                nonlocal status, bytes_out
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = [h for h in message.get("headers", ()) if h[0].lower() != echo[0]]
                    message = {**message, "headers": [*headers, echo]}
                elif message["type"] == "http.response.body":
                    bytes_out += len(message.get("body", b""))
                await send(message)

            try:
                await self.app(scope, counting_receive, tagging_send)
            finally:
                seconds = time.perf_counter() - started
                structlog.contextvars.reset_contextvars(**ctx)
                method = scope.get("method", "")
                self.metrics.requests.labels(method, info.route, str(status or 0)).observe(seconds)
                # A 5xx is the server's fault: worth an operator's attention.
                emit = self.log.error if status is not None and status >= 500 else self.log.info
                emit(
                    "request",
                    method=method,
                    route=info.route,
                    status=status,
                    bytes_in=bytes_in,
                    bytes_out=bytes_out,
                    duration=round(seconds, 6),
                    request_id=request_id,
                    api=info.api,
                    tenant=info.tenant,
                    upload_id=info.upload_id,
                    file_id=info.file_id,
                )


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None

"""The daemon's logs: structured (structlog), one format for everything.

`setup` makes structlog render every record — structlog's own and the stdlib
`logging.getLogger("ingestd…")` ones the modules already use (through
`structlog.stdlib.ProcessorFormatter`, so nothing is rewritten) — as JSON
lines or as coloured console lines, on stderr.

`RequestLog` is the outermost ASGI wrapper of the app: one line per HTTP
request (method, route — the URL rule, not the raw path —, status, bytes in
and out, duration, request id, tenant, upload or file id), the request latency
metrics, and the `X-Request-Id` answer header. What only the app knows
(route, tenant, upload id, API) is noted into the request's `RequestInfo`
with `note`, from any task the request starts (a context variable holds it).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from typing import IO, Any

import structlog

__all__ = [
    "FORMATS",
    "RequestInfo",
    "bind",
    "RequestLog",
    "current",
    "get_logger",
    "note",
    "resolve_format",
    "setup",
]

FORMATS = ("json", "console")
# A client's X-Request-Id is kept if it is this short and printable ASCII.
MAX_REQUEST_ID = 64
# The label of requests that matched no route (404s, 405s, refusals before
# routing): never the raw path, which a client chooses.
UNMATCHED = "<unmatched>"

get_logger = structlog.stdlib.get_logger

if not structlog.is_configured():
    # Until `setup` runs (tests, the app used as a library): through the stdlib
    # loggers as they are configured, the fields as a record's extras.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def resolve_format(wanted: str | None, stream: IO[str] | None = None) -> str:
    """ "json" or "console": `wanted` unless it is None or "auto", then console
    on a terminal, JSON otherwise."""
    if wanted in FORMATS:
        return wanted
    return "console" if _is_terminal(sys.stderr if stream is None else stream) else "json"


def setup(
    wanted: str | None = None, *, verbose: bool = False, stream: IO[str] | None = None
) -> str:
    """Route structlog and the stdlib loggers to one handler on `stream`
    (stderr), rendered as `wanted` ("json", "console", or None/"auto");
    returns the format chosen."""
    stream = sys.stderr if stream is None else stream
    fmt = resolve_format(wanted, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer()
        # Tracebacks as one string field of the line.
        finish: list[Any] = [structlog.processors.format_exc_info]
    else:
        # Plain tracebacks: no local variables (a token, a request body) in logs.
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_terminal(stream), exception_formatter=structlog.dev.plain_traceback
        )
        finish = []
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # Records from the stdlib loggers: their `extra=` fields become keys.
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *finish,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # hypercorn's own access log is off (RequestLog writes one line per request).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    return fmt


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- requests -----------------------------------------------------------------


@dataclass(slots=True)
class RequestInfo:
    """What the app learns about a request, for its log line and metrics."""

    request_id: str
    route: str = UNMATCHED
    api: str | None = None  # "seed", "v1", "tus" for the upload APIs
    tenant: str | None = None
    upload_id: str | None = None
    file_id: str | None = None


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "ingestd_request", default=None
)


def bind(**fields: Any) -> None:
    """Fields every log line from this context on carries (e.g. the worker)."""
    structlog.contextvars.bind_contextvars(**fields)


def current() -> RequestInfo | None:
    """The request being served by this task (or the task that started it)."""
    return _current.get()


def note(**fields: Any) -> None:
    """Record facts about the current request (no-op outside one)."""
    info = _current.get()
    if info is None:
        return
    for name, value in fields.items():
        if value is not None:
            setattr(info, name, value)


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

    def __init__(self, app: Any, metrics: Any, api_of: Any) -> None:
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
        token = _current.set(info)
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
            _current.reset(token)
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

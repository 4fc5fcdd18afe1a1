"""The daemon's logs: structured (structlog), one format for everything.

`setup` makes structlog render every record — structlog's own and the stdlib
`logging.getLogger("ingestd…")` ones the modules already use (through
`structlog.stdlib.ProcessorFormatter`, so nothing is rewritten) — as JSON
lines or as coloured console lines, on stderr.

Each HTTP request has a `RequestInfo` (see `http.request_log`, which writes
its line): what only the app knows (route, tenant, upload id, API) is noted
into it with `note`, from any task the request starts (a context variable
holds it), and read back with `current`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import structlog

__all__ = [
    "FORMATS",
    "RequestInfo",
    "bind",
    "request",
    "current",
    "get_logger",
    "note",
    "resolve_format",
    "setup",
]

FORMATS = ("json", "console")
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


@contextlib.contextmanager
def request(info: RequestInfo) -> Iterator[RequestInfo]:
    """Serve a request: `note` and `current` reach `info` from here on."""
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)

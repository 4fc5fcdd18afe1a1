"""Serving stored bytes over HTTP: `Range`, `ETag`/`If-None-Match`, streaming.

Shared by every API that lets a client read content back (`/v1` files, tus
`GET`). The bytes come from a `ManifestReader`, read in worker threads.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import trio
from ingestd import cas
from quart import Response, request

from .errors import ApiError
from .runtime import Runtime

READ_BYTES = 1 << 20
# ASCII digits only (`\d` would take any script's), of any length: a position
# past the end is clamped (RFC 9110 14.1.2), however many digits it has.
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
# Positions longer than this are past any file (and `int()` is not asked to
# parse thousands of digits).
_MAX_POSITION_DIGITS = 19


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_POSITION_DIGITS else 1 << 64


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) for a single `bytes=` range; None means the whole file."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # multiple or unknown ranges: RFC 9110 lets us send it all
    first, last = match.groups()
    if not first and not last:
        return None
    if size == 0:
        raise unsatisfiable(header, size)  # an empty file has no byte to select
    if not first:  # suffix: the last N bytes
        n = _position(last)
        if n == 0:
            raise unsatisfiable(header, size)
        return max(size - n, 0), size
    start = _position(first)
    end = min(_position(last) + 1, size) if last else size
    if start >= size or (last and _position(last) < start):
        raise unsatisfiable(header, size)
    return start, end


def unsatisfiable(header: str, size: int) -> ApiError:
    return ApiError(
        416,
        "range_not_satisfiable",
        f"range {header!r} selects no bytes of the file's {size}",
        headers={"Content-Range": f"bytes */{size}"},
        size=size,
    )


def content_disposition(filename: str) -> str:
    """An attachment header for any name: printable ASCII in `filename` (others
    become "_"), the exact name percent-encoded in `filename*` (RFC 6266)."""
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def etag_matches(etag: str, if_none_match: str) -> bool:
    """If-None-Match compares weakly (RFC 9110 §13.1.2): W/"x" matches "x"."""
    if if_none_match.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return etag.removeprefix("W/") in tags


async def serve_content(
    rt: Runtime,
    open_reader: Callable[[], Awaitable[cas.ManifestReader]],
    *,
    size: int,
    headers: dict[str, str],
    etag: str | None = None,
) -> Response:
    """The answer to a GET of `size` bytes that `open_reader` gives: 200, 206 for
    a `Range`, 304 when `If-None-Match` names `etag`. The reader is opened only
    once the request is known to want bytes."""
    headers = {"Accept-Ranges": "bytes", **headers}
    if etag is not None:
        headers["ETag"] = etag
        if etag_matches(etag, request.headers.get("If-None-Match", "")):
            return Response(b"", status=304, headers=headers)
    span = parse_range(request.headers.get("Range"), size)
    start, end = span or (0, size)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    reader = await open_reader()
    return Response(stream_content(rt, reader, start, end), status=status, headers=headers)


async def stream_content(
    rt: Runtime, reader: cas.ManifestReader, start: int, end: int
) -> AsyncIterator[bytes]:
    try:
        await rt.run(reader.seek, start)
        left = end - start
        while left > 0:
            data = await rt.run(reader.read, min(READ_BYTES, left))
            if not data:
                break
            left -= len(data)
            yield data
    finally:
        with trio.CancelScope(shield=True):
            await rt.run(reader.close)

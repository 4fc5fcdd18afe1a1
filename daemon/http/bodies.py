"""Request bodies of any size with bounded memory, for the routes that stream them.

Quart buffers a request body without bound and caps it at
`MAX_CONTENT_LENGTH` (a chunk, for the chunk APIs). Requests under a
streaming prefix (tus's) or on a streaming path (`/v1` chunk runs) are
handled by `StreamingConnection` instead: their
body is a `StreamingBody` — no size cap (the upload's length is the cap) but
at most HIGH_WATER bytes buffered, because the connection stops taking body
messages from hypercorn until the handler has read them, so the socket stops
being read (TCP backpressure). Every other request gets Quart's own
connection and body, untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody

# Bytes a request body may buffer before the socket stops being read.
HIGH_WATER = 4 << 20


class StreamingBody(TrioBody):
    """A request body that buffers at most HIGH_WATER bytes and has no size cap.

    Iterate it to read. Awaiting it whole (only the error path does, to let
    an early answer leave the connection usable) drops the bytes instead of
    keeping them.
    """

    def __init__(self, expected_content_length: int | None, max_content_length: int | None):
        super().__init__(expected_content_length, None)
        self._room = trio.Event()
        self._discarding = False

    def append(self, data: bytes) -> None:
        if not self._discarding:
            super().append(data)

    async def __anext__(self) -> bytearray:
        # As Quart's, but hands over the buffer itself rather than a copy of it:
        # gigabytes pass through here.
        if self._must_raise is not None:
            raise self._must_raise
        if not self._complete.is_set():
            await self._has_data.wait()
        if self._complete.is_set() and not self._data:
            raise StopAsyncIteration
        data, self._data = self._data, bytearray()
        self._has_data.clear()
        self._room.set()
        return data

    def __await__(self):
        self._discarding = True
        self._data.clear()
        self._room.set()
        return super().__await__()

    def abandon(self) -> None:
        """Stop reading: the answer closes the connection, the rest is not wanted."""
        self._discarding = True
        self._data.clear()
        self.set_complete()
        self._room.set()

    def full(self) -> bool:
        return len(self._data) >= HIGH_WATER

    async def wait_for_room(self) -> None:
        while self.full():
            self._room = trio.Event()
            await self._room.wait()


class StreamingConnection(TrioASGIHTTPConnection):
    """Gives its request a `StreamingBody` and takes body messages only while it has room."""

    def _create_request_from_scope(self, send):  # type: ignore[override]
        request = super()._create_request_from_scope(send)
        # No byte has arrived yet: the body can still be swapped.
        request.body = StreamingBody(request.content_length, None)
        return request

    async def handle_messages(self, nursery, request, receive) -> None:  # type: ignore[override]
        body = request.body
        while True:
            await body.wait_for_room()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


def stream_bodies_under(app: QuartTrio, prefixes: Iterable[str]) -> None:
    """Serve requests whose path is under one of `prefixes` with `StreamingConnection`."""
    exact = tuple(p.rstrip("/") for p in prefixes)
    starts = tuple(p.rstrip("/") + "/" for p in prefixes)
    stream_bodies_where(app, lambda path: path in exact or path.startswith(starts))


def stream_bodies_where(app: QuartTrio, streams: Callable[[str], bool]) -> None:
    """Serve requests whose path `streams` says so with `StreamingConnection`
    (each call adds to those before it)."""
    default = app.asgi_http_class

    def connection(app: QuartTrio, scope: dict) -> TrioASGIHTTPConnection:
        if streams(scope.get("path", "")):
            return StreamingConnection(app, scope)
        return default(app, scope)

    app.asgi_http_class = connection  # type: ignore[assignment]

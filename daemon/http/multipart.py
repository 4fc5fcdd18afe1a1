"""Reading a multipart/form-data request: small text fields and one file part,
the file part streamed as it arrives.

Built on python-multipart's sans-IO `MultipartParser` (callbacks with offsets
into the bytes fed to it, so the file part's bytes are handed on as views of
the received data, not copied). A client that sends its text fields before
the file part (as form encoders do, in document order) gets the file part
streamed straight to the chunk writer; one that sends it earlier gets it
buffered, bounded by `max_file_bytes`. Sizes are bounded while reading,
before memory is spent.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .problems import ApiError

MAX_FIELD_BYTES = 1024
MAX_PARTS = 16


def _malformed(detail: str) -> ApiError:
    return ApiError(400, "malformed_multipart", detail)


def boundary_of(content_type: str | None) -> bytes:
    mimetype, options = parse_options_header(content_type or "")
    if mimetype != b"multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected multipart/form-data, got {mimetype.decode('latin-1') or 'no content type'}",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise _malformed("multipart/form-data without a boundary")
    return boundary


@dataclass
class _Part:
    name: str
    is_file: bool  # the file part asked for
    ignored: bool = False  # another file part: read past, not kept


class FormStream:
    """One multipart body, read in three steps by its consumer:

    1. `await read_fields()` reads text fields up to the start of the file part
       `file_name` (or to the end of the body) and returns them;
    2. `file_data()` streams the file part's bytes, or `await buffer_file()`
       reads them into memory, with the fields after it;
    3. `await finish()` reads the rest (more fields, the closing boundary) and
       returns all fields.
    """

    def __init__(
        self,
        content_type: str | None,
        body: AsyncIterable[bytes],
        *,
        file_name: str,
        max_file_bytes: int,
    ) -> None:
        self._file_name = file_name
        self._max_file_bytes = max_file_bytes
        self._body = body.__aiter__()
        self._parser = MultipartParser(
            boundary_of(content_type),
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )
        self.fields: dict[str, str] = {}
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._part: _Part | None = None
        self._text = bytearray()
        # The file part's bytes parsed but not yet taken by the consumer.
        self._pending: list[bytes | memoryview] = []
        self._fed: bytes = b""
        self.file_seen = False  # its part has begun
        self.file_sent_as_field = False  # a plain field had the file part's name
        self._file_ended = False
        self._file_iter: AsyncIterator[bytes | memoryview] | None = None
        self._ended = False  # the closing boundary was parsed
        self._body_done = False

    # -- the consumer's steps ----------------------------------------------------

    async def read_fields(self) -> dict[str, str]:
        while not self.file_seen and await self._feed():
            pass
        return dict(self.fields)

    def file_data(self) -> AsyncIterator[bytes | memoryview]:
        """The file part's bytes as they arrive; ends with the part. The same
        iterator each time: what one consumer left, `finish` reads past."""
        if self._file_iter is None:
            self._file_iter = self._file_pieces()
        return self._file_iter

    async def _file_pieces(self) -> AsyncIterator[bytes | memoryview]:
        size = 0
        while True:
            pending, self._pending = self._pending, []
            for piece in pending:
                size += len(piece)
                if size > self._max_file_bytes:
                    raise ApiError(
                        413,
                        "chunk_too_large",
                        f"part {self._file_name!r} is larger than {self._max_file_bytes} bytes",
                        limit=self._max_file_bytes,
                    )
                yield piece
            if self._file_ended or not await self._feed():
                return

    async def buffer_file(self) -> bytearray | None:
        """The whole file part in memory (None if the body has none), reading on
        to the end of the body so that fields after it are known too."""
        data = bytearray()
        if self.file_seen:
            async for piece in self.file_data():
                data += piece
        await self.finish()
        return data if self.file_seen else None

    async def finish(self) -> dict[str, str]:
        """Read the rest of the body (past what is left of the file part, whose
        size limit still holds); all the fields."""
        if self.file_seen:
            async for _ in self.file_data():
                pass
        while await self._feed():
            pass
        if not self._ended:
            raise _malformed("multipart body ended before its closing boundary")
        return dict(self.fields)

    # -- feeding the parser ---------------------------------------------------

    async def _feed(self) -> bool:
        """Parse the next piece of the body; False once nothing more will come."""
        if self._ended or self._body_done:
            return False
        try:
            data = await self._body.__anext__()
        except StopAsyncIteration:
            self._body_done = True
            return False
        self._fed = data
        try:
            self._parser.write(data)
        except MultipartParseError as exc:
            raise _malformed(f"malformed multipart body: {exc}") from None
        return True

    # -- parser callbacks -------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise _malformed(f"more than {MAX_PARTS} parts")
        self._disposition = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        kind, options = parse_options_header(self._disposition)
        if kind != b"form-data" or b"name" not in options:
            raise _malformed("a part without Content-Disposition: form-data and a name")
        try:
            name = options[b"name"].decode()
        except UnicodeDecodeError:
            raise _malformed("a part name that is not UTF-8") from None
        if name in self.fields or (name == self._file_name and self.file_seen):
            raise _malformed(f"part {name!r} sent twice")
        sent_as_file = b"filename" in options
        is_file = name == self._file_name and sent_as_file
        if name == self._file_name and not sent_as_file:
            # The contract reads this part as a file: a plain field of that
            # name is not it (and its bytes are skipped, not taken as text).
            self.file_sent_as_field = True
        # A file part under another name is not a text field; it is skipped.
        self._part = _Part(
            name, is_file, ignored=not is_file and (sent_as_file or name == self._file_name)
        )
        self._text.clear()
        if is_file:
            self.file_seen = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None or part.ignored:
            return
        if part.is_file:
            # A view of the bytes the body gave, when the parser hands those on;
            # its own look-behind buffer is reused, so that is copied.
            piece = memoryview(data)[start:end] if data is self._fed else bytes(data[start:end])
            self._pending.append(piece)
            return
        self._text += data[start:end]
        if len(self._text) > MAX_FIELD_BYTES:
            raise _malformed(f"field {part.name!r} is too long")

    def _on_part_end(self) -> None:
        part, self._part = self._part, None
        if part is None or part.ignored:
            return
        if part.is_file:
            self._file_ended = True
            return
        try:
            self.fields[part.name] = self._text.decode()
        except UnicodeDecodeError:
            raise _malformed(f"field {part.name!r} is not UTF-8") from None

    def _on_end(self) -> None:
        self._ended = True

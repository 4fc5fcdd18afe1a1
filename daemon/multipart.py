"""Reading a multipart/form-data request: small text fields and one file part.

Built on werkzeug's sans-IO `MultipartDecoder`, fed from the request body as
it arrives, so the file part is collected exactly once and never spooled to a
temp file first. Sizes are bounded while reading, before memory is spent.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass, field

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from .problems import ApiError

MAX_FIELD_BYTES = 1024
MAX_PARTS = 16


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytearray] = field(default_factory=dict)


def boundary_of(content_type: str | None) -> bytes:
    mimetype, options = parse_options_header(content_type or "")
    if mimetype != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected multipart/form-data, got {mimetype or 'no content type'}",
        )
    boundary = options.get("boundary")
    if not boundary:
        raise ApiError(400, "malformed_multipart", "multipart/form-data without a boundary")
    return boundary.encode("latin-1")


async def read_form(
    content_type: str | None, body: AsyncIterable[bytes], *, max_file_bytes: int
) -> Form:
    decoder = MultipartDecoder(boundary_of(content_type), max_parts=MAX_PARTS)
    form = Form()
    current: Field | File | None = None
    text = bytearray()
    target: bytearray | None = None

    def drain() -> bool:
        nonlocal current, target
        while True:
            event = decoder.next_event()
            if isinstance(event, NeedData):
                return False
            if isinstance(event, Epilogue):
                return True
            if isinstance(event, File):
                current, target = event, bytearray()
                if event.name in form.files or event.name in form.fields:
                    raise ApiError(400, "malformed_multipart", f"part {event.name!r} sent twice")
                form.files[event.name] = target
            elif isinstance(event, Field):
                current, target = event, text
                text.clear()
                if event.name in form.fields or event.name in form.files:
                    raise ApiError(400, "malformed_multipart", f"part {event.name!r} sent twice")
            elif isinstance(event, Data):
                target.extend(event.data)
                if isinstance(current, File) and len(target) > max_file_bytes:
                    raise ApiError(
                        413,
                        "chunk_too_large",
                        f"part {current.name!r} is larger than {max_file_bytes} bytes",
                        limit=max_file_bytes,
                    )
                if isinstance(current, Field):
                    if len(text) > MAX_FIELD_BYTES:
                        raise ApiError(
                            400, "malformed_multipart", f"field {current.name!r} is too long"
                        )
                    if not event.more_data:
                        try:
                            form.fields[current.name] = text.decode()
                        except UnicodeDecodeError:
                            raise ApiError(
                                400, "malformed_multipart", f"field {current.name!r} is not UTF-8"
                            ) from None

    try:
        async for data in body:
            decoder.receive_data(data)
            if drain():
                return form
        decoder.receive_data(None)
        if drain():
            return form
    except RequestEntityTooLarge:
        raise ApiError(400, "malformed_multipart", f"more than {MAX_PARTS} parts") from None
    except ValueError as exc:
        raise ApiError(400, "malformed_multipart", f"malformed multipart body: {exc}") from None
    raise ApiError(400, "malformed_multipart", "multipart body ended before its closing boundary")

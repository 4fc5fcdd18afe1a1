"""The seed API's multipart reader: fields, then the file part streamed or buffered."""

from __future__ import annotations

import hashlib
import os

import pytest
from ingestd.daemon.http.errors import ApiError
from ingestd.daemon.http.multipart import MAX_PARTS, FormStream

pytestmark = pytest.mark.unit

BOUNDARY = "b0undary-x"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def field(name: str, value: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
    ).encode()


def file_part(name: str, data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="blob"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()


async def pieces(body: bytes, size: int):
    for i in range(0, len(body), size):
        yield body[i : i + size]


def form(body: bytes, size: int = 65536, limit: int = 1 << 20) -> FormStream:
    return FormStream(CONTENT_TYPE, pieces(body, size), file_name="chunk", max_file_bytes=limit)


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
async def test_fields_first_then_the_file_streams_without_a_copy(size):
    data = os.urandom(300_000) + f"\r\n--{BOUNDARY}".encode()[:-1]  # boundary-like tail
    body = field("uploadId", "u1") + field("chunkIndex", "3") + file_part("chunk", data) + END
    f = form(body, size)
    assert await f.read_fields() == {"uploadId": "u1", "chunkIndex": "3"}
    assert f.file_seen
    got = hashlib.sha256()
    views = 0
    async for piece in f.file_data():
        views += isinstance(piece, memoryview)
        got.update(piece)
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()
    if size >= 4096:
        assert views > 0  # the received bytes are handed on as views
    assert await f.finish() == {"uploadId": "u1", "chunkIndex": "3"}


async def test_a_file_before_the_fields_is_buffered_with_the_fields_after_it():
    data = os.urandom(100_000)
    body = file_part("chunk", data) + field("uploadId", "u1") + field("totalChunks", "2") + END
    f = form(body, 1000)
    assert await f.read_fields() == {}
    assert f.file_seen
    assert bytes(await f.buffer_file()) == data
    assert f.fields == {"uploadId": "u1", "totalChunks": "2"}


async def test_other_file_parts_are_skipped_and_a_missing_file_is_none():
    body = field("uploadId", "u1") + file_part("data", os.urandom(5000)) + END
    f = form(body)
    await f.read_fields()
    assert not f.file_seen
    assert await f.buffer_file() is None
    assert f.fields == {"uploadId": "u1"}


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (field("a", "1") + field("a", "2") + END, 400, "sent twice"),
        (file_part("chunk", b"x") + file_part("chunk", b"y") + END, 400, "sent twice"),
        (b"".join(field(f"f{i}", "v") for i in range(MAX_PARTS + 1)) + END, 400, "more than"),
        (field("a", "x" * 5000) + END, 400, "too long"),
        (field("a", "1"), 400, "closing boundary"),
        (file_part("chunk", os.urandom(3000)) + END, 413, "larger than 2048"),
    ],
)
async def test_bad_bodies_are_named(body, status, detail):
    f = form(body, 512, limit=2048)
    with pytest.raises(ApiError) as caught:
        await f.read_fields()
        await f.buffer_file()
    assert caught.value.status == status and detail in caught.value.detail


def test_content_type_must_be_multipart_with_a_boundary():
    with pytest.raises(ApiError) as caught:
        FormStream("application/json", pieces(b"", 1), file_name="chunk", max_file_bytes=1)
    assert caught.value.status == 415
    with pytest.raises(ApiError) as caught:
        FormStream("multipart/form-data", pieces(b"", 1), file_name="chunk", max_file_bytes=1)
    assert caught.value.status == 400 and "boundary" in caught.value.detail

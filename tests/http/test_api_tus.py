"""tus 1.0.0 at /files/ through the in-process Quart test client.

Every MUST of the core protocol and of each extension the server announces,
with the bad inputs the specification names. conftest: 1024-byte chunks, so
small bodies already span several chunks and leave tails.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os

import blake3
import pytest
import trio
from ingestd.daemon.core import streaming
from ingestd.daemon.http.app import create_app, load_plugins
from ingestd.plugins import Refusal, hookimpl

pytestmark = pytest.mark.api

CHUNK = 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def meta(**values: bytes | str | None) -> str:
    """An Upload-Metadata header; None gives a key without a value."""
    items = []
    for key, value in values.items():
        if value is None:
            items.append(key)
        else:
            raw = value.encode() if isinstance(value, str) else value
            items.append(f"{key} {base64.b64encode(raw).decode()}")
    return ",".join(items)


async def problem(response, status: int, code: str, *, tus: bool = True) -> dict:
    assert response.status_code == status, await response.get_data()
    assert response.content_type == "application/problem+json"
    body = await response.get_json()
    assert body["code"] == code and body["detail"], body
    if tus:
        assert response.headers["Tus-Resumable"] == "1.0.0"
    return body


async def create(client, length: int | None = None, *, expect: int = 201, **headers) -> str:
    if length is not None:
        headers["Upload-Length"] = str(length)
    r = await client.post("/files/", headers={**TUS, **headers})
    assert r.status_code == expect, await r.get_data()
    location = r.headers["Location"]
    assert location.startswith("/files/") and len(location) == len("/files/") + 32
    return location


async def patch(client, url: str, offset: int, data: bytes, **headers):
    # The test client sends no Content-Length by itself; real clients do.
    headers = {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": OCTETS,
        "Content-Length": str(len(data)),
        **headers,
    }
    return await client.patch(url, headers=headers, data=data)


async def head(client, url: str):
    return await client.head(url, headers=TUS)


async def offset_of(client, url: str) -> int:
    r = await head(client, url)
    assert r.status_code == 200, await r.get_data()
    return int(r.headers["Upload-Offset"])


async def send_all(client, url: str, data: bytes, sizes: list[int], start: int = 0):
    offset = start
    r = None
    for n in sizes:
        r = await patch(client, url, offset, data[offset : offset + n])
        assert r.status_code == 204, await r.get_data()
        offset += n
        assert r.headers["Upload-Offset"] == str(offset)
    return r


async def job_of(client, url: str) -> dict:
    r = await head(client, url)
    job_id = r.headers["Ingestd-Job-Id"]
    r = await client.get(f"/v1/jobs/{job_id}?wait=10")
    job = await r.get_json()
    assert job["state"] == "succeeded", job
    return job


async def file_record(client, url: str) -> dict:
    """The file a completed upload recorded, as soon as it exists (before processing ends)."""
    file_id = (await head(client, url)).headers["Ingestd-File-Id"]
    with trio.fail_after(10):
        while (r := await client.get(f"/v1/files/{file_id}")).status_code != 200:
            await trio.sleep(0.01)
    return await r.get_json()


def store_of(client):
    return client.app.extensions["ingestd"].store


def refs(client, data: bytes) -> int:
    """How many manifest entries use the chunk with these bytes (0 if unknown)."""
    from ingestd.cas.records import ChunkRecord

    store = store_of(client)
    with store.index.reader() as txn:
        chunk = store.index.get(txn, "chunks", blake3.blake3(data).digest(), ChunkRecord)
    return 0 if chunk is None else chunk.refs


# -- core: versions, OPTIONS, HEAD, PATCH -------------------------------------


async def test_options_describes_the_server_without_tus_resumable(client):
    for path in ("/files/", "/files", "/files/" + "0" * 32):
        r = await client.options(path)
        assert r.status_code == 204
        assert r.headers["Tus-Version"] == "1.0.0"
        assert r.headers["Tus-Resumable"] == "1.0.0"
        extensions = r.headers["Tus-Extension"].split(",")
        assert set(extensions) == {
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "termination",
            "checksum",
            "expiration",
            "concatenation",
            "concatenation-unfinished",
        }
        assert "checksum-trailer" not in extensions  # hypercorn drops request trailers
        assert int(r.headers["Tus-Max-Size"]) == 1 << 40
        assert {"sha1", "sha256", "md5"} <= set(r.headers["Tus-Checksum-Algorithm"].split(","))


async def test_missing_or_unsupported_tus_resumable_is_412_and_not_processed(client):
    url = await create(client, 10)
    cases = [
        ("POST", "/files/", {"Upload-Length": "5"}),
        ("HEAD", url, {}),
        ("PATCH", url, {"Upload-Offset": "0", "Content-Type": OCTETS}),
        ("DELETE", url, {}),
    ]
    for version in (None, "0.2.2"):
        for method, path, headers in cases:
            if version:
                headers = {**headers, "Tus-Resumable": version}
            r = await client.open(path, method=method, headers=headers, data=b"x" * 3)
            assert r.status_code == 412, (method, await r.get_data())
            assert r.headers["Tus-Version"] == "1.0.0"
    # Nothing happened: the upload is there, untouched.
    assert await offset_of(client, url) == 0


async def test_core_upload_in_patches_with_tails(client):
    data = os.urandom(5000)
    name = "weights.bin"
    url = await create(
        client,
        len(data),
        **{"Upload-Metadata": meta(filename=name, filetype="application/x-weights")},
    )
    r = await head(client, url)
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == "0" and r.headers["Upload-Length"] == "5000"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Upload-Metadata"] == meta(filename=name, filetype="application/x-weights")
    # Sizes that start, fill and cross chunks: tails are kept and continued.
    last = await send_all(client, url, data, [10, 1014, 1500, 1, 2475])
    # The job may already have moved on when the answer is written.
    assert last.headers["Ingestd-Upload-State"] in ("completing", "processing", "completed")
    assert last.headers["Ingestd-Job-Id"]
    assert "Upload-Expires" not in last.headers
    job = await job_of(client, url)
    r = await head(client, url)
    assert r.headers["Upload-Offset"] == "5000"
    assert r.headers["Ingestd-File-Id"] == job["file_id"]

    file = await (await client.get(f"/v1/files/{job['file_id']}")).get_json()
    assert file["filename"] == name and file["size"] == 5000
    assert file["blake3"] == blake3.blake3(data).hexdigest()
    assert file["metadata"]["filetype"] == "application/x-weights"
    # Fixed-size chunks at absolute offsets, like any fixed /v1 upload.
    assert file["chunks"] == {"count": 5, "min_size": 904, "max_size": 1024}
    got = await client.get(url)
    assert got.status_code == 200 and await got.get_data() == data
    assert got.headers["Content-Type"] == "application/x-weights"
    assert got.headers["ETag"] == f'"{file["blake3"]}"'
    part = await client.get(url, headers={"Range": "bytes=1000-2999"})
    assert part.status_code == 206 and await part.get_data() == data[1000:3000]
    v1 = await client.get(f"/v1/files/{job['file_id']}/content")
    assert await v1.get_data() == data


async def test_replaced_tails_are_released(client):
    data = os.urandom(1500)
    url = await create(client, len(data))
    await send_all(client, url, data, [300, 300])
    assert refs(client, data[:600]) == 1  # the tail so far
    await send_all(client, url, data, [900], start=600)
    assert refs(client, data[:600]) == 0  # replaced by the full first chunk
    assert refs(client, data[:1024]) == 1 and refs(client, data[1024:]) == 1


async def test_a_run_of_tiny_patches_does_not_multiply_disk_use(client):
    rt = client.app.extensions["ingestd"]
    data = os.urandom(900)
    url = await create(client, len(data))
    before = sum(1 for _ in rt.store.chunks.iter_hashes())
    await send_all(client, url, data[:899], [1] * 899)
    # One object for the tail so far, not one per PATCH (each replaced tail goes at once).
    assert sum(1 for _ in rt.store.chunks.iter_hashes()) - before == 1
    await send_all(client, url, data, [1], start=899)
    await job_of(client, url)
    assert await (await client.get(url)).get_data() == data


async def test_wrong_offset_is_409_and_changes_nothing(client):
    data = os.urandom(2000)
    url = await create(client, len(data))
    await send_all(client, url, data, [700])
    for wrong in (0, 600, 701, 5000):
        r = await patch(client, url, wrong, data[wrong : wrong + 10])
        body = await problem(r, 409, "offset_mismatch")
        assert body["offset"] == 700
    assert await offset_of(client, url) == 700
    await send_all(client, url, data, [1300], start=700)
    await job_of(client, url)
    assert await (await client.get(url)).get_data() == data


async def test_patch_header_errors(client):
    url = await create(client, 100)
    r = await patch(client, url, 0, b"x", **{"Content-Type": "application/octet-stream"})
    await problem(r, 415, "unsupported_media_type")
    r = await client.patch(url, headers={**TUS, "Upload-Offset": "0"}, data=b"x")
    await problem(r, 415, "unsupported_media_type")
    r = await client.patch(url, headers={**TUS, "Content-Type": OCTETS}, data=b"x")
    await problem(r, 400, "missing_header")
    for bad in ("-1", "1.5", "abc", ""):
        r = await patch(client, url, 0, b"x", **{"Upload-Offset": bad})
        await problem(r, 400, "invalid_header")
    assert await offset_of(client, url) == 0


async def test_unknown_upload_is_404(client):
    for path in ("/files/" + "0" * 32, "/files/not-an-id"):
        await problem(await head(client, path), 404, "unknown_upload")
        await problem(await patch(client, path, 0, b"x"), 404, "unknown_upload")
        await problem(await client.delete(path, headers=TUS), 404, "unknown_upload")
        await problem(await client.get(path), 404, "unknown_upload")
    # A /v1 upload is not a tus upload.
    r = await client.post("/v1/uploads", json={"filename": "v.bin", "size": 10})
    v1_id = (await r.get_json())["id"]
    await problem(await head(client, f"/files/{v1_id}"), 404, "unknown_upload")


async def test_tus_uploads_refuse_chunk_apis(client):
    url = await create(client, 2048)
    r = await client.put(f"/v1/uploads/{url.rsplit('/', 1)[1]}/chunks/0", data=b"x" * 1024)
    await problem(r, 409, "upload_not_open", tus=False)


async def test_length_exceeded_is_413(make_config):
    app = create_app(make_config(INGESTD_TUS_MAX_SIZE="4096"))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.options("/files/")
        assert r.headers["Tus-Max-Size"] == "4096"
        await problem(
            await client.post("/files/", headers={**TUS, "Upload-Length": "4097"}), 413, "too_large"
        )
        url = await create(client, 100)
        await problem(await patch(client, url, 0, b"x" * 101), 413, "length_exceeded")
        await send_all(client, url, b"y" * 100, [60])
        await problem(await patch(client, url, 60, b"x" * 41), 413, "length_exceeded")
        assert await offset_of(client, url) == 60
        # Deferred length: the server's maximum is the limit.
        deferred = await create(client, **{"Upload-Defer-Length": "1"})
        await problem(await patch(client, deferred, 0, b"x" * 4097), 413, "too_large")
        r = await patch(client, deferred, 0, b"", **{"Upload-Length": "5000"})
        await problem(r, 413, "too_large")


async def test_body_without_length_past_the_limit_keeps_what_fits(client):
    url = await create(client, 1500)
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    async with client.request(url, method="PATCH", headers=headers) as connection:
        await connection.send(b"a" * 1000)
        await connection.send(b"b" * 1000)
        await connection.send_complete()
        r = await connection.as_response()
    body = await problem(r, 413, "length_exceeded")
    assert body["offset"] == 1500
    await job_of(client, url)
    assert await (await client.get(url)).get_data() == b"a" * 1000 + b"b" * 500


async def test_completed_upload_accepts_an_empty_patch_only(client):
    url = await create(client, 10)
    await send_all(client, url, b"0123456789", [10])
    r = await patch(client, url, 10, b"")
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "10"
    await problem(await patch(client, url, 10, b"x"), 413, "length_exceeded")
    await problem(await patch(client, url, 5, b"x"), 409, "offset_mismatch")


# -- concurrency and cut-off requests -----------------------------------------


async def wait_offset(client, url: str, at_least: int) -> int:
    with trio.fail_after(5):
        while (offset := await offset_of(client, url)) < at_least:
            await trio.sleep(0.01)
    return offset


async def test_concurrent_patch_is_409_never_interleaved(client):
    data = os.urandom(4000)
    url = await create(client, len(data))
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    async with client.request(url, method="PATCH", headers=headers) as first:
        await first.send(data[:1500])
        await wait_offset(client, url, 1024)  # the first PATCH holds the upload
        r = await patch(client, url, 1024, data[1024:4000])
        await problem(r, 409, "upload_locked")
        r = await patch(client, url, 0, data)
        await problem(r, 409, "upload_locked")
        await first.send(data[1500:])
        await first.send_complete()
        r = await first.as_response()
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "4000"
    await job_of(client, url)
    assert await (await client.get(url)).get_data() == data


class ClientGone(Exception):
    """Raised inside a test connection: the test client then disconnects."""


async def test_disconnect_mid_patch_keeps_the_bytes_received(client):
    data = os.urandom(5000)
    url = await create(client, len(data))
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    try:
        async with client.request(url, method="PATCH", headers=headers) as connection:
            await connection.send(data[:2600])
            # The two full chunks are attached while the request still runs...
            assert await wait_offset(client, url, 2048) == 2048
            raise ClientGone
    except* ClientGone:
        pass
    # ...and the tail when it is cut off.
    assert await offset_of(client, url) == 2600
    await send_all(client, url, data, [2400], start=2600)
    await job_of(client, url)
    assert await (await client.get(url)).get_data() == data


async def test_stalled_body_ends_the_request_and_keeps_its_bytes(client, monkeypatch):
    monkeypatch.setattr(streaming, "BODY_IDLE_TIMEOUT", 0.2)
    url = await create(client, 3000)
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    async with client.request(url, method="PATCH", headers=headers) as connection:
        await connection.send(b"z" * 1100)
        r = await connection.as_response()
    await problem(r, 408, "body_timeout")
    assert r.headers["Connection"] == "close"
    assert await offset_of(client, url) == 1100


# -- creation, creation-with-upload, creation-defer-length --------------------


async def test_creation_headers_and_errors(client):
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 201
    expires = email.utils.parsedate_to_datetime(r.headers["Upload-Expires"])
    assert expires.tzinfo is not None and r.headers["Upload-Expires"].endswith(" GMT")
    await problem(await client.post("/files/", headers=TUS), 400, "missing_header")
    both = {**TUS, "Upload-Length": "10", "Upload-Defer-Length": "1"}
    await problem(await client.post("/files/", headers=both), 400, "invalid_header")
    r = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "2"})
    await problem(r, 400, "invalid_header")
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "-3"})
    await problem(r, 400, "invalid_header")
    r = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "3", "Content-Type": "text/plain", "Content-Length": "3"},
        data=b"abc",
    )
    await problem(r, 415, "unsupported_media_type")
    # No trailing slash works too.
    r = await client.post("/files", headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 201


async def test_metadata_parsing(client):
    binary = bytes(range(256))
    header = meta(filename="λ data.csv", blob=binary, flag=None, empty="")
    url = await create(client, 3, **{"Upload-Metadata": header})
    assert (await head(client, url)).headers["Upload-Metadata"] == header
    await send_all(client, url, b"a,b", [3])
    file = await file_record(client, url)
    assert file["filename"] == "λ data.csv"
    declared = file["metadata"]
    assert declared["flag"] == "" and declared["empty"] == ""
    assert base64.b64decode(declared["blob"]) == binary  # bytes, shown as base64 in JSON
    # Without padding is accepted; not base64, repeated keys, empty pairs are not.
    unpadded = "filename " + base64.b64encode(b"ab").decode().rstrip("=")
    await create(client, 1, **{"Upload-Metadata": unpadded})
    for bad in ("filename !!!", "filename YQ==,filename YQ==", "a YQ==,,b YQ==", "k YQ== YQ=="):
        r = await client.post(
            "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": bad}
        )
        await problem(r, 400, "invalid_metadata")


async def test_binary_metadata_reaches_the_plugins(client):
    header = meta(filename="notes.txt", blob=b"\xff\x00\xfe", flag=None)
    url = await create(client, 5, **{"Upload-Metadata": header})
    await send_all(client, url, b"hello", [5])
    job = await job_of(client, url)
    described = job["results"]["metadata"]["describe"]["declared"]
    assert base64.b64decode(described["blob"]) == b"\xff\x00\xfe" and described["flag"] == ""


async def test_creation_with_upload(client):
    data = os.urandom(3000)
    r = await client.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Content-Type": OCTETS,
            "Upload-Metadata": meta(filename="cwu.bin"),
        },
        data=data[:1800],
    )
    assert r.status_code == 201 and r.headers["Upload-Offset"] == "1800"
    url = r.headers["Location"]
    assert await offset_of(client, url) == 1800
    await send_all(client, url, data, [1200], start=1800)
    await job_of(client, url)
    assert await (await client.get(url)).get_data() == data
    # The whole file in the creation request completes it at once.
    r = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "5", "Content-Type": OCTETS},
        data=b"hello",
    )
    assert r.status_code == 201 and r.headers["Ingestd-Job-Id"]
    await job_of(client, r.headers["Location"])
    r = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "5", "Content-Type": OCTETS},
        data=b"hello world",
    )
    await problem(r, 413, "length_exceeded")


async def test_zero_length_upload_completes_at_creation(client):
    url = await create(client, 0)
    job = await job_of(client, url)
    file = await (await client.get(f"/v1/files/{job['file_id']}")).get_json()
    assert file["size"] == 0 and file["blake3"] == blake3.blake3(b"").hexdigest()
    assert await (await client.get(url)).get_data() == b""


async def test_deferred_length(client):
    data = os.urandom(2500)
    url = await create(client, **{"Upload-Defer-Length": "1"})
    r = await head(client, url)
    assert r.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in r.headers
    await send_all(client, url, data, [1100, 900])
    r = await head(client, url)
    assert r.headers["Upload-Defer-Length"] == "1" and r.headers["Upload-Offset"] == "2000"
    r = await patch(client, url, 2000, data[2000:], **{"Upload-Length": "1999"})
    await problem(r, 400, "invalid_length")
    r = await patch(client, url, 2000, data[2000:], **{"Upload-Length": str(len(data))})
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "2500"
    r = await head(client, url)
    assert r.headers["Upload-Length"] == "2500" and "Upload-Defer-Length" not in r.headers
    await job_of(client, url)
    assert await (await client.get(url)).get_data() == data
    # Once set, the length cannot change.
    other = await create(client, **{"Upload-Defer-Length": "1"})
    assert (await patch(client, other, 0, b"ab", **{"Upload-Length": "10"})).status_code == 204
    r = await patch(client, other, 2, b"c", **{"Upload-Length": "11"})
    await problem(r, 400, "invalid_length")
    # Declaring the length at the offset, with no bytes, completes the upload.
    last = await create(client, **{"Upload-Defer-Length": "1"})
    await send_all(client, last, b"abc", [3])
    r = await patch(client, last, 3, b"", **{"Upload-Length": "3"})
    assert r.headers["Ingestd-Upload-State"] != "open" and r.headers["Ingestd-Job-Id"]
    await job_of(client, last)


# -- checksum -----------------------------------------------------------------


def checksum(algorithm: str, data: bytes) -> str:
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(digest).decode()}"


async def test_checksums_verify_every_byte_before_keeping_any(client):
    data = os.urandom(4000)
    url = await create(client, len(data))
    good = checksum("sha1", data[:1500])
    r = await patch(client, url, 0, data[:1500], **{"Upload-Checksum": good})
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "1500"
    # A mismatch: 460, and none of the PATCH's bytes (spanning chunks) are kept.
    wrong = checksum("sha256", data[1500:3900] + b"!")
    r = await patch(client, url, 1500, data[1500:3900], **{"Upload-Checksum": wrong})
    body = await problem(r, 460, "checksum_mismatch")
    assert body["title"] == "Checksum Mismatch" and body["offset"] == 1500
    assert await offset_of(client, url) == 1500
    assert refs(client, data[1024:2048]) == 0
    # The tail is intact: the next PATCH continues it.
    good = checksum("md5", data[1500:])
    r = await patch(client, url, 1500, data[1500:], **{"Upload-Checksum": good})
    assert r.status_code == 204
    await job_of(client, url)
    assert await (await client.get(url)).get_data() == data


async def test_checksum_header_errors(client):
    url = await create(client, 10)
    r = await patch(client, url, 0, b"x", **{"Upload-Checksum": "crc99 AAAA"})
    await problem(r, 400, "unsupported_checksum_algorithm")
    r = await patch(client, url, 0, b"x", **{"Upload-Checksum": "sha1 not*base64"})
    await problem(r, 400, "invalid_checksum")
    r = await patch(client, url, 0, b"x", **{"Upload-Checksum": "sha1 AAAA"})
    await problem(r, 400, "invalid_checksum")  # 3 bytes is no sha1
    assert await offset_of(client, url) == 0


async def test_checksum_on_creation_with_upload(client):
    headers = {**TUS, "Upload-Length": "10", "Content-Type": OCTETS}
    r = await client.post(
        "/files/", headers={**headers, "Upload-Checksum": checksum("sha1", b"other")}, data=b"hello"
    )
    await problem(r, 460, "checksum_mismatch")
    url = r.headers["Location"]  # the upload exists; its bytes were refused
    assert await offset_of(client, url) == 0


# -- termination and expiration -----------------------------------------------


async def test_termination(client):
    data = os.urandom(1500)
    url = await create(client, 3000)
    await send_all(client, url, data, [1500])
    r = await client.delete(url, headers=TUS)
    assert r.status_code == 204 and r.headers["Tus-Resumable"] == "1.0.0"
    assert refs(client, data[:1024]) == 0 and refs(client, data[1024:]) == 0
    await problem(await head(client, url), 410, "upload_terminated")
    await problem(await patch(client, url, 1500, b"x"), 410, "upload_terminated")
    await problem(await client.delete(url, headers=TUS), 410, "upload_terminated")
    # A completed upload: its file goes.
    done = await create(client, 3)
    await send_all(client, done, b"abc", [3])
    job = await job_of(client, done)
    assert (await client.delete(done, headers=TUS)).status_code == 204
    await problem(await client.get(f"/v1/files/{job['file_id']}"), 404, "unknown_file", tus=False)
    await problem(await head(client, done), 410, "upload_terminated")


async def test_expiration(client):
    data = os.urandom(1500)
    url = await create(client, 3000)
    await send_all(client, url, data, [1500])
    r = await head(client, url)
    expires = email.utils.parsedate_to_datetime(r.headers["Upload-Expires"]).timestamp()
    r = await patch(client, url, 1500, b"")
    assert r.headers["Upload-Expires"] == (await head(client, url)).headers["Upload-Expires"]
    store = store_of(client)
    now = store.clock()
    assert abs(expires - (now + 7 * 24 * 3600)) < 5
    store.clock = lambda: expires + 1
    # Expired but not yet swept: already gone for tus.
    await problem(await head(client, url), 410, "upload_expired")
    await problem(await patch(client, url, 1500, b"x"), 410, "upload_expired")
    assert refs(client, data[:1024]) == 1
    assert store.expire_sessions() == [url.rsplit("/", 1)[1]]
    await problem(await head(client, url), 410, "upload_expired")
    assert refs(client, data[:1024]) == 0 and refs(client, data[1024:]) == 0


# -- concatenation ------------------------------------------------------------


def concat(*urls: str) -> dict[str, str]:
    return {"Upload-Concat": "final;" + " ".join(urls)}


async def test_concatenation_joins_manifests_without_copying(client):
    parts = [os.urandom(n) for n in (1500, 1024, 700)]
    partials = []
    for part in parts:
        url = await create(client, len(part), **{"Upload-Concat": "partial"})
        assert (await head(client, url)).headers["Upload-Concat"] == "partial"
        await send_all(client, url, part, [len(part)])
        r = await head(client, url)
        assert r.headers["Upload-Offset"] == str(len(part)) and "Ingestd-Job-Id" not in r.headers
        partials.append(url)
    objects = sum(1 for _ in store_of(client).chunks.iter_hashes())
    absolute = "http://localhost" + partials[1]
    final = await create(
        client,
        **concat(partials[0], absolute, partials[2]),
        **{"Upload-Metadata": meta(filename="joined.bin")},
    )
    assert sum(1 for _ in store_of(client).chunks.iter_hashes()) == objects
    r = await head(client, final)
    total = sum(map(len, parts))
    assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == str(total)
    assert r.headers["Upload-Concat"] == "final;" + " ".join(partials)
    job = await job_of(client, final)
    file = await (await client.get(f"/v1/files/{job['file_id']}")).get_json()
    assert file["filename"] == "joined.bin"
    # The final manifest is the partials' chunks in order, short ones included.
    assert file["chunks"] == {"count": 4, "min_size": 476, "max_size": 1024}
    assert await (await client.get(final)).get_data() == b"".join(parts)
    # A partial can be joined again; PATCH on a final upload is refused.
    again = await create(client, **concat(partials[2], partials[0]))
    await job_of(client, again)
    assert await (await client.get(again)).get_data() == parts[2] + parts[0]
    await problem(await patch(client, final, total, b""), 403, "final_upload")
    # A partial upload serves its own bytes.
    assert await (await client.get(partials[1])).get_data() == parts[1]


async def test_final_upload_before_its_partials_finish(client):
    parts = [os.urandom(n) for n in (1200, 2100)]
    partials = [await create(client, len(p), **{"Upload-Concat": "partial"}) for p in parts]
    await send_all(client, partials[0], parts[0], [1200])
    await send_all(client, partials[1], parts[1], [1000])
    final = await create(client, **concat(*partials))
    r = await head(client, final)
    assert "Upload-Offset" not in r.headers
    assert r.headers["Upload-Length"] == "3300"
    assert r.headers["Ingestd-Upload-State"] == "open"
    await problem(await client.get(final), 409, "upload_incomplete")
    last = await send_all(client, partials[1], parts[1], [1100], start=1000)
    assert "Ingestd-Job-Id" not in last.headers  # the partial itself is not a file
    job = await job_of(client, final)
    assert job["state"] == "succeeded"
    assert await (await client.get(final)).get_data() == parts[0] + parts[1]
    # A deferred-length partial: the final's length is unknown until it is declared.
    deferred = await create(client, **{"Upload-Concat": "partial", "Upload-Defer-Length": "1"})
    waiting = await create(client, **concat(partials[0], deferred))
    r = await head(client, waiting)
    assert "Upload-Length" not in r.headers and "Upload-Offset" not in r.headers
    await send_all(client, deferred, b"xyz", [3])
    r = await patch(client, deferred, 3, b"", **{"Upload-Length": "3"})
    assert r.status_code == 204
    await job_of(client, waiting)
    assert await (await client.get(waiting)).get_data() == parts[0] + b"xyz"


async def test_concatenation_errors(client):
    single = await create(client, 5)
    partial = await create(client, 5, **{"Upload-Concat": "partial"})
    r = await client.post("/files/", headers={**TUS, **concat(single)})
    await problem(r, 400, "invalid_concat")
    r = await client.post("/files/", headers={**TUS, **concat("/files/" + "0" * 32)})
    await problem(r, 400, "invalid_concat")
    r = await client.post("/files/", headers={**TUS, **concat("/elsewhere/" + "0" * 32)})
    await problem(r, 400, "invalid_concat")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": "final;"})
    await problem(r, 400, "invalid_concat")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": "whole"})
    await problem(r, 400, "invalid_concat")
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "5", **concat(partial)})
    await problem(r, 400, "invalid_header")
    # Terminating a partial ends the final uploads that wait for it.
    final = await create(client, **concat(partial))
    assert (await client.delete(partial, headers=TUS)).status_code == 204
    await problem(await head(client, final), 410, "upload_terminated")
    r = await client.post("/files/", headers={**TUS, **concat(partial)})
    await problem(r, 400, "invalid_concat")


# -- method override, CORS, policy --------------------------------------------


async def test_x_http_method_override(client):
    data = os.urandom(1200)
    url = await create(client, len(data))
    r = await client.post(
        url,
        headers={
            **TUS,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "0",
            "Content-Type": OCTETS,
        },
        data=data,
    )
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "1200"
    r = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert r.status_code == 200 and r.headers["Upload-Offset"] == "1200"
    other = await create(client, 10)
    r = await client.post(other, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert r.status_code == 204
    await problem(await head(client, other), 410, "upload_terminated")
    await problem(await client.post(url, headers=TUS), 405, "method_not_allowed")


async def test_cors_for_browsers(client):
    origin = {"Origin": "https://app.example"}
    r = await client.options(
        "/files/",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "tus-resumable, upload-length, upload-metadata",
        },
    )
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    for name in ("tus-resumable", "upload-length", "upload-offset", "upload-checksum"):
        assert name in allowed
    r = await client.post("/files/", headers={**TUS, **origin, "Upload-Length": "3"})
    exposed = r.headers["Access-Control-Expose-Headers"]
    for name in (
        "Location",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Metadata",
        "Upload-Defer-Length",
        "Upload-Concat",
        "Upload-Expires",
        "Tus-Resumable",
        "Tus-Version",
    ):
        assert name in exposed
    # Problem answers carry them too, so that a browser can read the error.
    r = await patch(client, r.headers["Location"], 9, b"x", **origin)
    assert r.status_code == 409 and r.headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_origins_can_be_restricted(make_config):
    app = create_app(make_config(INGESTD_TUS_CORS_ORIGINS="https://good.example"))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        good = await client.post(
            "/files/", headers={**TUS, "Origin": "https://good.example", "Upload-Length": "1"}
        )
        assert good.headers["Access-Control-Allow-Origin"] == "https://good.example"
        assert good.headers["Vary"] == "Origin"
        bad = await client.post(
            "/files/", headers={**TUS, "Origin": "https://evil.example", "Upload-Length": "1"}
        )
        assert "Access-Control-Allow-Origin" not in bad.headers


class RefuseExecutables:
    def __init__(self) -> None:
        self.requests = []

    @hookimpl
    def ingestd_policy(self, request, config):
        self.requests.append(request)
        if request.filename.endswith(".exe"):
            return Refusal("no executables", status=415, code="type_refused")
        return None


async def test_policy_hook_runs_on_creation(make_config):
    policy = RefuseExecutables()
    config = make_config()
    app = create_app(config, plugins=load_plugins(config, extra={"refuse": policy}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.post(
            "/files/",
            headers={**TUS, "Upload-Length": "5", "Upload-Metadata": meta(filename="x.exe")},
        )
        await problem(r, 415, "type_refused")
        url = await create(client, 5, **{"Upload-Metadata": meta(filename="x.csv")})
        assert policy.requests[-1].api == "tus" and policy.requests[-1].size == 5
        partial = await create(client, 5, **{"Upload-Concat": "partial"})
        assert len(policy.requests) == 2  # partials are fragments: the final is judged
        await send_all(client, partial, b"12345", [5])
        r = await client.post(
            "/files/", headers={**TUS, **concat(partial), "Upload-Metadata": meta(filename="y.exe")}
        )
        await problem(r, 415, "type_refused")
        assert policy.requests[-1].size == 5
        assert url


# -- dedup --------------------------------------------------------------------


async def test_same_bytes_twice_are_stored_once(client):
    data = os.urandom(3000)
    first = await create(client, len(data))
    await send_all(client, first, data, [3000])
    await job_of(client, first)
    objects = sum(1 for _ in store_of(client).chunks.iter_hashes())
    second = await create(client, len(data))
    await send_all(client, second, data, [2000, 1000])
    await job_of(client, second)
    # The second upload's tail (the bytes after 2048 of the first PATCH) was
    # replaced and deleted at once; its final chunks are the first upload's.
    extra = sum(1 for _ in store_of(client).chunks.iter_hashes()) - objects
    assert extra == 0
    assert refs(client, data[:1024]) == 2

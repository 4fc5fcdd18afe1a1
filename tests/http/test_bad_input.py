"""Hostile input on all three APIs: a clear 4xx problem naming the fault, never
a 500, and nothing already stored changes. conftest: 1024-byte chunks."""

from __future__ import annotations

import base64
import hashlib
import io
import os

import pytest
from quart.datastructures import FileStorage

pytestmark = pytest.mark.api

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
JSON = {"Content-Type": "application/json"}
DIGITS = ["²", "①", "٣", "1_0", "+1", "-1", " 1", "1" * 5000, "0x1", ""]
NAMES = [
    "a\r\nb.txt",
    "tab\tdel\x7f.bin",
    "esc\x1b[31m.txt",
    "c1\x85\x9b.txt",
    "rtl\u202etxt.exe",
    "cafe\u0301.bin",  # decomposed (NFD): kept so, not recomposed
]


async def problem(response, status: int, code: str | None = None) -> dict:
    body = await response.get_data()
    assert response.status_code == status, body[:300]
    assert response.content_type == "application/problem+json", body[:300]
    doc = await response.get_json()
    assert doc["detail"] and (code is None or doc["code"] == code), doc
    return doc


def json_bodies(size_key: str) -> dict[str, bytes]:
    """Bodies for /v1 create (`size`) and seed init (`totalSize`)."""
    base = b'{"filename": "a", "%s": 1' % size_key.encode()
    return {
        "not utf-8": b'{"filename": "\xff\xfe", "%s": 1}' % size_key.encode(),
        "lone surrogate": b'{"filename": "\\ud800", "%s": 1}' % size_key.encode(),
        "surrogate key": base + b', "metadata": {"\\udc00": 1}}',
        "deep": base + b', "metadata": {"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
        "huge integer": b'{"filename": "a", "%s": 123456789012345678901234567890}'
        % size_key.encode(),
        "huge integer in metadata": base + b', "metadata": {"n": -99999999999999999999999}}',
        "not json": b"{nope",
    }


@pytest.mark.parametrize(
    "path,size_key", [("/v1/uploads", "size"), ("/api/upload/init", "totalSize")]
)
async def test_json_bodies_that_are_not_plain_json(client, path, size_key):
    for name, body in json_bodies(size_key).items():
        r = await client.post(path, data=body, headers=JSON)
        await problem(r, 400, "invalid_json" if name != "array" else None)


async def test_metadata_is_bounded(client):
    big = {"filename": "a", "size": 1, "metadata": {"x": "y" * (64 << 10)}}
    doc = await problem(await client.post("/v1/uploads", json=big), 413, "metadata_too_large")
    assert doc["limit"] == 64 << 10
    ok = {"filename": "a", "size": 1, "metadata": {"x": "y" * 1000, "n": 2**63 - 1}}
    assert (await client.post("/v1/uploads", json=ok)).status_code == 201


async def test_numbers_in_paths_fields_and_headers(client):
    r = await client.post("/v1/uploads", json={"filename": "a", "size": 3000})
    v1 = (await r.get_json())["id"]
    r = await client.post("/api/upload/init", json={"filename": "a", "totalSize": 3000})
    seed = (await r.get_json())["uploadId"]
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3000"})
    tus = r.headers["Location"]
    for text in DIGITS:
        r = await client.put(f"/v1/uploads/{v1}/chunks/{text}", data=b"x" * 1024)
        if text == "":
            assert r.status_code in (404, 405)  # another route's shape
            continue
        await problem(r, 400, "invalid_field")
        for field in ("chunkIndex", "totalChunks"):
            form = {"uploadId": seed, "chunkIndex": "0", "totalChunks": "3", field: text}
            r = await client.post(
                "/api/upload/chunk",
                form=form,
                files={"chunk": FileStorage(io.BytesIO(b"x" * 1024), filename="b")},
            )
            await problem(r, 400)
        if text.strip() != text:
            continue  # a header value's surrounding whitespace is not part of it (RFC 9110)
        r = await client.patch(
            tus, data=b"abc", headers={**TUS, "Upload-Offset": text, "Content-Type": OCTETS}
        )
        await problem(r, 400, "invalid_header")
        r = await client.post("/files/", headers={**TUS, "Upload-Length": text})
        await problem(r, 400, "invalid_header")
    # Nothing was stored by any of it.
    assert (await (await client.get(f"/v1/uploads/{v1}")).get_json())["received_chunks"] == 0
    assert (await (await client.get(f"/api/upload/status/{seed}")).get_json())[
        "receivedChunks"
    ] == []
    assert (await client.head(tus, headers=TUS)).headers["Upload-Offset"] == "0"


async def test_multipart_edge_cases(client):
    r = await client.post("/api/upload/init", json={"filename": "a", "totalSize": 10})
    seed = (await r.get_json())["uploadId"]
    for fields in ({"uploadId": "", "chunkIndex": "0", "totalChunks": "1"},):
        r = await client.post(
            "/api/upload/chunk",
            form=fields,
            files={"chunk": FileStorage(io.BytesIO(b"0123456789"), filename="b")},
        )
        await problem(r, 400)
    body = b'--XyZ\r\nContent-Disposition: form-data; name="uploadId"\r\n\r\n' + seed.encode()
    body += b"\r\n--XyZ--\r\n"
    r = await client.post(
        "/api/upload/chunk",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary*=utf-8''XyZ"},
    )
    await problem(r, 400)
    big = b'--XyZ\r\nContent-Disposition: form-data; name="chunk"; filename="b"\r\n\r\n'
    big += b"x" * (70 << 20) + b"\r\n--XyZ--\r\n"
    r = await client.post(
        "/api/upload/chunk", data=big, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
    )
    await problem(r, 413)


async def test_a_seed_chunk_sent_as_a_plain_field_is_missing_not_stored(client):
    r = await client.post("/api/upload/init", json={"filename": "a", "totalSize": 10})
    seed = (await r.get_json())["uploadId"]
    for order in ("fields first", "chunk first"):
        parts = [("uploadId", seed), ("chunkIndex", "0"), ("totalChunks", "1")]
        chunk = ("chunk", "0123456789")
        parts = [*parts, chunk] if order == "fields first" else [chunk, *parts]
        body = b"".join(
            f'--XyZ\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode()
            for n, v in parts
        )
        r = await client.post(
            "/api/upload/chunk",
            data=body + b"--XyZ--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        )
        body_json = await problem(r, 400, "missing_field")
        assert body_json["missing"] == ["chunk"]
        assert "file part" in body_json["detail"]
    status = await (await client.get(f"/api/upload/status/{seed}")).get_json()
    assert status["receivedChunks"] == []


async def complete_v1(client, name: str, data: bytes) -> dict:
    r = await client.post("/v1/uploads", json={"filename": name, "size": len(data)})
    created = await r.get_json()
    assert r.status_code == 201, created
    for i in created["missing"]:
        r = await client.put(
            f"/v1/uploads/{created['id']}/chunks/{i}", data=data[i * 1024 : (i + 1) * 1024]
        )
        assert r.status_code == 200
    r = await client.post(f"/v1/uploads/{created['id']}/complete")
    job = await (await client.get(f"/v1/jobs/{(await r.get_json())['job_id']}?wait=30")).get_json()
    return await (await client.get(f"/v1/files/{job['file_id']}")).get_json()


def assert_clean(name: str) -> None:
    assert not any(
        ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or 0x202A <= ord(c) <= 0x202E for c in name
    ), repr(name)


async def test_filenames_are_recorded_as_sent_and_escaped_where_shown(client, tmp_path):
    for name in NAMES:
        data = os.urandom(1500)
        file = await complete_v1(client, name, data)
        assert file["filename"] == name
        assert file["state"] == "accepted", file
        r = await client.get(f"/v1/files/{file['id']}/content")
        assert (
            r.status_code == 200
            and hashlib.sha256(await r.get_data()).digest() == hashlib.sha256(data).digest()
        )
        disposition = r.headers["Content-Disposition"]
        assert all(" " <= c <= "~" for c in disposition), repr(disposition)
    # The materialised copies' names are sanitised.
    copies = [p for p in (tmp_path / "data" / "completed").rglob("*") if p.is_file()]
    assert len(copies) == len(NAMES)
    for path in copies:
        assert_clean(path.name)
    # tus metadata and the seed API go through the same core.
    sent = "x\r\n\x85\u202e.bin"
    meta = "filename " + base64.b64encode(sent.encode()).decode()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3", "Upload-Metadata": meta})
    loc = r.headers["Location"]
    await client.patch(
        loc, data=b"abc", headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS}
    )
    r = await client.get(loc, headers=TUS)
    assert r.status_code == 200 and all(" " <= c <= "~" for c in r.headers["Content-Disposition"])
    r = await client.post("/api/upload/init", json={"filename": "s\r\n\x9b.txt", "totalSize": 0})
    assert r.status_code == 200


async def test_a_filename_that_cannot_be_stored_is_refused_on_every_api(client):
    # A lone surrogate can only come as a JSON escape: the JSON is refused.
    for name, code, why in (
        ("nul\x00.bin", "invalid_filename", "NUL"),
        ("half\ud800.bin", "invalid_json", "surrogate"),
    ):
        r = await client.post("/v1/uploads", json={"filename": name, "size": 1})
        assert why in (await problem(r, 400, code))["detail"]
        r = await client.post("/api/upload/init", json={"filename": name, "totalSize": 1})
        assert why in (await problem(r, 400, code))["detail"]
    meta = "filename " + base64.b64encode(b"nul\x00.bin").decode()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3", "Upload-Metadata": meta})
    await problem(r, 400, "invalid_filename")


async def test_ranges_and_etags(client):
    empty = await complete_v1(client, "empty.bin", b"")
    url = f"/v1/files/{empty['id']}/content"
    for header in ("bytes=-5", "bytes=0-", "bytes=0-0"):
        doc = await problem(
            await client.get(url, headers={"Range": header}), 416, "range_not_satisfiable"
        )
        assert doc["size"] == 0
    data = os.urandom(3000)
    file = await complete_v1(client, "f.bin", data)
    url = f"/v1/files/{file['id']}/content"
    r = await client.get(url, headers={"Range": "bytes=٣-"})  # not ASCII digits: ignored
    assert r.status_code == 200 and len(await r.get_data()) == 3000
    # Positions of any length: a start past the end selects nothing, a last
    # position past the end is clamped to it (RFC 9110 14.1.2).
    await problem(
        await client.get(url, headers={"Range": "bytes=" + "9" * 5000 + "-"}),
        416,
        "range_not_satisfiable",
    )
    for header, (start, end) in (
        ("bytes=0-" + "9" * 20, (0, 3000)),
        ("bytes=2990-" + "1" * 5000, (2990, 3000)),
        ("bytes=-" + "7" * 25, (0, 3000)),
        ("bytes=" + "0" * 30 + "5-" + "0" * 30 + "9", (5, 10)),
    ):
        r = await client.get(url, headers={"Range": header})
        assert r.status_code == 206, header[:40]
        assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/3000"
        got = hashlib.sha256(await r.get_data()).digest()
        assert got == hashlib.sha256(data[start:end]).digest()
    r = await client.get(url, headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and await r.get_data() == data[-5:]
    etag = r.headers["ETag"]
    for inm in (etag, f"W/{etag}", f'"x", W/{etag}', "*"):
        assert (await client.get(url, headers={"If-None-Match": inm})).status_code == 304, inm
    assert (await client.get(url, headers={"If-None-Match": '"other"'})).status_code == 200


# -- found by the fuzzer (tests/e2e/test_fuzz.py) ----------------------------------


async def test_an_empty_upload_id_in_a_streamed_multipart_body(client):
    """All fields before the chunk (the streamed path): an empty uploadId is a
    400 naming the field, not a store lookup of an empty key (was a 500)."""
    parts = [("uploadId", b""), ("chunkIndex", b"0"), ("totalChunks", b"0")]
    body = b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (n.encode(), v)
        for n, v in parts
    )
    body += b'--XyZ\r\nContent-Disposition: form-data; name="chunk"; filename="c"\r\n\r\n'
    body += b"\r\n--XyZ--\r\n"
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    r = await client.post("/api/upload/chunk", data=body, headers=headers)
    doc = await problem(r, 400, "missing_field")
    assert doc["missing"] == ["uploadId"]


async def test_method_override_applies_to_post_only(client):
    """An OPTIONS (answered without a token) that says X-HTTP-Method-Override:
    HEAD stays an OPTIONS (was a 500: a HEAD without a caller)."""
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    url = r.headers["Location"]
    r = await client.options(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert r.status_code == 204 and r.headers["Tus-Version"]
    assert "Upload-Offset" not in r.headers
    r = await client.delete(url, headers={**TUS, "X-HTTP-Method-Override": "{}"})
    assert r.status_code == 204  # a DELETE, whatever the header says
    r = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert r.status_code == 410  # the POST stood for a HEAD of the terminated upload


@pytest.mark.parametrize("path", ["/v1/usage", "/api/upload/init", "/files/", "/healthz"])
async def test_a_method_not_allowed_says_which_are(client, path):
    r = await client.open(path, method="TRACE")
    await problem(r, 405)
    assert r.headers["Allow"], r.headers

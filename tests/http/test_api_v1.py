"""The native /v1 API through the in-process Quart test client."""

from __future__ import annotations

import base64
import hashlib
import os

import blake3
import pytest
import trio

pytestmark = pytest.mark.api

# conftest: fixed chunks of 1024 bytes; declared chunks 256..2048 bytes.


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    out, offset = [], 0
    for n in sizes:
        out.append(data[offset : offset + n])
        offset += n
    assert offset == len(data)
    return out


async def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, await response.get_data()
    assert response.content_type == "application/problem+json"
    body = await response.get_json()
    assert body["code"] == code and body["detail"]
    return body


async def create(client, name: str, data: bytes, pieces: list[bytes] | None = None, **extra):
    body = {"filename": name, "size": len(data), **extra}
    if pieces is not None:
        body["chunks"] = [{"hash": b3(p), "size": len(p)} for p in pieces]
    r = await client.post("/v1/uploads", json=body)
    assert r.status_code == 201, await r.get_data()
    created = await r.get_json()
    assert r.headers["Location"] == f"/v1/uploads/{created['id']}"
    return created


async def put(client, upload_id: str, index: int, data: bytes, **headers):
    return await client.put(f"/v1/uploads/{upload_id}/chunks/{index}", data=data, headers=headers)


async def finish(client, upload_id: str) -> dict:
    r = await client.post(f"/v1/uploads/{upload_id}/complete")
    assert r.status_code == 202, await r.get_data()
    accepted = await r.get_json()
    r = await client.get(f"/v1/jobs/{accepted['job_id']}?wait=10")
    return await r.get_json()


async def upload(client, name: str, data: bytes, sizes: list[int]) -> dict:
    pieces = cut(data, sizes)
    created = await create(client, name, data, pieces)
    for i in created["missing"]:
        assert (await put(client, created["id"], i, pieces[i])).status_code == 200
    job = await finish(client, created["id"])
    assert job["state"] == "succeeded", job
    return job


async def content(client, file_id: str, **headers):
    return await client.get(f"/v1/files/{file_id}/content", headers=headers)


async def test_info_states_the_chunking(client):
    info = await (await client.get("/v1/info")).get_json()
    assert info["chunking"] == {
        "fixed_size": 1024,
        "min_size": 256,
        "avg_size": 1024,
        "max_size": 2048,
    }


async def test_declared_upload_asks_only_for_unknown_chunks(client):
    data = os.urandom(4000)
    sizes = [1000, 300, 2000, 700]
    pieces = cut(data, sizes)
    first = await upload(client, "a.bin", data, sizes)

    # A second file shares chunks 0 and 2 of the first and repeats a new one.
    fresh = os.urandom(500)
    second = pieces[0] + fresh + pieces[2] + fresh
    created = await create(client, "b.bin", second, [pieces[0], fresh, pieces[2], fresh])
    assert created["declared"] and created["total_chunks"] == 4
    assert created["missing"] == [1]  # index 3 repeats index 1
    status = await (await client.get(f"/v1/uploads/{created['id']}")).get_json()
    assert status["received_chunks"] == 2 and status["missing"] == [1]
    r = await put(client, created["id"], 1, fresh)
    assert (await r.get_json())["stored"] is True
    job = await finish(client, created["id"])
    assert job["state"] == "succeeded" and job["file_id"] != first["file_id"]
    r = await content(client, job["file_id"])
    assert hashlib.sha256(await r.get_data()).digest() == hashlib.sha256(second).digest()


async def test_fixed_upload_without_chunk_list(client):
    data = os.urandom(2500)
    created = await create(client, "fixed.bin", data, sha256=hashlib.sha256(data).hexdigest())
    assert not created["declared"] and created["missing"] == [0, 1, 2]
    for i in (2, 0, 1):
        r = await put(client, created["id"], i, data[i * 1024 : (i + 1) * 1024])
        assert r.status_code == 200
    job = await finish(client, created["id"])
    file = await (await client.get(f"/v1/files/{job['file_id']}")).get_json()
    assert file["blake3"] == b3(data) and file["sha256"] == hashlib.sha256(data).hexdigest()
    assert file["chunks"] == {"count": 3, "min_size": 452, "max_size": 1024}


async def test_chunk_hash_mismatch_is_422_and_nothing_is_kept(client):
    data = os.urandom(1024)
    created = await create(client, "x.bin", data, [data])
    r = await put(client, created["id"], 0, os.urandom(1024))
    await problem(r, 422, "chunk_hash_mismatch")
    # A Content-Digest that does not match the body of an undeclared upload.
    plain = await create(client, "y.bin", data)
    wrong = base64.b64encode(blake3.blake3(b"other").digest()).decode()
    r = await put(client, plain["id"], 0, data, **{"Content-Digest": f"blake3=:{wrong}:"})
    await problem(r, 422, "chunk_hash_mismatch")
    r = await put(client, plain["id"], 0, data, **{"Content-Digest": "blake3=:nope"})
    await problem(r, 400, "invalid_digest")
    for upload_id in (created["id"], plain["id"]):
        status = await (await client.get(f"/v1/uploads/{upload_id}")).get_json()
        assert status["received_chunks"] == 0 and status["missing"] == [0]
    right = base64.b64encode(blake3.blake3(data).digest()).decode()
    r = await put(client, plain["id"], 0, data, **{"Content-Digest": f"blake3=:{right}:"})
    assert (await r.get_json())["hash"] == b3(data)


async def test_chunk_errors(client):
    data = os.urandom(2048)
    created = await create(client, "e.bin", data)
    await problem(await put(client, created["id"], 0, data[:1000]), 400, "wrong_chunk_size")
    await problem(await put(client, created["id"], 2, data[:1024]), 400, "chunk_index_out_of_range")
    await problem(await put(client, "0" * 32, 0, data[:1024]), 404, "unknown_upload")
    assert (await put(client, created["id"], 0, data[:1024])).status_code == 200
    assert (await (await put(client, created["id"], 0, data[:1024])).get_json())["stored"] is False
    await problem(await put(client, created["id"], 0, data[1024:]), 409, "chunk_conflict")
    r = await client.post(f"/v1/uploads/{created['id']}/complete")
    assert (await problem(r, 409, "chunks_missing"))["missing"] == [1]


async def test_create_errors(client):
    r = await client.post("/v1/uploads", json={"filename": "x", "size": 10, "chunks": []})
    await problem(r, 400, "invalid_chunk_list")
    chunks = [{"hash": "0" * 64, "size": 100}, {"hash": "1" * 64, "size": 100}]
    r = await client.post("/v1/uploads", json={"filename": "x", "size": 200, "chunks": chunks})
    await problem(r, 400, "invalid_chunk_list")  # the first is under the 256-byte minimum
    r = await client.post("/v1/uploads", json={"filename": "x", "size": 10, "chunks": [{}]})
    await problem(r, 400, "invalid_request")
    r = await client.post("/v1/uploads", json={"filename": "x", "size": 1 << 50})
    await problem(r, 413, "file_too_large")
    await problem(await client.get("/v1/jobs/nope"), 404, "unknown_job")
    await problem(await client.get("/v1/files/nope"), 404, "unknown_file")


async def test_sha256_mismatch_fails_the_job(client):
    data = os.urandom(1000)
    created = await create(client, "s.bin", data, [data], sha256="ab" * 32)
    await put(client, created["id"], 0, data)
    job = await finish(client, created["id"])
    assert job["state"] == "failed" and "sha256" in job["error"]
    status = await (await client.get(f"/v1/uploads/{created['id']}")).get_json()
    assert status["state"] == "rejected" and "sha256" in status["reason"]


async def test_cancel_releases_the_upload(client):
    data = os.urandom(1000)
    created = await create(client, "c.bin", data, [data])
    assert (await client.delete(f"/v1/uploads/{created['id']}")).status_code == 204
    status = await (await client.get(f"/v1/uploads/{created['id']}")).get_json()
    assert status["state"] == "cancelled"
    await problem(await put(client, created["id"], 0, data), 409, "upload_not_open")


async def test_content_ranges_and_etags(client):
    data = os.urandom(3000)
    job = await upload(client, "r.bin", data, [1000, 1000, 1000])
    file_id = job["file_id"]
    whole = await content(client, file_id)
    etag = whole.headers["ETag"]
    assert etag == f'"{b3(data)}"' and await whole.get_data() == data
    assert "r.bin" in whole.headers["Content-Disposition"]
    r = await content(client, file_id, Range="bytes=990-2010")
    assert r.status_code == 206 and await r.get_data() == data[990:2011]
    assert r.headers["Content-Range"] == "bytes 990-2010/3000"
    r = await content(client, file_id, Range="bytes=-10")
    assert await r.get_data() == data[-10:]
    r = await content(client, file_id, Range="bytes=2500-")
    assert await r.get_data() == data[2500:]
    r = await content(client, file_id, Range="bytes=3000-")
    await problem(r, 416, "range_not_satisfiable")
    assert r.headers["Content-Range"] == "bytes */3000"
    r = await content(client, file_id, **{"If-None-Match": etag})
    assert r.status_code == 304 and await r.get_data() == b""


async def test_delete_keeps_chunks_another_file_uses(client):
    shared = os.urandom(1000)
    a = await upload(client, "a.bin", shared + os.urandom(1000), [1000, 1000])
    b = await upload(client, "b.bin", shared, [1000])
    assert (await client.delete(f"/v1/files/{a['file_id']}")).status_code == 204
    await problem(await content(client, a["file_id"]), 404, "unknown_file")
    from ingestd.daemon.http.runtime import Runtime

    rt: Runtime = client.app.extensions["ingestd"]
    rt.store.clock = lambda: 1e12  # far beyond the grace period
    deleted, _ = rt.store.collect_garbage(grace=1)
    assert deleted == 1
    assert await (await content(client, b["file_id"])).get_data() == shared


async def test_files_listing(client):
    ids = [(await upload(client, f"set-{n}.bin", os.urandom(300), [300]))["file_id"] for n in "abc"]
    await upload(client, "other.bin", os.urandom(300), [300])
    page = await (await client.get("/v1/files?prefix=set-&limit=2")).get_json()
    assert len(page["files"]) == 2 and page["next"]
    rest = await (await client.get(f"/v1/files?prefix=set-&after={page['next']}")).get_json()
    assert rest["next"] is None
    assert sorted(f["id"] for f in page["files"] + rest["files"]) == sorted(ids)
    assert all(f["results"] is None for f in page["files"])  # only when asked
    # With each file's job results: the findings of a whole page in one request.
    listed = await (await client.get("/v1/files?prefix=set-&results=true")).get_json()
    for f in listed["files"]:
        job = await (await client.get(f"/v1/jobs/{f['job_id']}")).get_json()
        assert f["results"] == job["results"] and f["results"]


async def test_openapi_documents_v1(client):
    spec = await (await client.get("/openapi.json")).get_json()
    for path in ("/v1/uploads", "/v1/uploads/{upload_id}/chunks/{index}", "/v1/jobs/{job_id}"):
        assert path in spec["paths"], path


# -- many chunks in one request: PUT /v1/uploads/{id}/chunks?from=I&count=N --

SIZES = [1000, 1500, 700, 2048, 300]


async def put_run(client, upload_id: str, first: int, count: int, body: bytes, **headers):
    return await client.put(
        f"/v1/uploads/{upload_id}/chunks?from={first}&count={count}", data=body, headers=headers
    )


async def status(client, upload_id: str) -> dict:
    return await (await client.get(f"/v1/uploads/{upload_id}")).get_json()


async def test_a_run_stores_every_chunk_and_the_file_is_whole(client):
    data = os.urandom(sum(SIZES))
    pieces = cut(data, SIZES)
    created = await create(client, "run.bin", data, pieces, sha256=hashlib.sha256(data).hexdigest())
    r = await put_run(client, created["id"], 0, 3, b"".join(pieces[:3]))
    assert r.status_code == 200, await r.get_data()
    stored = await r.get_json()
    assert [(c["index"], c["hash"], c["size"]) for c in stored["chunks"]] == [
        (i, b3(pieces[i]), SIZES[i]) for i in range(3)
    ]
    assert all(c["stored"] for c in stored["chunks"]) and stored["received_chunks"] == 3
    r = await put_run(client, created["id"], 3, 2, b"".join(pieces[3:]))
    assert (await r.get_json())["received_chunks"] == 5
    job = await finish(client, created["id"])
    assert job["state"] == "succeeded", job
    got = await (await client.get(f"/v1/files/{job['file_id']}/content")).get_data()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_a_run_of_fixed_size_chunks_without_a_chunk_list(client):
    data = os.urandom(1024 * 3 + 17)
    created = await create(client, "fixed.bin", data)
    r = await put_run(client, created["id"], 0, 4, data)
    assert r.status_code == 200, await r.get_data()
    assert [c["size"] for c in (await r.get_json())["chunks"]] == [1024, 1024, 1024, 17]
    job = await finish(client, created["id"])
    got = await (await client.get(f"/v1/files/{job['file_id']}/content")).get_data()
    assert b3(got) == b3(data)


async def test_bad_boundaries_are_refused_and_nothing_is_kept(client):
    data = os.urandom(sum(SIZES))
    pieces = cut(data, SIZES)
    upload_id = (await create(client, "b.bin", data, pieces))["id"]
    two = b"".join(pieces[:2])
    url = f"/v1/uploads/{upload_id}/chunks"
    await problem(await client.put(url, data=two), 400, "invalid_field")  # no `from`
    await problem(await client.put(f"{url}?from=x&count=2", data=two), 400, "invalid_field")
    await problem(await client.put(f"{url}?from=0&count=-1", data=two), 400, "invalid_field")
    await problem(await put_run(client, upload_id, 0, 0, b""), 400, "chunk_index_out_of_range")
    await problem(await put_run(client, upload_id, 4, 2, two), 400, "chunk_index_out_of_range")
    await problem(await put_run(client, upload_id, 9, 1, two), 400, "chunk_index_out_of_range")
    # A Content-Length that is not the run's length: refused before any byte is read.
    for wrong in (len(two) - 1, len(two) + 1):
        r = await put_run(client, upload_id, 0, 2, two, **{"Content-Length": str(wrong)})
        body = await problem(r, 400, "wrong_chunk_size")
        assert body["expected"] == len(two) and body["actual"] == wrong
    await problem(await put_run(client, "0" * 32, 0, 1, pieces[0]), 404, "unknown_upload")
    now = await status(client, upload_id)
    assert now["received_chunks"] == 0 and now["missing"] == [0, 1, 2, 3, 4]


async def test_a_body_short_or_long_of_its_run_keeps_its_whole_chunks(client):
    # Without a Content-Length (as with chunked transfer coding) the body's end decides.
    data = os.urandom(sum(SIZES))
    pieces = cut(data, SIZES)
    upload_id = (await create(client, "s.bin", data, pieces))["id"]
    short = b"".join(pieces[:2])[:-1]
    body = await problem(await put_run(client, upload_id, 0, 2, short), 400, "wrong_chunk_size")
    assert body["kept_chunks"] == [0] and body["actual"] == len(short)
    assert (await status(client, upload_id))["missing"] == [1, 2, 3, 4]
    long = b"".join(pieces[1:3]) + b"x"
    body = await problem(await put_run(client, upload_id, 1, 2, long), 400, "wrong_chunk_size")
    assert body["kept_chunks"] == [1, 2]
    assert (await status(client, upload_id))["missing"] == [3, 4]


async def test_a_chunk_that_fails_its_hash_keeps_the_whole_ones_before_it(client):
    data = os.urandom(sum(SIZES))
    pieces = cut(data, SIZES)
    upload_id = (await create(client, "h.bin", data, pieces))["id"]
    bad = bytearray(b"".join(pieces))
    bad[SIZES[0] + SIZES[1] + 5] ^= 0xFF  # inside chunk 2
    body = await problem(
        await put_run(client, upload_id, 0, 5, bytes(bad)), 422, "chunk_hash_mismatch"
    )
    assert body["kept_chunks"] == [0, 1]
    assert body["expected"] == b3(pieces[2])
    assert (await status(client, upload_id))["missing"] == [2, 3, 4]
    r = await put_run(client, upload_id, 2, 3, b"".join(pieces[2:]))
    assert [c["stored"] for c in (await r.get_json())["chunks"]] == [True, True, True]
    job = await finish(client, upload_id)
    got = await (await client.get(f"/v1/files/{job['file_id']}/content")).get_data()
    assert b3(got) == b3(data)


async def test_other_bytes_for_a_held_index_keep_the_chunks_before_it(client):
    data = os.urandom(1024 * 4)
    upload_id = (await create(client, "c.bin", data))["id"]
    other = os.urandom(1024)
    r = await client.put(f"/v1/uploads/{upload_id}/chunks/2", data=other)
    assert r.status_code == 200
    body = await problem(await put_run(client, upload_id, 0, 4, data), 409, "chunk_conflict")
    assert body["kept_chunks"] == [0, 1]
    assert (await status(client, upload_id))["missing"] == [3]


async def test_the_same_run_twice_in_parallel(client):
    data = os.urandom(sum(SIZES))
    pieces = cut(data, SIZES)
    upload_id = (await create(client, "p.bin", data, pieces))["id"]
    answers: list[dict] = []

    async def send() -> None:
        r = await put_run(client, upload_id, 0, 5, data)
        assert r.status_code == 200, await r.get_data()
        answers.append(await r.get_json())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(send)
    assert len(answers) == 3
    for i in range(5):
        # Each chunk attached once: exactly one answer says it stored it.
        assert sum(a["chunks"][i]["stored"] for a in answers) == 1
    job = await finish(client, upload_id)
    assert job["state"] == "succeeded"
    got = await (await client.get(f"/v1/files/{job['file_id']}/content")).get_data()
    assert b3(got) == b3(data)

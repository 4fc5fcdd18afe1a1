import hashlib
import io
import json
import os
import random

import pytest
from quart.datastructures import FileStorage

pytestmark = pytest.mark.api

CHUNK = 1024  # the `app` fixture's chunk size


async def init(client, data: bytes, name: str = "train.jsonl", **extra):
    r = await client.post(
        "/api/upload/init", json={"filename": name, "totalSize": len(data), **extra}
    )
    assert r.status_code == 200, await r.get_data()
    body = await r.get_json()
    assert body["chunkSize"] == CHUNK
    return body["uploadId"]


async def send(client, upload_id, index, payload: bytes, total=None, **fields):
    form = {"uploadId": upload_id, "chunkIndex": index, "totalChunks": total, **fields}
    form = {k: str(v) for k, v in form.items() if v is not None}
    return await client.post(
        "/api/upload/chunk",
        form=form,
        files={"chunk": FileStorage(io.BytesIO(payload), filename="blob")},
    )


def chunks_of(data: bytes):
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


async def problem(response, status: int, code: str):
    assert response.status_code == status, await response.get_data()
    assert response.content_type == "application/problem+json"
    body = await response.get_json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return body


def jsonl(min_size: int) -> bytes:
    """Valid JSONL (the datasets plugin checks files named .jsonl) of at least min_size."""
    lines, size = [], 0
    while size < min_size:
        line = json.dumps({"id": len(lines), "text": os.urandom(24).hex()}).encode() + b"\n"
        lines.append(line)
        size += len(line)
    return b"".join(lines)


async def test_full_seed_flow_out_of_order_with_duplicates(client):
    data = jsonl(5 * CHUNK + 17)
    assert len(data) <= 6 * CHUNK
    parts = chunks_of(data)
    upload_id = await init(client, data, checksum=hashlib.sha256(data).hexdigest())
    order = list(range(len(parts)))
    random.Random(3).shuffle(order)
    for n, i in enumerate(order):
        r = await send(client, upload_id, i, parts[i], total=len(parts))
        assert r.status_code == 200
        body = await r.get_json()
        assert body == {
            "success": True,
            "receivedChunks": n + 1,
            "message": "Chunk uploaded successfully",
        }
    dup = await send(client, upload_id, order[0], parts[order[0]], total=len(parts))
    assert (await dup.get_json())["receivedChunks"] == len(parts)

    status = await (await client.get(f"/api/upload/status/{upload_id}")).get_json()
    assert status["uploadId"] == upload_id and status["totalChunks"] == 6
    assert status["receivedChunks"] == list(range(6)) and status["isComplete"] is False

    r = await client.post(f"/api/upload/complete/{upload_id}")
    assert r.status_code == 200
    done = await r.get_json()
    assert done["success"] is True and done["downstreamJobId"]
    meta = done["metadata"]
    assert meta["uploadId"] == upload_id and meta["filename"] == "train.jsonl"
    assert meta["size"] == len(data) and meta["fileType"] == "dataset" and meta["timestamp"]
    with open(done["filepath"], "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()

    status = await (await client.get(f"/api/upload/status/{upload_id}")).get_json()
    assert status["isComplete"] is True and status["receivedChunks"] == list(range(6))
    # Completing twice answers the same file and job.
    again = await (await client.post(f"/api/upload/complete/{upload_id}")).get_json()
    assert again["filepath"] == done["filepath"]
    assert again["downstreamJobId"] == done["downstreamJobId"]


async def test_different_bytes_for_stored_index_conflict_and_keep_original(client):
    data = os.urandom(2 * CHUNK)
    upload_id = await init(client, data, name="model.onnx")
    assert (await send(client, upload_id, 0, data[:CHUNK], total=2)).status_code == 200
    await problem(
        await send(client, upload_id, 0, os.urandom(CHUNK), total=2), 409, "chunk_conflict"
    )
    await send(client, upload_id, 1, data[CHUNK:], total=2)
    done = await (await client.post(f"/api/upload/complete/{upload_id}")).get_json()
    assert done["metadata"]["fileType"] == "model"
    with open(done["filepath"], "rb") as f:
        assert f.read() == data


async def test_unknown_upload_is_404_everywhere(client):
    await problem(await client.get("/api/upload/status/nope"), 404, "unknown_upload")
    await problem(await client.post("/api/upload/complete/nope"), 404, "unknown_upload")
    await problem(await send(client, "nope", 0, b"x", total=1), 404, "unknown_upload")


async def test_chunk_errors(client):
    data = os.urandom(3 * CHUNK)
    upload_id = await init(client, data)
    await problem(
        await send(client, upload_id, 3, data[:CHUNK], total=3), 400, "chunk_index_out_of_range"
    )
    await problem(await send(client, upload_id, -1, data[:CHUNK], total=3), 400, "invalid_field")
    await problem(await send(client, upload_id, 0, data[:10], total=3), 400, "wrong_chunk_size")
    await problem(
        await send(client, upload_id, 0, data[:CHUNK], total=4), 400, "total_chunks_mismatch"
    )
    await problem(
        await send(client, upload_id, "zero", data[:CHUNK], total=3), 400, "invalid_field"
    )
    body = await problem(await send(client, upload_id, 0, data[:CHUNK]), 400, "missing_field")
    assert body["missing"] == ["totalChunks"]
    r = await client.post(
        "/api/upload/chunk",
        form={"uploadId": upload_id, "chunkIndex": "0", "totalChunks": "3"},
        files={"data": FileStorage(io.BytesIO(data[:CHUNK]), filename="blob")},
    )
    assert (await problem(r, 400, "missing_field"))["missing"] == ["chunk"]
    # None of that stored anything.
    status = await (await client.get(f"/api/upload/status/{upload_id}")).get_json()
    assert status["receivedChunks"] == []


async def test_malformed_multipart_and_wrong_content_type(client):
    r = await client.post(
        "/api/upload/chunk",
        data=b"--x\r\nnot a part",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    await problem(r, 400, "malformed_multipart")
    r = await client.post(
        "/api/upload/chunk", data=b"abc", headers={"Content-Type": "multipart/form-data"}
    )
    await problem(r, 400, "malformed_multipart")
    r = await client.post("/api/upload/chunk", json={"uploadId": "x"})
    await problem(r, 415, "unsupported_media_type")


async def test_chunk_larger_than_limit_is_413(make_config):
    from ingestd.daemon.http.app import create_app

    config = make_config(INGESTD_STORAGE_CHUNK_SIZE="1024", INGESTD_LIMITS_MAX_CHUNK_SIZE="2048")
    async with create_app(config).test_app() as app:
        client = app.test_client()
        upload_id = await init(client, os.urandom(4096))
        await problem(
            await send(client, upload_id, 0, os.urandom(3000), total=4), 413, "chunk_too_large"
        )
        r = await client.post("/api/upload/init", json={"filename": "big", "totalSize": 1 << 50})
        await problem(r, 413, "file_too_large")


async def test_init_validation(client):
    await problem(
        await client.post("/api/upload/init", json={"filename": "x"}), 400, "invalid_request"
    )
    r = await client.post("/api/upload/init", json={"filename": "x", "totalSize": -1})
    await problem(r, 400, "invalid_request")
    r = await client.post(
        "/api/upload/init", json={"filename": "x", "totalSize": 1, "checksum": "zz"}
    )
    await problem(r, 400, "invalid_request")
    r = await client.post(
        "/api/upload/init", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.content_type == "application/problem+json"


async def test_complete_with_missing_chunks_lists_them(client):
    data = os.urandom(4 * CHUNK)
    upload_id = await init(client, data)
    await send(client, upload_id, 1, data[CHUNK : 2 * CHUNK], total=4)
    body = await problem(
        await client.post(f"/api/upload/complete/{upload_id}"), 409, "chunks_missing"
    )
    assert body["missing"] == [0, 2, 3]


async def test_checksum_mismatch_is_422(client):
    data = os.urandom(CHUNK)
    upload_id = await init(client, data, checksum=hashlib.sha256(b"other").hexdigest())
    await send(client, upload_id, 0, data, total=1)
    body = await problem(
        await client.post(f"/api/upload/complete/{upload_id}"), 422, "checksum_mismatch"
    )
    assert body["actual"] == hashlib.sha256(data).hexdigest()
    status = await (await client.get(f"/api/upload/status/{upload_id}")).get_json()
    assert status["state"] == "rejected" and status["isComplete"] is False


async def test_hostile_filename_stays_inside_data_dir(client, tmp_path):
    data = b"owned"
    upload_id = await init(client, data, name="../../../../tmp/evil.sh")
    await send(client, upload_id, 0, data, total=1)
    done = await (await client.post(f"/api/upload/complete/{upload_id}")).get_json()
    assert done["filepath"].startswith(str((tmp_path / "data" / "completed").resolve()))
    assert done["filepath"].endswith("/evil.sh")
    assert not os.path.exists("/tmp/evil.sh") or open("/tmp/evil.sh", "rb").read() != data


async def test_unknown_route_and_method_are_problems(client):
    await problem(await client.get("/api/upload/nothing"), 404, "not_found")
    await problem(await client.get("/api/upload/init"), 405, "method_not_allowed")


async def test_healthz_and_openapi(client):
    assert (await (await client.get("/healthz")).get_json())["status"] == "ok"
    spec = await (await client.get("/openapi.json")).get_json()
    paths = spec["paths"]
    for path in (
        "/api/upload/init",
        "/api/upload/chunk",
        "/api/upload/status/{upload_id}",
        "/api/upload/complete/{upload_id}",
    ):
        assert path in paths
    init_schema = paths["/api/upload/init"]["post"]["requestBody"]["content"]["application/json"]
    assert init_schema["schema"]
    assert "multipart/form-data" in paths["/api/upload/chunk"]["post"]["requestBody"]["content"]
    assert (await client.get("/docs")).status_code == 200

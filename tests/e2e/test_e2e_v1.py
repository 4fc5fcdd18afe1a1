"""/v1 against the real daemon: acknowledged chunks survive SIGKILL, jobs finish."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from pathlib import Path

import blake3
import httpx
import pytest
from support.e2e import Daemon, random_spans
from support.postgres import unique_schema
from support.seaweedfs import unique_prefix

pytestmark = pytest.mark.e2e

SIZE = 12 << 20


@pytest.fixture(params=["local", "s3", "s3+postgres"])
def daemon(request, tmp_path: Path):
    """The daemon on each backend: packs on local disk, packs in a real S3
    server (SeaweedFS) with the index local, and that with the index in a
    real PostgreSQL."""
    env = {}
    if request.param.startswith("s3"):
        server = request.getfixturevalue("seaweedfs")
        env = {**server.environ, "INGESTD_STORAGE_S3_PREFIX": unique_prefix()}
    if request.param.endswith("postgres"):
        env.update(request.getfixturevalue("postgres").environ(unique_schema()))
    with Daemon(tmp_path / "daemon", extra_env=env) as d:
        yield d


def test_sigkill_keeps_acknowledged_chunks_and_the_upload_finishes(daemon: Daemon):
    data = random.Random(1).randbytes(SIZE)
    spans = random_spans(len(data), seed=2)
    chunks = [{"hash": blake3.blake3(data[o : o + n]).hexdigest(), "size": n} for o, n in spans]
    base = daemon.base_url
    created = httpx.post(
        f"{base}/v1/uploads",
        json={"filename": "ckpt.bin", "size": SIZE, "chunks": chunks},
        timeout=10,
    ).json()
    upload_id = created["id"]
    assert created["missing"] == list(range(len(spans)))

    acked: set[int] = set()
    lock = threading.Lock()
    order = list(range(len(spans)))
    random.Random(3).shuffle(order)
    half = len(order) // 2

    def send(indices: list[int]) -> None:
        with httpx.Client(timeout=30) as client:
            for i in indices:
                o, n = spans[i]
                try:
                    r = client.put(
                        f"{base}/v1/uploads/{upload_id}/chunks/{i}", content=data[o : o + n]
                    )
                except httpx.TransportError:
                    return  # cut off by the kill
                assert r.status_code == 200, r.text
                with lock:
                    acked.add(i)

    workers = [threading.Thread(target=send, args=(order[k:half:3],)) for k in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    # The first half is acknowledged; kill while the second half is in flight.
    late = threading.Thread(target=send, args=(order[half:],))
    late.start()
    daemon.kill()
    late.join(timeout=60)
    assert set(order[:half]) <= acked

    daemon.start()
    status = httpx.get(f"{base}/v1/uploads/{upload_id}", timeout=10).json()
    missing = set(status["missing"])
    assert status["state"] == "open"
    assert not (acked & missing), f"acknowledged but lost: {sorted(acked & missing)}"
    assert status["received_chunks"] == len(spans) - len(missing)

    send(sorted(missing))
    accepted = httpx.post(f"{base}/v1/uploads/{upload_id}/complete", timeout=10)
    assert accepted.status_code == 202
    job = httpx.get(f"{base}/v1/jobs/{accepted.json()['job_id']}?wait=30", timeout=40).json()
    assert job["state"] == "succeeded", job

    content = httpx.get(f"{base}/v1/files/{job['file_id']}/content", timeout=30)
    assert hashlib.sha256(content.content).digest() == hashlib.sha256(data).digest()
    assert content.headers["etag"] == f'"{blake3.blake3(data).hexdigest()}"'
    part = httpx.get(
        f"{base}/v1/files/{job['file_id']}/content",
        headers={"Range": "bytes=1000000-5000000"},
        timeout=30,
    )
    assert part.status_code == 206 and part.content == data[1000000:5000001]


def test_early_errors_leave_the_connection_usable(daemon: Daemon):
    # A chunk refused before its body is read must not wedge the connection:
    # the client's next request on it has to be answered.
    with httpx.Client(base_url=daemon.base_url, timeout=5) as client:
        upload_id = client.post("/v1/uploads", json={"filename": "t", "size": 300_000}).json()["id"]
        body = random.Random(4).randbytes(300_000)
        bad_digest = {"Content-Digest": "blake3=:" + "A" * 43 + "=:"}
        for _ in range(5):
            r = client.put(f"/v1/uploads/{upload_id}/chunks/5", content=body)
            assert r.status_code == 400 and r.json()["code"] == "chunk_index_out_of_range"
            assert client.get("/healthz").status_code == 200
            r = client.put(f"/v1/uploads/{upload_id}/chunks/0", content=body, headers=bad_digest)
            assert r.status_code == 422 and r.json()["code"] == "chunk_hash_mismatch"
            assert client.get("/healthz").status_code == 200


def test_a_run_cut_off_mid_body_keeps_its_whole_chunks_through_sigkill(daemon: Daemon):
    # One request carrying chunks 0..5 back to back; the connection drops in
    # the middle of chunk 3. Chunks 0..2 are whole: they are kept, durably.
    data = random.Random(5).randbytes(6 << 20)
    spans = [(i << 20, 1 << 20) for i in range(6)]
    chunks = [{"hash": blake3.blake3(data[o : o + n]).hexdigest(), "size": n} for o, n in spans]
    base = daemon.base_url
    upload_id = httpx.post(
        f"{base}/v1/uploads",
        json={"filename": "run.bin", "size": len(data), "chunks": chunks},
        timeout=10,
    ).json()["id"]
    host, port = daemon.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"PUT /v1/uploads/{upload_id}/chunks?from=0&count=6 HTTP/1.1\r\n"
            f"Host: {host}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        )
        sock.sendall(data[: (3 << 20) + 12345])
        time.sleep(0.5)
    missing: list[int] = []
    for _ in range(100):  # the server notices the cut and keeps the whole chunks
        missing = httpx.get(f"{base}/v1/uploads/{upload_id}", timeout=10).json()["missing"]
        if missing == [3, 4, 5]:
            break
        time.sleep(0.1)
    assert missing == [3, 4, 5]
    daemon.kill()
    daemon.start()
    assert httpx.get(f"{base}/v1/uploads/{upload_id}", timeout=10).json()["missing"] == [3, 4, 5]
    r = httpx.put(f"{base}/v1/uploads/{upload_id}/chunks?from=3&count=3", content=data[3 << 20 :])
    assert r.status_code == 200, r.text
    assert [c["hash"] for c in r.json()["chunks"]] == [c["hash"] for c in chunks[3:]]
    accepted = httpx.post(f"{base}/v1/uploads/{upload_id}/complete", timeout=10).json()
    job = httpx.get(f"{base}/v1/jobs/{accepted['job_id']}?wait=30", timeout=40).json()
    content = httpx.get(f"{base}/v1/files/{job['file_id']}/content", timeout=30).content
    assert hashlib.sha256(content).digest() == hashlib.sha256(data).digest()

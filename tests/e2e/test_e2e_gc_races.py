"""Garbage collection with (almost) no grace period racing uploads on all
three APIs of the real daemon.

The daemon collects every few milliseconds whatever has gone unused for a
millisecond, while the seed API, /v1 with declared chunk lists (known chunks
attached without their bytes) and tus upload files made of the same few
chunks, and half of the files are deleted again, so the chunks the uploads
attach are forever dropping to zero uses. Every file must read back as sent,
and the data directory must be fsck-clean at the end.
"""

from __future__ import annotations

import base64
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import blake3
import httpx
import pytest
from support.e2e import Daemon, tus_patch

pytestmark = [pytest.mark.e2e, pytest.mark.stress]

CHUNK = 4096
ROUNDS = 50  # uploads per API (the store-level race in cas/test_gc_races.py runs thousands)
POOL = [random.Random(i).randbytes(CHUNK) for i in range(5)]
TUS = {"Tus-Resumable": "1.0.0"}
ENV = {
    "INGESTD_STORAGE_CHUNK_SIZE": str(CHUNK),
    "INGESTD_STORAGE_CDC_MIN_SIZE": "1024",
    "INGESTD_STORAGE_CDC_AVG_SIZE": str(CHUNK),
    "INGESTD_STORAGE_CDC_MAX_SIZE": str(2 * CHUNK),
    "INGESTD_STORAGE_GC_GRACE": "0.001",
    "INGESTD_STORAGE_MAINTENANCE_INTERVAL": "0.005",
    "INGESTD_STORAGE_MATERIALIZE": "none",
    "INGESTD_STORAGE_DURABILITY": "none",
    "INGESTD_PLUGINS_AUTOLOAD": "false",
    "INGESTD_PLUGINS_ENABLED": "detect",
}


def content(rng: random.Random) -> bytes:
    data = b"".join(rng.choice(POOL) for _ in range(rng.randint(1, 4)))
    return data[: len(data) - rng.randint(0, CHUNK - 1)]


def retried(send, attempts: int = 50) -> httpx.Response:
    """503 try_again: the object was collected just before it was attached."""
    for _ in range(attempts):
        r = send()
        if r.status_code != 503:
            return r
    raise AssertionError(f"still 503 after {attempts} attempts: {r.text}")


def seed_upload(http: httpx.Client, name: str, data: bytes) -> None:
    r = http.post("/api/upload/init", json={"filename": name, "totalSize": len(data)})
    upload_id, total = r.json()["uploadId"], -(-len(data) // CHUNK)
    for i in range(total):
        fields = {"uploadId": upload_id, "chunkIndex": str(i), "totalChunks": str(total)}
        r = retried(
            lambda i=i, fields=fields: http.post(
                "/api/upload/chunk",
                data=fields,
                files={"chunk": ("c", data[i * CHUNK : (i + 1) * CHUNK])},
            )
        )
        assert r.status_code == 200, r.text
    r = retried(lambda: http.post(f"/api/upload/complete/{upload_id}"))
    assert r.status_code == 200, r.text


def v1_upload(http: httpx.Client, name: str, data: bytes) -> None:
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    chunks = [{"hash": blake3.blake3(p).hexdigest(), "size": len(p)} for p in pieces]
    r = retried(
        lambda: http.post(
            "/v1/uploads", json={"filename": name, "size": len(data), "chunks": chunks}
        )
    )
    assert r.status_code == 201, r.text
    up = r.json()
    for i in up["missing"]:
        put = retried(lambda i=i: http.put(f"/v1/uploads/{up['id']}/chunks/{i}", content=pieces[i]))
        assert put.status_code == 200, put.text
    r = retried(lambda: http.post(f"/v1/uploads/{up['id']}/complete"))
    assert r.status_code == 202, r.text


def tus_upload(http: httpx.Client, name: str, data: bytes, rng: random.Random) -> None:
    meta = f"filename {base64.b64encode(name.encode()).decode()}"
    r = http.post(
        "/files/", headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta}
    )
    path = httpx.URL(r.headers["Location"]).path
    offset = 0
    for _ in range(1000):
        if offset == len(data):
            return
        piece = data[offset : offset + rng.randint(1, 2 * CHUNK)]
        r = tus_patch(http, path, offset, piece)
        if r.status_code == 503:
            # Some of it may have been kept before an object was collected
            # under it: as a tus client does, ask where the upload is.
            offset = int(http.head(path, headers=TUS).headers["Upload-Offset"])
            continue
        assert r.status_code == 204, r.text
        offset = int(r.headers["Upload-Offset"])
    raise AssertionError(f"{name}: the tus upload did not finish")


def accepted(http: httpx.Client, name: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        files = http.get("/v1/files", params={"filename": name}).json()["files"]
        if files and files[0]["state"] != "processing":
            return files[0]
        time.sleep(0.05)
    raise AssertionError(f"{name} was not processed")


def test_gc_with_no_grace_never_deletes_what_uploads_on_the_three_apis_use(tmp_path: Path):
    failures: list[BaseException] = []
    kept: dict[str, tuple[str, str]] = {}  # name -> (file id, blake3)
    lock = threading.Lock()
    with Daemon(tmp_path / "d", extra_env=ENV) as daemon:

        def uploader(api: str, seed: int) -> None:
            rng = random.Random(seed)
            try:
                with httpx.Client(base_url=daemon.base_url, timeout=60) as http:
                    for n in range(ROUNDS):
                        name, data = f"{api}-{n}.bin", content(rng)
                        if api == "seed":
                            seed_upload(http, name, data)
                        elif api == "v1":
                            v1_upload(http, name, data)
                        else:
                            tus_upload(http, name, data, rng)
                        record = accepted(http, name)
                        assert record["state"] == "accepted", record
                        body = http.get(f"/v1/files/{record['id']}/content").content
                        assert body == data, name
                        if rng.random() < 0.5:
                            assert http.delete(f"/v1/files/{record['id']}").status_code == 204
                        else:
                            with lock:
                                kept[name] = (record["id"], blake3.blake3(data).hexdigest())
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                failures.append(exc)

        threads = [
            threading.Thread(target=uploader, args=(api, i))
            for i, api in enumerate(("seed", "v1", "tus"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in threads)
        assert not failures, failures[0]
        with httpx.Client(base_url=daemon.base_url, timeout=60) as http:
            time.sleep(0.2)  # a few more collections
            for name, (file_id, digest) in kept.items():
                body = http.get(f"/v1/files/{file_id}/content").content
                assert blake3.blake3(body).hexdigest() == digest, name
            metrics = http.get("/metrics").text
        daemon.stop()
    runs = [ln for ln in metrics.splitlines() if ln.startswith("ingestd_gc_runs_total")]
    assert runs and float(runs[0].split()[-1]) > 100, runs  # the collector really ran
    fsck = subprocess.run(
        [sys.executable, "-m", "ingestd.daemon.cli", "fsck", "--data-dir", str(daemon.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fsck.returncode == 0, fsck.stdout

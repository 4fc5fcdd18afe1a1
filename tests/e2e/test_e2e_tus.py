"""tus against the real daemon with real clients: tuspy, tus-js-client (node), a SIGKILL.

tus-js-client runs under node from tests/e2e/tus_js/ (its package.json and
client.mjs); the `tus_js` fixture (conftest.py) installs it there with `npm ci` when it is
missing, and the tests that need it skip, saying so, when node or npm is not
on the PATH. Every upload is verified by sha256 after downloading it back.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from support.e2e import Daemon, write_random_file
from support.tus_js import run_tus_js

pytestmark = pytest.mark.e2e

MIB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


@pytest.fixture
def daemon(tmp_path: Path, backends: dict[str, str]):
    with Daemon(tmp_path / "daemon", extra_env=backends) as d:
        yield d


def finished_file(base: str, url: str) -> dict:
    """Wait for the upload's job; the file it recorded."""
    r = httpx.head(url, headers=TUS, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Upload-Offset"] == r.headers["Upload-Length"]
    job = httpx.get(f"{base}/v1/jobs/{r.headers['Ingestd-Job-Id']}?wait=30", timeout=40).json()
    assert job["state"] == "succeeded", job
    return httpx.get(f"{base}/v1/files/{job['file_id']}", timeout=10).json()


def downloaded_sha256(url: str) -> str:
    sha = hashlib.sha256()
    with httpx.stream("GET", url, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for block in r.iter_bytes(MIB):
            sha.update(block)
    return sha.hexdigest()


def test_tuspy_uploads_in_1_mib_patches(daemon: Daemon, tmp_path: Path):
    from tusclient import client as tus_client

    path = tmp_path / "tuspy.bin"
    size = 12 * MIB + 12345
    digest = write_random_file(path, size)
    patches = []
    uploader = tus_client.TusClient(f"{daemon.base_url}/files/").uploader(
        str(path),
        chunk_size=MIB,
        metadata={"filename": "tuspy.bin"},
        upload_checksum=True,  # sha1 of every PATCH, verified before it is kept
        store_url=False,
        retries=0,
    )
    while uploader.offset < size:
        uploader.upload_chunk()
        patches.append(uploader.offset)
    assert patches[:2] == [MIB, 2 * MIB] and len(patches) == 13
    file = finished_file(daemon.base_url, uploader.url)
    assert file["filename"] == "tuspy.bin" and file["size"] == size
    assert file["chunks"]["count"] == 13
    assert downloaded_sha256(uploader.url) == digest
    assert downloaded_sha256(f"{daemon.base_url}/v1/files/{file['id']}/content") == digest


def test_tus_js_client_aborted_then_resumed_by_a_new_upload(
    daemon: Daemon, tus_js: list[str], tmp_path: Path
):
    path = tmp_path / "checkpoint.bin"
    size = 24 * MIB + 777
    digest = write_random_file(path, size)
    storage = tmp_path / "tus-urls.json"
    endpoint = f"{daemon.base_url}/files/"
    # One PATCH for the whole file (sent at 40 MiB/s), cut off by abort() after 10 MiB.
    first = run_tus_js(
        tus_js,
        endpoint,
        path,
        *("--abort-after", str(10 * MIB), "--throttle-mib-s", "40"),
        *("--url-storage", str(storage)),
    )
    assert first["event"] == "aborted" and first["patches"] == 1, first
    assert not first["resumed"] and first["url"].startswith(endpoint)
    # A new Upload object finds the URL by the file's fingerprint and resumes.
    second = run_tus_js(tus_js, endpoint, path, "--url-storage", str(storage))
    assert second["event"] == "success", second
    assert second["resumed"] and second["url"] == first["url"]
    # The server kept what arrived of the cut-off PATCH, tail included.
    assert 0 < second["resumed_from"] <= first["sent"], (first, second)
    file = finished_file(daemon.base_url, second["url"])
    assert file["filename"] == "checkpoint.bin" and file["size"] == size
    assert downloaded_sha256(second["url"]) == digest


def test_tus_js_client_three_parallel_partials_concatenated(
    daemon: Daemon, tus_js: list[str], tmp_path: Path
):
    path = tmp_path / "dataset.bin"
    size = 20 * MIB + 4321
    digest = write_random_file(path, size)
    endpoint = f"{daemon.base_url}/files/"
    result = run_tus_js(tus_js, endpoint, path, "--parallel", "3")
    assert result["event"] == "success" and result["patches"] == 3, result
    r = httpx.head(result["url"], headers=TUS, timeout=10)
    partials = r.headers["Upload-Concat"].removeprefix("final;").split()
    assert len(partials) == 3
    lengths = []
    for partial in partials:
        p = httpx.head(httpx.URL(endpoint).join(partial), headers=TUS, timeout=10)
        assert p.headers["Upload-Concat"] == "partial"
        assert p.headers["Upload-Offset"] == p.headers["Upload-Length"]
        lengths.append(int(p.headers["Upload-Length"]))
    assert sum(lengths) == size
    file = finished_file(daemon.base_url, result["url"])
    # The final manifest is the partials' chunks: one short chunk per partial
    # boundary, nothing re-cut or copied.
    assert file["chunks"]["count"] == sum(-(-n // MIB) for n in lengths)
    assert downloaded_sha256(result["url"]) == digest


def test_sigkill_during_a_patch_then_resume(daemon: Daemon, tmp_path: Path):
    size = 16 * MIB
    data = os.urandom(size)
    base = daemon.base_url
    r = httpx.post(f"{base}/files/", headers={**TUS, "Upload-Length": str(size)}, timeout=10)
    url = httpx.URL(base).join(r.headers["Location"])
    first = 2 * MIB + MIB // 2  # a durable tail of half a chunk
    r = httpx.patch(
        url,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
        content=data[:first],
        timeout=30,
    )
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(first)

    outcome: dict[str, object] = {}

    def slow_body():
        # 256 KiB at a time, slowly, so that the kill lands mid-request.
        for start in range(first, size, 256 << 10):
            yield data[start : start + (256 << 10)]
            time.sleep(0.02)

    def send() -> None:
        try:
            outcome["response"] = httpx.patch(
                url,
                headers={**TUS, "Upload-Offset": str(first), "Content-Type": OCTETS},
                content=slow_body(),
                timeout=30,
            )
        except httpx.TransportError as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 30
    reported = first
    while reported < 7 * MIB and time.monotonic() < deadline:
        reported = int(httpx.head(url, headers=TUS, timeout=5).headers["Upload-Offset"])
        time.sleep(0.05)
    assert reported >= 7 * MIB, "the PATCH did not progress"
    daemon.kill()
    sender.join(timeout=30)
    assert "error" in outcome, "the PATCH finished before the kill"

    daemon.start()
    r = httpx.head(url, headers=TUS, timeout=10)
    offset = int(r.headers["Upload-Offset"])
    # Every offset the server reported before the kill is still there.
    assert offset >= reported, (offset, reported)
    r = httpx.patch(
        url,
        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS},
        content=data[offset:],
        timeout=60,
    )
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(size)
    file = finished_file(base, str(url))
    # Bytes kept before the kill are the client's bytes: the whole file hashes right.
    assert downloaded_sha256(str(url)) == hashlib.sha256(data).hexdigest()
    assert file["size"] == size


def test_refused_patches_leave_the_connection_usable(daemon: Daemon):
    body = os.urandom(3 * MIB)
    with httpx.Client(base_url=daemon.base_url, timeout=10) as client:
        r = client.post("/files/", headers={**TUS, "Upload-Length": str(len(body))})
        url = r.headers["Location"]
        for _ in range(3):
            r = client.patch(
                url,
                headers={**TUS, "Upload-Offset": "5", "Content-Type": OCTETS},
                content=body,
            )
            assert r.status_code == 409 and r.json()["code"] == "offset_mismatch"
            assert client.head(url, headers=TUS).headers["Upload-Offset"] == "0"
        r = client.patch(
            url,
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
            content=body,
        )
        assert r.status_code == 204 and r.headers["Upload-Offset"] == str(len(body))

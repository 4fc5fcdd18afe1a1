"""A full disk, for real: the daemon's data directory on a small tmpfs.

The reserve refuses new uploads before the disk is full; when a filler file
takes the rest, chunk writes on all three APIs answer 507 `storage_full`,
reads go on, nothing acknowledged is lost, and once space is freed the
interrupted uploads resume and verify. Needs root (mount); skips otherwise.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from support.e2e import Daemon, tus_patch

pytestmark = pytest.mark.e2e

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> int:
    """Write zeros to `path` until the disk is full; bytes written."""
    written = 0
    block = b"\0" * MiB
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(block)
        except OSError:
            pass
        # Whatever fits of a last small block, so that almost nothing is left.
        for size in (65536, 4096, 512):
            try:
                while True:
                    written += f.write(b"\0" * size)
            except OSError:
                pass
    return written


def test_reserve_full_disk_and_resume(small_disk: Path, tmp_path: Path):
    env = {
        "INGESTD_STORAGE_RESERVE": "24MiB",
        "INGESTD_STORAGE_CHUNK_SIZE": str(MiB),
        # A small map: LMDB's file grows within the tmpfs.
        "INGESTD_PLUGINS_ENABLED": "detect",
    }
    with Daemon(tmp_path / "d", data_dir=small_disk / "data", extra_env=env) as d:
        http = httpx.Client(base_url=d.base_url, timeout=30)
        kept = os.urandom(4 * MiB)
        r = http.post("/v1/uploads", json={"filename": "kept.bin", "size": len(kept)})
        up = r.json()
        for i in up["missing"]:
            assert (
                http.put(
                    f"/v1/uploads/{up['id']}/chunks/{i}", content=kept[i * MiB : (i + 1) * MiB]
                ).status_code
                == 200
            )
        job = http.post(f"/v1/uploads/{up['id']}/complete").json()
        kept_file = http.get(f"/v1/jobs/{job['job_id']}?wait=30").json()["file_id"]
        # The reserve: an upload that would leave less than 24 MiB free is refused.
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        r = http.post("/v1/uploads", json={"filename": "big.bin", "size": free - 20 * MiB})
        assert r.status_code == 507 and r.json()["code"] == "storage_reserve", r.text
        assert r.json()["reserve"] == 24 * MiB and r.json()["free"] > 0
        r = http.post("/files/", headers={**TUS, "Upload-Length": str(free - 20 * MiB)})
        assert r.status_code == 507 and r.json()["code"] == "storage_reserve"
        # Uploads that fit are opened on all three APIs.
        data = os.urandom(6 * MiB)
        v1 = http.post("/v1/uploads", json={"filename": "v1.bin", "size": len(data)}).json()
        seed = http.post(
            "/api/upload/init", json={"filename": "s.bin", "totalSize": len(data)}
        ).json()
        tus = http.post("/files/", headers={**TUS, "Upload-Length": str(len(data))}).headers[
            "Location"
        ]
        assert http.put(f"/v1/uploads/{v1['id']}/chunks/0", content=data[:MiB]).status_code == 200
        # Now the disk fills up.
        filler = small_disk / "filler"
        assert fill(filler) > 0
        r = http.put(f"/v1/uploads/{v1['id']}/chunks/1", content=data[MiB : 2 * MiB])
        assert r.status_code == 507 and r.json()["code"] == "storage_full", r.text
        r = http.post(
            "/api/upload/chunk",
            data={"uploadId": seed["uploadId"], "chunkIndex": "0", "totalChunks": "6"},
            files={"chunk": ("c", data[:MiB], "application/octet-stream")},
        )
        assert r.status_code == 507 and r.json()["code"] == "storage_full", r.text
        r = tus_patch(http, tus, 0, data[: 2 * MiB])
        assert r.status_code == 507, r.text
        # Reads keep working, and what was stored is intact.
        r = http.get(f"/v1/files/{kept_file}/content")
        assert (
            r.status_code == 200
            and hashlib.sha256(r.content).digest() == hashlib.sha256(kept).digest()
        )
        assert http.get(f"/v1/uploads/{v1['id']}").json()["received_chunks"] == 1
        # Space freed: the interrupted uploads resume and complete.
        filler.unlink()
        for i in http.get(f"/v1/uploads/{v1['id']}").json()["missing"]:
            r = http.put(
                f"/v1/uploads/{v1['id']}/chunks/{i}", content=data[i * MiB : (i + 1) * MiB]
            )
            assert r.status_code == 200, r.text
        job = http.post(f"/v1/uploads/{v1['id']}/complete").json()
        file_id = http.get(f"/v1/jobs/{job['job_id']}?wait=30").json()["file_id"]
        r = http.get(f"/v1/files/{file_id}/content")
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
        offset = int(http.head(tus, headers=TUS).headers["Upload-Offset"])
        r = tus_patch(http, tus, offset, data[offset:])
        assert r.status_code == 204, r.text
        r = http.get(tus, headers=TUS)
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
        # No empty folders were left behind in completed/.
        completed = small_disk / "data" / "completed"
        for path in completed.rglob("*"):
            assert not (path.is_dir() and not any(path.iterdir())), path
        http.close()

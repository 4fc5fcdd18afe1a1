"""The daemon with its index in PostgreSQL, when PostgreSQL goes away and
comes back: 503 with Retry-After meanwhile (never a 500, nothing acknowledged
that was not committed), and it recovers by itself."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.e2e import Daemon
from support.postgres import Postgres, running_postgres

pytestmark = pytest.mark.e2e

RECOVERY_TIMEOUT = 60.0


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own: it is stopped and started again."""
    with running_postgres() as server:
        yield server


def upload(base: str, data: bytes, name: str) -> str:
    """A /v1 upload, completed and processed; its file id."""
    created = httpx.post(f"{base}/v1/uploads", json={"filename": name, "size": len(data)})
    assert created.status_code == 201, created.text
    upload_id, size = created.json()["id"], created.json()["chunk_size"]
    for i in created.json()["missing"]:
        r = httpx.put(
            f"{base}/v1/uploads/{upload_id}/chunks/{i}", content=data[i * size : (i + 1) * size]
        )
        assert r.status_code == 200, r.text
    done = httpx.post(f"{base}/v1/uploads/{upload_id}/complete")
    assert done.status_code == 202, done.text
    job = httpx.get(f"{base}/v1/jobs/{done.json()['job_id']}?wait=30", timeout=40).json()
    assert job["state"] == "succeeded", job
    return job["file_id"]


def content_sha256(base: str, file_id: str) -> str:
    r = httpx.get(f"{base}/v1/files/{file_id}/content", timeout=30)
    assert r.status_code == 200, r.text
    return hashlib.sha256(r.content).hexdigest()


def test_postgres_down_means_503_then_the_daemon_recovers_by_itself(
    tmp_path: Path, own_postgres: Postgres
):
    env = {
        **own_postgres.environ("ingestd"),
        "INGESTD_STORAGE_CHUNK_SIZE": "65536",
        "INGESTD_STORAGE_MAINTENANCE_INTERVAL": "0.5",  # background work meets the outage too
    }
    first = os.urandom(200_000)
    with Daemon(tmp_path / "daemon", extra_env=env) as daemon:
        base = daemon.base_url
        kept = upload(base, first, "before.bin")
        open_upload = httpx.post(f"{base}/v1/uploads", json={"filename": "o.bin", "size": 70_000})
        assert open_upload.status_code == 201

        own_postgres.pg_ctl("kill")
        seen: list[int] = []
        for attempt in [
            lambda: httpx.get(f"{base}/v1/files", timeout=30),
            lambda: httpx.post(f"{base}/v1/uploads", json={"filename": "x", "size": 3}, timeout=30),
            lambda: httpx.put(
                f"{base}/v1/uploads/{open_upload.json()['id']}/chunks/1",
                content=os.urandom(70_000 - 65_536),
                timeout=30,
            ),
            lambda: httpx.post(
                f"{base}/files/",
                headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"},
                timeout=30,
            ),
            lambda: httpx.post(
                f"{base}/api/upload/init",
                json={"filename": "s.bin", "totalSize": 10},
                timeout=30,
            ),
        ]:
            r = attempt()
            seen.append(r.status_code)
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"].isdigit()
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "index_unavailable", r.json()
        time.sleep(1.5)  # a few maintenance passes fail meanwhile
        assert daemon.running, daemon.log_tail()

        own_postgres.pg_ctl("start")
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            if httpx.get(f"{base}/v1/files", timeout=30).status_code == 200:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not recovered in {RECOVERY_TIMEOUT}s\n{daemon.log_tail()}")
        assert content_sha256(base, kept) == hashlib.sha256(first).hexdigest()
        # The chunk refused during the outage was not recorded: it is still missing.
        status = httpx.get(f"{base}/v1/uploads/{open_upload.json()['id']}").json()
        assert status["missing"] == [0, 1]
        second = os.urandom(150_000)
        again = upload(base, second, "after.bin")
        assert content_sha256(base, again) == hashlib.sha256(second).hexdigest()
        assert daemon.running

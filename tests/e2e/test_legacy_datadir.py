"""A data directory written by an earlier release opens and serves unchanged.

`fixtures/legacy-datadir.tar.gz` was written by `fixtures/make_legacy_datadir.py`
running the code of the commit named in `fixtures/legacy-datadir.json`: three
accepted files (seed API, /v1 with declared chunks, tus), an open /v1 upload
with chunks missing, an open tus upload with a partial tail, and a deleted
file whose chunks were released. Each test serves a fresh copy with the
current code and checks that nothing of it was lost or misread.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from support.e2e import Cli, Daemon
from support.postgres import unique_schema
from support.seaweedfs import unique_prefix

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
# Maintenance runs often, with a grace the fixture's released chunks are long
# past: every test then serves the data only after garbage collection has
# judged the legacy index, so a live chunk it misread as unused would be gone.
GC_ENV = {"INGESTD_STORAGE_GC_GRACE": "2", "INGESTD_STORAGE_MAINTENANCE_INTERVAL": "0.5"}
GC_TIMEOUT = 30.0


def _load_content() -> ModuleType:
    # Loaded by path: a `fixtures` package installed elsewhere must not shadow it.
    name = "ingestd_tests_legacy_content"
    spec = importlib.util.spec_from_file_location(name, FIXTURES / "legacy_content.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lc = _load_content()
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "legacy-datadir.json").read_text())
CONTENT = lc.build()


def expected_bytes(role: str) -> bytes:
    value = getattr(CONTENT, role)
    return b"".join(value) if isinstance(value, list) else value


def object_path(data_dir: Path, digest: str) -> Path:
    return data_dir / "objects" / digest[:2] / digest[2:4] / digest


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[Daemon]:
    """The current daemon on a fresh copy of the fixture, after one GC pass."""
    data_dir = tmp_path / "data"
    with tarfile.open(FIXTURES / "legacy-datadir.tar.gz") as tar:
        tar.extractall(data_dir, filter="data")
    daemon = Daemon(
        tmp_path / "daemon",
        data_dir=data_dir,
        extra_env={**MANIFEST["config_env"], **GC_ENV},
    ).start()
    try:
        released = [object_path(data_dir, d) for d in MANIFEST["deleted"]["released_chunks"]]
        deadline = time.monotonic() + GC_TIMEOUT
        while any(p.exists() for p in released) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(p.exists() for p in released), (
            f"released chunks not collected within {GC_TIMEOUT}s\n{daemon.log_tail()}"
        )
        yield daemon
    finally:
        if daemon.running:
            daemon.stop()  # asserts a clean exit after SIGTERM


@pytest.fixture
def client(legacy: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=legacy.base_url, timeout=30) as c:
        yield c


def finished_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, timeout=40).json()
    assert job["state"] == "succeeded", job
    return job


def assert_content(r: httpx.Response, data: bytes) -> None:
    assert r.status_code == 200, r.text
    assert lc.sha256_hex(r.content) == lc.sha256_hex(data)
    assert lc.blake3_hex(r.content) == lc.blake3_hex(data)


def assert_range(client: httpx.Client, url: str, data: bytes) -> None:
    # Across a chunk boundary, so the read spans two stored chunks.
    start, end = lc.CHUNK_SIZE - 1000, lc.CHUNK_SIZE + 5000
    r = client.get(url, headers={"Range": f"bytes={start}-{end}"})
    assert r.status_code == 206, r.text
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert r.content == data[start : end + 1]


def assert_serves(client: httpx.Client, file_id: str, entry: dict[str, Any], data: bytes) -> None:
    """The file is accepted, described as recorded, and its bytes are `data`."""
    assert lc.sha256_hex(data) == entry["sha256"]
    info = client.get(f"/v1/files/{file_id}").json()
    assert info["state"] == "accepted", info
    assert (info["filename"], info["size"], info["blake3"]) == (
        entry["filename"],
        entry["size"],
        entry["blake3"],
    )
    url = f"/v1/files/{file_id}/content"
    r = client.get(url)
    assert_content(r, data)
    assert r.headers["ETag"] == f'"{entry["blake3"]}"'
    assert client.get(url, headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    assert_range(client, url, data)


def test_fixture_content_regenerates_identically():
    for entry in [*MANIFEST["files"], *MANIFEST["open_uploads"], MANIFEST["deleted"]]:
        data = expected_bytes(entry["role"])
        assert (len(data), lc.sha256_hex(data), lc.blake3_hex(data)) == (
            entry["size"],
            entry["sha256"],
            entry["blake3"],
        ), entry["role"]


def test_accepted_files_are_listed_and_served(client: httpx.Client):
    listed = {f["id"]: f for f in client.get("/v1/files").json()["files"]}
    assert set(listed) == {e["id"] for e in MANIFEST["files"]}
    for entry in MANIFEST["files"]:
        assert listed[entry["id"]]["state"] == "accepted"
        assert listed[entry["id"]]["sha256"] == entry["server_sha256"]
        assert_serves(client, entry["id"], entry, expected_bytes(entry["role"]))
        info = client.get(f"/v1/files/{entry['id']}").json()
        assert info["upload_id"] == entry["upload_id"]
        assert info["chunks"]["count"] == entry["chunk_count"]
        assert client.get(f"/v1/jobs/{entry['job_id']}").json()["state"] == "succeeded"
    assert client.get(f"/v1/files/{MANIFEST['deleted']['id']}").status_code == 404


def test_completed_uploads_report_complete_on_their_own_api(client: httpx.Client):
    by_role = {e["role"]: e for e in MANIFEST["files"]}
    seed = by_role["seed_file"]
    status = client.get(f"/api/upload/status/{seed['upload_id']}").json()
    assert status["isComplete"] is True and status["state"] == "completed", status
    assert status["receivedChunks"] == list(range(seed["chunk_count"]))

    v1 = by_role["declared_file"]
    status = client.get(f"/v1/uploads/{v1['upload_id']}").json()
    assert status["state"] == "completed" and status["file_id"] == v1["id"], status
    assert status["missing"] == []

    tus = by_role["tus_file"]
    head = client.head(f"/files/{tus['upload_id']}", headers=TUS)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(tus["size"])
    assert head.headers["Ingestd-File-Id"] == tus["id"]
    data = expected_bytes("tus_file")
    assert_content(client.get(f"/files/{tus['upload_id']}"), data)
    assert_range(client, f"/files/{tus['upload_id']}", data)


def test_open_v1_upload_resumes_where_it_stopped(client: httpx.Client):
    entry = MANIFEST["open_uploads"][0]
    assert entry["role"] == "open_declared"
    url = f"/v1/uploads/{entry['id']}"
    status = client.get(url).json()
    assert status["state"] == "open", status
    assert status["missing"] == entry["missing"]
    assert (status["total_chunks"], status["received_chunks"]) == (
        entry["total_chunks"],
        len(entry["received"]),
    )
    r = client.post(f"{url}/complete")
    assert r.status_code == 409 and r.json()["code"] == "chunks_missing", r.text

    pieces = CONTENT.open_declared
    kept = entry["received"][-1]
    again = client.put(f"{url}/chunks/{kept}", content=pieces[kept])
    assert again.status_code == 200 and again.json()["stored"] is False, again.text
    for i in entry["missing"]:
        r = client.put(f"{url}/chunks/{i}", content=pieces[i])
        assert r.status_code == 200, r.text
    r = client.post(f"{url}/complete")
    assert r.status_code == 202, r.text
    job = finished_job(client, r.json()["job_id"])
    assert_serves(client, job["file_id"], entry, b"".join(pieces))


def test_open_tus_upload_resumes_after_its_tail(client: httpx.Client):
    entry = MANIFEST["open_uploads"][1]
    assert entry["role"] == "open_tus"
    url = f"/files/{entry['id']}"
    head = client.head(url, headers=TUS)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == str(entry["offset"])
    assert head.headers["Upload-Length"] == str(entry["size"])
    assert head.headers["Ingestd-Upload-State"] == "open"

    data = CONTENT.open_tus
    patch = {**TUS, "Content-Type": OCTETS}
    r = client.patch(url, headers={**patch, "Upload-Offset": "0"}, content=data)
    assert r.status_code == 409 and r.json()["code"] == "offset_mismatch", r.text
    offset = entry["offset"]
    r = client.patch(url, headers={**patch, "Upload-Offset": str(offset)}, content=data[offset:])
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(len(data)), r.text

    head = client.head(url, headers=TUS)
    job = finished_job(client, head.headers["Ingestd-Job-Id"])
    assert head.headers["Ingestd-File-Id"] == job["file_id"]
    assert_content(client.get(url), data)
    assert_serves(client, job["file_id"], entry, data)


def test_released_chunks_go_and_the_shared_one_stays(legacy: Daemon, client: httpx.Client):
    deleted = MANIFEST["deleted"]
    # The fixture waited for the released chunks to be collected; the chunk the
    # deleted file shared with declared.jsonl is still referenced and kept.
    for digest in deleted["live_chunks"]:
        assert object_path(legacy.data_dir, digest).is_file(), digest
    for entry in MANIFEST["files"]:
        assert_serves(client, entry["id"], entry, expected_bytes(entry["role"]))

    # The same content again: only the collected chunks are asked for, and the
    # file it makes is whole.
    pieces = CONTENT.deleted_file
    data = b"".join(pieces)
    body = {
        "filename": deleted["filename"],
        "size": len(data),
        "sha256": lc.sha256_hex(data),
        "chunks": lc.declared(pieces),
    }
    created = client.post("/v1/uploads", json=body).json()
    assert created["missing"] == list(range(1, len(pieces))), created
    for i in created["missing"]:
        r = client.put(f"/v1/uploads/{created['id']}/chunks/{i}", content=pieces[i])
        assert r.status_code == 200, r.text
    r = client.post(f"/v1/uploads/{created['id']}/complete")
    assert r.status_code == 202, r.text
    job = finished_job(client, r.json()["job_id"])
    assert job["file_id"] != deleted["id"]
    assert_serves(client, job["file_id"], deleted, data)


def test_tenant_usage_is_built_from_the_old_index(client: httpx.Client):
    # The fixture predates the tenant ledger: its figures come from the manifests.
    usage = client.get("/v1/usage").json()
    files = MANIFEST["files"]
    assert usage["files"] == len(files)
    assert usage["logical_bytes"] == sum(e["size"] for e in files)
    assert usage["open_uploads"] == len(MANIFEST["open_uploads"])
    assert (
        0
        < usage["physical_bytes"]
        <= usage["logical_bytes"] + sum(e["size"] for e in MANIFEST["open_uploads"])
    )


def _target_config(path: Path, seaweedfs: Any, postgres: Any, data_dir: Path) -> Path:
    """A config file naming a bucket prefix and a schema of their own."""
    s3 = seaweedfs.settings
    schema = unique_schema()
    path.write_text(
        f"""
[storage]
backend = "s3"
data_dir = "{data_dir}"

[storage.s3]
endpoint = "{s3["endpoint"]}"
bucket = "{s3["bucket"]}"
prefix = "{unique_prefix()}"
region = "{s3["region"]}"
access_key_id = "{s3["access_key_id"]}"
secret_access_key = "{s3["secret_access_key"]}"

[index]
backend = "postgres"
dsn = "{postgres.dsn}"
schema = "{schema}"
"""
    )
    return path


def test_the_old_data_dir_moves_to_s3_and_postgres_and_serves_from_there(
    tmp_path: Path, seaweedfs: Any, postgres: Any, cli: Cli
):
    """`ingestd migrate --to`: every chunk and record copied, every file
    verified, a second run refused once it finished, and a daemon on the new
    backends alone (a fresh data directory) serves the files and resumes the
    open upload."""
    source = tmp_path / "data"
    with tarfile.open(FIXTURES / "legacy-datadir.tar.gz") as tar:
        tar.extractall(source, filter="data")
    target = _target_config(tmp_path / "target.toml", seaweedfs, postgres, tmp_path / "scratch")
    cli.env.update(MANIFEST["config_env"])
    first = json.loads(
        cli.run("migrate", "--data-dir", str(source), "--to", str(target), "--json").stdout
    )
    assert first["ok"] is True and first["files_failed"] == []
    assert first["files_verified"] == len(MANIFEST["files"])
    assert first["chunks_copied"] > 0 and first["chunks_present"] == 0
    # Finished: a second run is refused (its daemon may serve the target by now).
    again = cli.run("migrate", "--data-dir", str(source), "--to", str(target), expect=2)
    assert "finished already" in again.stderr

    daemon = Daemon(
        tmp_path / "daemon",
        data_dir=tmp_path / "scratch",
        config_path=target,
        extra_env=dict(MANIFEST["config_env"]),
    ).start()
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=30) as client:
            for entry in MANIFEST["files"]:
                assert_serves(client, entry["id"], entry, expected_bytes(entry["role"]))
            test_open_v1_upload_resumes_where_it_stopped(client)
    finally:
        daemon.stop()
    # The source is untouched: its own daemon would serve it as before.
    assert (source / "index.lmdb").is_dir()


def test_a_move_into_an_index_with_uploads_of_its_own_is_refused(
    tmp_path: Path, seaweedfs: Any, postgres: Any, cli: Cli
):
    source = tmp_path / "data"
    with tarfile.open(FIXTURES / "legacy-datadir.tar.gz") as tar:
        tar.extractall(source, filter="data")
    target = _target_config(tmp_path / "target.toml", seaweedfs, postgres, tmp_path / "scratch")
    daemon = Daemon(tmp_path / "daemon", data_dir=tmp_path / "scratch", config_path=target).start()
    try:
        r = httpx.post(f"{daemon.base_url}/v1/uploads", json={"filename": "a", "size": 3})
        assert r.status_code == 201, r.text
    finally:
        daemon.stop()
    cli.env.update(MANIFEST["config_env"])
    done = cli.run("migrate", "--data-dir", str(source), "--to", str(target), expect=2)
    assert "already holds sessions" in done.stderr

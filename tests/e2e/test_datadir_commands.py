"""`ingestd gc` and `ingestd stats` through the real executable, on a data
directory prepared with the store library."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from ingestd.cas import Store
from support import chunks as stored
from support.chunks import stored_hashes
from support.e2e import Daemon, cli_command

pytestmark = pytest.mark.e2e


def run(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    done = subprocess.run(
        [*cli_command(), *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def objects(data: Path) -> int:
    return len(stored_hashes(data))


def test_gc_dry_run_then_for_real_and_stats(tmp_path: Path):
    data = tmp_path / "data"
    kept = os.urandom(2500)
    with Store(data, durability="none") as store:
        s = store.create_session(filename="kept", size=len(kept), chunk_size=1000, tenant="t")
        for i in range(3):
            store.put_chunk(s.id, i, kept[i * 1000 : (i + 1) * 1000], "t")
        file_id = store.complete(s.id, "t").file.id
        gone = store.create_session(filename="gone", size=2000, chunk_size=1000, tenant="t")
        for i in range(2):
            store.put_chunk(gone.id, i, os.urandom(1000), "t")
        store.cancel(gone.id, "t")
        store.chunks.sync([store.chunks.put(os.urandom(700))])  # an object no record names
    before = objects(data)
    dry = run("gc", "--dry-run", "--grace", "0", "--json", "--data-dir", str(data))
    assert dry["unreferenced_objects"] == 2 and dry["unreferenced_bytes"] == 2000
    assert dry["orphan_objects"] == 1 and dry["orphan_bytes"] == 700
    assert objects(data) == before  # nothing went
    done = run("gc", "--grace", "0", "--json", "--data-dir", str(data))
    assert (done["unreferenced_objects"], done["orphan_objects"]) == (2, 1)
    assert objects(data) == before - 3
    with Store(data, durability="none") as store, store.open_file(file_id, "t") as reader:
        assert hashlib.sha256(reader.read()).digest() == hashlib.sha256(kept).digest()
    stats = run("stats", "--json", "--data-dir", str(data))
    assert stats["store"]["objects"] == before - 3
    assert stats["store"]["sessions"] == {"completed": 1, "cancelled": 1}
    assert stats["store"]["files"] == {"accepted": 1}
    assert stats["tenants"][0]["tenant"] == "t" and stats["tenants"][0]["logical_bytes"] == 2500


def fsck_cli(data: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    return subprocess.run(
        [*cli_command(), "fsck", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def v1_upload(base: str, data: bytes, name: str) -> str:
    """Fixed-size chunks through /v1; the file id once it is accepted."""
    with httpx.Client(base_url=base, timeout=30) as http:
        up = http.post("/v1/uploads", json={"filename": name, "size": len(data)}).json()
        step = up["chunk_size"]
        for i in range(up["total_chunks"]):
            r = http.put(
                f"/v1/uploads/{up['id']}/chunks/{i}", content=data[i * step : (i + 1) * step]
            )
            assert r.status_code in (200, 201), r.text
        job = http.post(f"/v1/uploads/{up['id']}/complete").json()
        done = http.get(f"/v1/jobs/{job['job_id']}", params={"wait": 30}).json()
        assert done["verdict"] == "accepted", done
        return http.get(f"/v1/uploads/{up['id']}").json()["file_id"]


def test_fsck_live_then_repair_offline_and_damaged_downloads_refuse(tmp_path: Path):
    data = tmp_path / "d" / "data"
    env = {
        "INGESTD_STORAGE_MATERIALIZE": "none",
        "INGESTD_PLUGINS_AUTOLOAD": "false",
    }
    with Daemon(tmp_path / "d", extra_env=env) as daemon:
        good, bad = os.urandom(200_000), os.urandom(150_000)
        good_id = v1_upload(daemon.base_url, good, "good.bin")
        bad_id = v1_upload(daemon.base_url, bad, "bad.bin")
        # Beside the running daemon: read-only, and clean.
        live = fsck_cli(data, "--json")
        assert live.returncode == 0, live.stdout + live.stderr
        report = json.loads(live.stdout)
        assert report["clean"] and report["files"] == 2
        assert report["verified_bytes"] == report["object_bytes"] >= 350_000
        refused = fsck_cli(data, "--repair")
        assert refused.returncode == 2 and "daemon runs" in refused.stderr
        with Store(data, durability="none", worker="test") as store:
            first = store.manifest(bad_id)[0][0]
            stored.corrupt(store.chunks, first, at=0)
        found = json.loads(fsck_cli(data, "--json").stdout)
        assert {(p["kind"], p["subject"]) for p in found["problems"]} >= {("corrupt_object", first)}
        daemon.stop()
        repaired = fsck_cli(data, "--repair")
        assert repaired.returncode == 1, repaired.stdout + repaired.stderr  # problems were found
        assert f"quarantined corrupt object {first}" in repaired.stdout
        assert f"marked file {bad_id} damaged" in repaired.stdout
        assert "after repair: 0 problems" in repaired.stdout
        assert fsck_cli(data).returncode == 0
        daemon.start()
        with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
            r = http.get(f"/v1/files/{bad_id}/content")
            assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "file_damaged" and "upload it again" in r.json()["detail"]
            assert http.get(f"/v1/files/{bad_id}").json()["state"] == "damaged"
            ok = http.get(f"/v1/files/{good_id}/content")
            assert hashlib.sha256(ok.content).digest() == hashlib.sha256(good).digest()
            # Uploading the same bytes again makes a whole file.
        again = v1_upload(daemon.base_url, bad, "bad.bin")
        with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
            r = http.get(f"/v1/files/{again}/content")
            assert hashlib.sha256(r.content).digest() == hashlib.sha256(bad).digest()

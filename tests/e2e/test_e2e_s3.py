"""The daemon with its chunks in a real S3 server (SeaweedFS): what lands in
the bucket, what stays on local disk, and the data-dir commands on it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import obstore
import pytest
from ingestd.cas.s3store import s3_client
from support.e2e import Cli, Daemon, cli_command
from support.seaweedfs import unique_prefix

pytestmark = pytest.mark.e2e

SIZE = 24 << 20


def objects(server, prefix: str) -> dict[str, int]:
    client = s3_client(**server.settings)
    return {m["path"]: m["size"] for batch in obstore.list(client, prefix=prefix) for m in batch}


def datadir_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    return subprocess.run(
        [*cli_command(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


def test_a_cli_upload_lands_in_the_bucket_as_packs(tmp_path: Path, seaweedfs, cli: Cli):
    prefix = unique_prefix()
    env = {**seaweedfs.environ, "INGESTD_STORAGE_S3_PREFIX": prefix}
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(SIZE))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    data_dir = tmp_path / "d" / "data"
    with Daemon(tmp_path / "d", extra_env=env) as daemon:
        sent = cli.upload(daemon.base_url, str(source))
        assert sent["bytes_sent"] == SIZE
        out = tmp_path / "back.bin"
        cli.run("download", sent["file_id"], "-o", str(out), "--url", daemon.base_url)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
        # The same bytes again: the index knows them, nothing is sent.
        again = cli.upload(daemon.base_url, str(source), "--new")
        assert again["bytes_sent"] == 0
    stored = objects(seaweedfs, f"{prefix}/packs/")
    # Random bytes: every byte stored once, in packs rather than a PUT per
    # chunk (each sync of a run's chunks is one object).
    assert sum(stored.values()) == SIZE
    assert 1 <= len(stored) <= sent["chunks_total"] // 2, (len(stored), sent["chunks_total"])
    # Only the pack index and scratch stay local; no pack bytes.
    assert list((data_dir / "packs").glob("??/*.pack")) == []
    # The data-dir commands read the same bucket.
    env["INGESTD_STORAGE_DATA_DIR"] = str(data_dir)
    fsck = datadir_command(env, "fsck", "--json")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    report = json.loads(fsck.stdout)
    assert report["clean"] and report["verified_bytes"] == SIZE, report
    stats = datadir_command(env, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["store"]["object_bytes"] == SIZE

"""`ingestd gc` and `ingestd stats` through the real executable, on a data
directory prepared with the store library."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from ingestd.cas import Store
from test_e2e_cli import cli_command

pytestmark = pytest.mark.e2e


def run(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    done = subprocess.run(
        [*cli_command(), *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def objects(data: Path) -> int:
    return sum(1 for p in (data / "objects").rglob("*") if p.is_file())


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
        store.chunks.put(os.urandom(700))  # an object no record names
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

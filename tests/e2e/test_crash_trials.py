"""A few crash trials (bench/crash.py has the long run): SIGKILL while the
daemon takes uploads on the seed API, /v1 and tus; nothing acknowledged is
lost, fsck finds nothing, and every file reads back as sent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from crash import run_trials, summary  # noqa: E402 - the benchmark's own trials
from support.postgres import unique_schema  # noqa: E402
from support.seaweedfs import unique_prefix  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.stress]


@pytest.mark.parametrize("backend", ["local", "s3", "s3+postgres"])
def test_sigkill_during_uploads_loses_nothing_acknowledged(request, tmp_path: Path, backend):
    storage_env = {}
    if backend.startswith("s3"):
        server = request.getfixturevalue("seaweedfs")
        storage_env = {**server.environ, "INGESTD_STORAGE_S3_PREFIX": unique_prefix()}
    if backend.endswith("postgres"):
        storage_env.update(request.getfixturevalue("postgres").environ(unique_schema()))
    results = run_trials(tmp_path / "crash", trials=4, seed=5, storage_env=storage_env)
    totals = summary(results)
    notes = [note for r in results for note in r.notes]
    assert totals["acked_chunks"] > 0 and totals["acked_tus_bytes"] > 0, totals
    assert totals["lost_chunks"] == 0 and totals["lost_tus_bytes"] == 0, (totals, notes)
    assert totals["fsck_problems"] == 0, notes
    assert totals["verify_failures"] == 0, notes
    assert totals["files_verified"] > 0, totals

"""A few crash trials (bench/crash.py has the long run): SIGKILL while the
daemon takes uploads on the seed API, /v1 and tus; nothing acknowledged is
lost, fsck finds nothing, and every file reads back as sent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from crash import run_trials, summary  # noqa: E402 - the benchmark's own trials

pytestmark = [pytest.mark.e2e, pytest.mark.stress]


def test_sigkill_during_uploads_loses_nothing_acknowledged(tmp_path: Path):
    results = run_trials(tmp_path / "crash", trials=4, seed=5)
    totals = summary(results)
    notes = [note for r in results for note in r.notes]
    assert totals["acked_chunks"] > 0 and totals["acked_tus_bytes"] > 0, totals
    assert totals["lost_chunks"] == 0 and totals["lost_tus_bytes"] == 0, (totals, notes)
    assert totals["fsck_problems"] == 0, notes
    assert totals["verify_failures"] == 0, notes
    assert totals["files_verified"] > 0, totals

"""Schemathesis against the live daemon's own OpenAPI document.

Every operation, through the examples, coverage, fuzzing and stateful
phases: no answer is a 5xx, every status, content type, header and body is
the one the document promises. The run is the `st` CLI in a subprocess
(its own process, its own report); a longer run is `bench/fuzz.py`.
"""

from __future__ import annotations

import os
import re

import pytest
from support.e2e import Daemon
from support.fuzz import run_schemathesis

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = int(os.environ.get("INGESTD_FUZZ_EXAMPLES", "25"))


def test_the_daemon_answers_the_fuzzer_as_its_document_says(tmp_path):
    with Daemon(tmp_path / "daemon") as daemon:
        result = run_schemathesis(daemon.base_url, MAX_EXAMPLES, tmp_path / "report")
        log_tail = daemon.log_tail()
    summary = result.stdout[-6000:]
    assert result.returncode == 0, f"{summary}\n{result.stderr[-2000:]}\n--- daemon ---\n{log_tail}"
    # The run reached every operation of the document.
    total = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    assert total and total[1] == total[2], summary
    assert f"Tested: {total[2]}" in result.stdout, summary

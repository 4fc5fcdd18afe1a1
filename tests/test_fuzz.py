"""Schemathesis against the live daemon's own OpenAPI document.

Every operation, through the examples, coverage, fuzzing and stateful
phases: no answer is a 5xx, every status, content type, header and body is
the one the document promises. The run is the `st` CLI in a subprocess
(its own process, its own report); a longer run is `bench/fuzz.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import Daemon

pytestmark = pytest.mark.e2e

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
    ]
)
MAX_EXAMPLES = int(os.environ.get("INGESTD_FUZZ_EXAMPLES", "25"))
RUN_TIMEOUT = 600


def schemathesis_command(base_url: str, max_examples: int, report_dir: Path) -> list[str]:
    return [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(max_examples),
        "--workers",
        "2",
        "--seed",
        "12",
        "--request-timeout",
        "20",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-dir",
        str(report_dir),
    ]


def run_schemathesis(
    base_url: str, max_examples: int, report_dir: Path
) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "NO_COLOR": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return subprocess.run(
        schemathesis_command(base_url, max_examples, report_dir),
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def test_the_daemon_answers_the_fuzzer_as_its_document_says(tmp_path):
    with Daemon(tmp_path / "daemon") as daemon:
        result = run_schemathesis(daemon.base_url, MAX_EXAMPLES, tmp_path / "report")
        log_tail = daemon.log_tail()
    summary = result.stdout[-6000:]
    assert result.returncode == 0, f"{summary}\n{result.stderr[-2000:]}\n--- daemon ---\n{log_tail}"
    # The run reached every operation.
    assert "Tested: 29" in result.stdout, summary

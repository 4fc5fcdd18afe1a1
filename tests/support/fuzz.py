"""Schemathesis (the `st` CLI, in a subprocess) against a live daemon's OpenAPI
document: tests/e2e/test_fuzz.py runs it briefly, bench/fuzz.py at length."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

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
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "support.fuzz_hooks", "NO_COLOR": "1"}
    # tests/, where `support` is.
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run(
        schemathesis_command(base_url, max_examples, report_dir),
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )

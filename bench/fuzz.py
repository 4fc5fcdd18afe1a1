"""A long schemathesis run against a fresh daemon (the same checks as
tests/e2e/test_fuzz.py, with many more examples per operation).

Prints the run's figures (requests generated, failures, errors, seconds)
and writes them to bench/results/fuzz.json.

    .venv/bin/python bench/fuzz.py --max-examples 300
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from _common import (
    log,
    make_tmp_dir,
    print_table,
    start_ingestd,
    use_tests_harness,
    write_json,
)

use_tests_harness()
from support.fuzz import run_schemathesis  # noqa: E402 - the tests' own command and checks


def figures(output: str) -> dict[str, int]:
    """The counts of the run's summary line ("2312 generated, 1 found …, 1 errored")."""
    line = next((ln for ln in output.splitlines() if re.match(r"\s*\d+ generated", ln)), "")
    found = {
        key: int(m.group(1)) if (m := re.search(rf"(\d+) {word}", line)) else 0
        for key, word in [
            ("generated", "generated"),
            ("passed", "passed"),
            ("failures", "unique failure"),
            ("errors", "errored"),
            ("skipped", "skipped"),
        ]
    }
    tested = re.search(r"Tested:\s+(\d+)", output)
    found["operations"] = int(tested.group(1)) if tested else 0
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=300)
    parser.add_argument("--tmp", default=None, help="parent of the data directory")
    parser.add_argument("--json", default=None, help="where the results go")
    args = parser.parse_args()

    work = make_tmp_dir(args.tmp, "ingestd-fuzz-")
    server = start_ingestd(work / "data", work / "daemon.log")
    try:
        started = time.monotonic()
        result = run_schemathesis(server.base_url, args.max_examples, work / "report")
        seconds = time.monotonic() - started
    finally:
        server.stop()
    (work / "schemathesis.txt").write_text(result.stdout)
    log(f"schemathesis output: {work / 'schemathesis.txt'}")
    counts = figures(result.stdout)
    server_errors = result.stdout.count("ST101 Server error")
    row = {**counts, "server_errors": server_errors, "seconds": round(seconds, 1)}
    row |= {"max_examples": args.max_examples, "exit_status": result.returncode}
    print_table(
        "schemathesis against a live daemon",
        list(row),
        [list(row.values())],
    )
    if result.returncode != 0:
        log(result.stdout[-8000:])
    write_json(args.json, "fuzz", row)
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""tus-js-client under node (tests/e2e/tus_js/client.mjs; the `tus_js` fixture
of tests/e2e/conftest.py is the command that runs it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

NODE_TIMEOUT = 120.0


def run_tus_js(command: list[str], endpoint: str, path: Path, *args: str) -> dict:
    r = subprocess.run(
        [*command, "--endpoint", endpoint, "--file", str(path), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
    )
    assert r.returncode == 0, f"client.mjs failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])

"""Fixtures of the end-to-end tests (the root conftest has `daemon` and `cli`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.postgres import unique_schema
from support.seaweedfs import unique_prefix

TUS_JS = Path(__file__).parent / "tus_js"
NPM_TIMEOUT = 300.0


@pytest.fixture(params=["local", "s3+postgres"])
def backends(request) -> dict[str, str]:
    """The daemon's backends as INGESTD_* variables: the embedded default
    (packs and LMDB in the data directory), and chunks in a real S3 server
    (SeaweedFS) with the index in a real PostgreSQL."""
    if request.param == "local":
        return {}
    weed, pg = request.getfixturevalue("seaweedfs"), request.getfixturevalue("postgres")
    return {
        **weed.environ,
        "INGESTD_STORAGE_S3_PREFIX": unique_prefix(),
        **pg.environ(unique_schema()),
    }


@pytest.fixture(scope="session")
def tus_js() -> list[str]:
    """The command that runs tests/e2e/tus_js/client.mjs, tus-js-client installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not on the PATH: the tus-js-client tests need them")
    wanted = json.loads((TUS_JS / "package.json").read_text())["dependencies"]["tus-js-client"]
    installed = TUS_JS / "node_modules" / "tus-js-client" / "package.json"
    if not installed.is_file() or json.loads(installed.read_text())["version"] != wanted:
        r = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=TUS_JS,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
        )
        assert r.returncode == 0, f"npm ci in {TUS_JS} failed:\n{r.stderr[-3000:]}"
    return [node, str(TUS_JS / "client.mjs")]

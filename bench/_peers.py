"""The tus peer of bench/upload.py and bench/tus.py: @tus/server 2.x with
@tus/file-store (bench/tus_peer_server.mjs, a node process), its npm packages
(and tus-js-client's) installed into bench/.peer/ when missing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from _common import BENCH_DIR, BenchError, ServerProcess, free_port, log

PEER_DIR = BENCH_DIR / ".peer"
PEER_PACKAGES = {"@tus/server": "2.4.5", "@tus/file-store": "2.1.1", "tus-js-client": "4.3.1"}
NODE_MIN = (20, 19)  # @tus/server 2.x
NPM_TIMEOUT = 600.0


def start_peer(store_dir: Path, log_path: Path, fsync: bool, node: str) -> ServerProcess:
    port = free_port()
    argv = [
        node,
        str(BENCH_DIR / "tus_peer_server.mjs"),
        "--peer-dir",
        str(PEER_DIR),
        "--port",
        str(port),
        "--dir",
        str(store_dir),
    ]
    if not fsync:
        argv.append("--no-fsync")
    server = ServerProcess(
        "tus peer" + ("" if fsync else " (shipped)"), argv, port=port, log_path=log_path
    )
    server.start()
    return server


# -- the peer's packages ------------------------------------------------------------


def _installed_version(name: str) -> str | None:
    try:
        return json.loads((PEER_DIR / "node_modules" / name / "package.json").read_text())[
            "version"
        ]
    except (OSError, ValueError, KeyError):
        return None


def ensure_peer() -> dict[str, str]:
    """node >= 20.19 and the pinned npm packages in bench/.peer/ (installed if missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise BenchError("node and npm are needed for the tus peer (or pass --skip-peer)")
    out = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    m = re.match(r"v(\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < NODE_MIN:
        raise BenchError(f"node {out} is too old for @tus/server 2.x (need >= 20.19)")
    wanted = [f"{n}@{v}" for n, v in PEER_PACKAGES.items()]
    if any(_installed_version(n) != v for n, v in PEER_PACKAGES.items()):
        log(f"installing {' '.join(wanted)} into {PEER_DIR}")
        PEER_DIR.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [npm, "install", "--prefix", str(PEER_DIR), "--no-audit", "--no-fund"]
            + ["--save-exact", "--loglevel=error", *wanted],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
        )
        if r.returncode != 0:
            raise BenchError(f"npm install failed ({r.returncode}):\n{r.stderr[-2000:]}")
        bad = [n for n, v in PEER_PACKAGES.items() if _installed_version(n) != v]
        if bad:
            raise BenchError(f"npm install did not install {bad} in {PEER_DIR}")
    versions = {"node_bin": node, "node": out.lstrip("v")}
    versions.update(PEER_PACKAGES)
    return versions

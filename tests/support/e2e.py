"""Helpers for end-to-end tests that run the real `ingestd serve` as a subprocess.

Everything here talks to 127.0.0.1 only and every wait is bounded.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3
import httpx
from ingestd.daemon.core.config import Config, load_config

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
KILL_TIMEOUT = 10.0
HTTP_TIMEOUT = 30.0
_LOG_TAIL_BYTES = 4000
CLI_TIMEOUT = 120.0
# Variables that would change the daemon's configuration behind the test's back.
_SEED_ENV = ("UPLOADS_DIR", "COMPLETED_DIR", "CHUNK_SIZE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_blake3(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def count_files(root: str | os.PathLike[str]) -> int:
    """Regular files under `root`, recursively (symlinks are not counted)."""
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                n += 1
    return n


def write_random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; return their sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, 1 << 20))
            h.update(block)
            f.write(block)
            remaining -= len(block)
    return h.hexdigest()


def random_spans(size: int, seed: int, largest: int = 2 << 20) -> list[tuple[int, int]]:
    """(offset, length) of variable chunks of a `size`-byte file, within the
    default /v1 bounds (256 KiB up to `largest`), as a client might declare."""
    rng = random.Random(seed)
    out, offset = [], 0
    while offset < size:
        n = min(rng.randint(256 << 10, largest), size - offset)
        out.append((offset, n))
        offset += n
    return out


def child_pids(parent: int) -> list[int]:
    """PIDs whose parent is `parent` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent:
            pids.append(int(entry))
    return sorted(pids)


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("ingestd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ingestd.daemon.cli"]


class Cli:
    """Runs `ingestd …` subprocesses with their own state and config directories."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
        self.env["INGESTD_STATE_DIR"] = str(state_dir)
        # A config dir and home of the test's own (beside the state dir): no
        # `ingestd login` of the person running the tests.
        self.env["XDG_CONFIG_HOME"] = str(state_dir.parent / "config")
        self.env["HOME"] = str(state_dir.parent / "home")
        self.env.pop("COLUMNS", None)  # output for scripts must not depend on it

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*cli_command(), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*cli_command(), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        assert done.returncode == expect, (
            f"ingestd {' '.join(args)} exited {done.returncode}, expected {expect}\n"
            f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
        )
        return done

    def upload(self, url: str, *args: str) -> dict:
        out = self.run("upload", *args, "--url", url, "--json").stdout.splitlines()
        assert len(out) == 1, out
        return json.loads(out[0])

    def state_files(self) -> list[Path]:
        return sorted(self.state_dir.glob("upload-*.json"))


class Daemon:
    """The real daemon in a subprocess; restartable on the same port and data dir."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        config_path: Path | None = None,
        args: list[str] | None = None,
        https_ca: Path | None = None,
    ) -> None:
        """`https_ca`: the daemon serves HTTPS (its certificate in `extra_env`),
        signed by this CA."""
        self.workdir = Path(workdir)
        self.https_ca = https_ca
        self.args = list(args or [])
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        self.extra_env = dict(extra_env or {})
        self.config_path = config_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.https_ca else 'http'}://{HOST}:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx needs to trust this daemon."""
        if self.https_ca is None:
            return True
        return ssl.create_default_context(cafile=str(self.https_ca))

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("INGESTD_") and k not in _SEED_ENV
        }
        env["INGESTD_STORAGE_DURABILITY"] = "fsync"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    @property
    def config(self) -> Config:
        """The daemon's configuration, as it reads it (file, environment, data dir)."""
        return load_config(
            self.config_path,
            environ=self._env(),
            overrides={("storage", "data_dir"): str(self.data_dir)},
        )

    def log_tail(self, limit: int = _LOG_TAIL_BYTES) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "<no log>"
        data = self.log_path.read_bytes()
        return data[-limit:].decode(errors="replace")

    def _fail(self, message: str) -> AssertionError:
        return AssertionError(
            f"{message}\n--- daemon log tail ({self.log_path}) ---\n{self.log_tail()}"
        )

    def start(self) -> Daemon:
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.starts += 1
        self.log_path = self.workdir / f"daemon-{self.starts}.log"
        cmd = [
            sys.executable,
            "-m",
            "ingestd.daemon.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        cmd += self.args
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"daemon exited with {self.proc.returncode} during startup")
            try:
                r = httpx.get(f"{self.base_url}/healthz", timeout=1.0, verify=self.verify)
                if r.status_code == 200 and r.json().get("status") == "ok":
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.1)
        self.kill()
        raise self._fail(f"daemon not healthy within {STARTUP_TIMEOUT}s (last: {last})")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        """PIDs of the daemon's child processes (its workers, with --workers)."""
        if not self.running:
            return []
        return child_pids(self.proc.pid)

    def kill(self) -> int | None:
        """SIGKILL this daemon's own process and its children (by PID), and wait."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            children = self.children()
            os.kill(self.proc.pid, signal.SIGKILL)
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            return self.proc.wait(timeout=KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise self._fail(f"daemon pid {self.proc.pid} survived SIGKILL") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> float:
        """Send `sig`, wait (bounded) and assert a clean exit; returns seconds taken."""
        assert self.proc is not None, "daemon was never started"
        assert self.proc.poll() is None, self._fail(
            f"daemon already exited with {self.proc.returncode}"
        )
        t0 = time.monotonic()
        os.kill(self.proc.pid, sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._fail(
                f"daemon did not exit within {timeout}s of {signal.Signals(sig).name}"
            ) from None
        elapsed = time.monotonic() - t0
        if rc != 0:
            raise self._fail(f"daemon exited with {rc} after {signal.Signals(sig).name}")
        return elapsed

    def restart(self) -> Daemon:
        if self.running:
            self.stop()
        return self.start()

    def __enter__(self) -> Daemon:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.kill()


# -- the seed API (/api/upload/*) ------------------------------------------


def init_upload(base_url: str, filename: str, total_size: int, checksum: str | None = None) -> dict:
    body: dict[str, object] = {"filename": filename, "totalSize": total_size}
    if checksum is not None:
        body["checksum"] = checksum
    r = httpx.post(f"{base_url}/api/upload/init", json=body, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, f"init: {r.status_code} {r.text}"
    data = r.json()
    assert data["uploadId"] and data["chunkSize"] > 0, data
    return data


def upload_status(base_url: str, upload_id: str) -> dict:
    r = httpx.get(f"{base_url}/api/upload/status/{upload_id}", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, f"status: {r.status_code} {r.text}"
    return r.json()


def complete_upload(base_url: str, upload_id: str) -> dict:
    r = httpx.post(f"{base_url}/api/upload/complete/{upload_id}", timeout=120.0)
    assert r.status_code == 200, f"complete: {r.status_code} {r.text}"
    return r.json()


def post_chunk(
    client: httpx.Client, base_url: str, upload_id: str, index: int, total_chunks: int, data: bytes
) -> httpx.Response:
    return client.post(
        f"{base_url}/api/upload/chunk",
        data={"uploadId": upload_id, "chunkIndex": str(index), "totalChunks": str(total_chunks)},
        files={"chunk": (f"chunk-{index}", data, "application/octet-stream")},
    )


@dataclass(frozen=True)
class ChunkPlan:
    """How a source file is cut into the chunks of one upload."""

    upload_id: str
    path: Path
    size: int
    chunk_size: int

    @property
    def total_chunks(self) -> int:
        return -(-self.size // self.chunk_size)

    def read(self, index: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(index * self.chunk_size)
            return f.read(self.chunk_size)


class ChunkSender:
    """Sends chunks with N concurrent workers, recording what the server acknowledged.

    `started` holds every index whose request was begun, `acked` those answered
    200 with success=true, `errors` the others (status or transport error).
    `halt()` stops workers from starting new requests.
    """

    def __init__(
        self, base_url: str, plan: ChunkPlan, *, workers: int = 5, timeout: float = HTTP_TIMEOUT
    ) -> None:
        self.base_url = base_url
        self.plan = plan
        self.workers = workers
        self.timeout = timeout
        self._cond = threading.Condition()
        self._queue: collections.deque[int] = collections.deque()
        self._halted = False
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list = []
        self.started: set[int] = set()
        self.acked: set[int] = set()
        self.errors: dict[int, str] = {}

    def start(self, indices: Iterable[int]) -> ChunkSender:
        self._queue.extend(indices)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="chunk-sender")
        self._futures = [self._pool.submit(self._work) for _ in range(self.workers)]
        return self

    def _work(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while True:
                with self._cond:
                    if self._halted or not self._queue:
                        return
                    index = self._queue.popleft()
                    self.started.add(index)
                data = self.plan.read(index)
                try:
                    r = post_chunk(
                        client,
                        self.base_url,
                        self.plan.upload_id,
                        index,
                        self.plan.total_chunks,
                        data,
                    )
                except httpx.TransportError as exc:
                    with self._cond:
                        self.errors[index] = f"transport error: {exc!r}"
                        self._cond.notify_all()
                    continue
                with self._cond:
                    if r.status_code == 200 and r.json().get("success") is True:
                        self.acked.add(index)
                    else:
                        self.errors[index] = f"HTTP {r.status_code}: {r.text[:300]}"
                    self._cond.notify_all()

    def wait_for_acks(self, n: int, timeout: float = 30.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.acked) >= n or self.errors, timeout)

    def halt(self) -> set[int]:
        """Start no more requests; return the indices started but not yet acknowledged."""
        with self._cond:
            self._halted = True
            return self.started - self.acked

    def join(self, timeout: float = 60.0) -> None:
        assert self._pool is not None
        deadline = time.monotonic() + timeout
        for f in self._futures:
            f.result(timeout=max(deadline - time.monotonic(), 0.01))
        self._pool.shutdown(wait=True)

    def run(self, indices: Iterable[int], timeout: float = 60.0) -> ChunkSender:
        self.start(indices)
        self.join(timeout)
        return self


# -- tus ------------------------------------------------------------------------

TUS_HEADERS = {"Tus-Resumable": "1.0.0"}


def tus_patch(client: httpx.Client, path: str, offset: int, body: bytes) -> httpx.Response:
    """One tus PATCH of `body` at `offset`."""
    headers = {
        **TUS_HEADERS,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    return client.patch(path, content=body, headers=headers)

"""Helpers shared by the benchmark scripts: servers, tables, JSON results, temp dirs,
the end of a run (finish, run_main)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx
from _procs import (
    proc_cpu_seconds,
    proc_start_time,
    proc_status_kib,
    process_tree,
    reset_peak_rss,
    tree_cpu_seconds,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
TESTS_DIR = REPO_ROOT / "tests"
MIB = 1 << 20
WRITE_BLOCK = 1 << 20
HEALTH_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def use_tests_harness() -> None:
    """Put tests/ first on sys.path, for the tests' own harness (the package
    `support`): bench/crash.py runs its trials with tests/support/e2e.py's Daemon
    and tus_patch, bench/fuzz.py the schemathesis run of tests/support/fuzz.py
    (one copy of each, the tests')."""
    sys.path.insert(0, str(TESTS_DIR))


def default_tmp_parent() -> Path:
    """Where big temp dirs go: $INGESTD_BENCH_TMP, else the repo's parent directory.

    The repo's parent is on the same disk as a default data dir and, unlike
    /tmp, is not a tmpfs on some machines.
    """
    env = os.environ.get("INGESTD_BENCH_TMP")
    if env:
        return Path(env)
    parent = REPO_ROOT.parent
    return parent if os.access(parent, os.W_OK) else Path(tempfile.gettempdir())


def make_tmp_dir(parent: str | os.PathLike[str] | None, prefix: str) -> Path:
    base = Path(parent) if parent else default_tmp_parent()
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def machine_info() -> dict[str, object]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mem_total_mib": _mem_total_mib(),
    }


def _mem_total_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Plain aligned text; numbers right-aligned, text left-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print()
    print(title)
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: str | os.PathLike[str] | None, name: str, data: object) -> Path:
    out = Path(path) if path else RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return out


def finish(
    path: str | os.PathLike[str] | None,
    name: str,
    params: dict[str, Any],
    body: dict[str, Any],
    ok: bool = True,
    started: float | None = None,
) -> int:
    """The end of a benchmark's run: its results file (`path`, else
    bench/results/NAME.json) with the benchmark's name, the time, the machine and
    the parameters ahead of `body`; the line saying where it went (with the run's
    seconds since the time.monotonic() `started`, if given); the exit status, 0
    if `ok`, else 1."""
    out = write_json(
        path,
        name,
        {
            "benchmark": name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "params": params,
            **body,
        },
    )
    took = "" if started is None else f" (run took {time.monotonic() - started:.0f}s)"
    print(f"\nresults written to {out}{took}")
    return 0 if ok else 1


def run_main(main: Callable[[], int], name: str) -> NoReturn:
    """sys.exit(main()); a BenchError ends the run with one line and exit status 1."""
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"{name} benchmark failed: {exc}")
        sys.exit(1)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def settle(seconds: float = 1.0) -> None:
    """Flush dirty pages (and pending ext4 discards from deletions) between runs,
    so one run's writeback does not land in the next run's timing."""
    os.sync()
    time.sleep(seconds)


def make_source(path: Path, size: int) -> str:
    """A random file of `size` bytes, fsynced; returns its sha256."""
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            block = os.urandom(min(WRITE_BLOCK, remaining))
            f.write(block)
            sha.update(block)
            remaining -= len(block)
        f.flush()
        os.fsync(f.fileno())
    return sha.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            sha.update(block)
    return sha.hexdigest()


def disk_write_limit(directory: Path, size: int) -> dict[str, float]:
    """Sequential write of `size` bytes in 1 MiB writes plus one fsync."""
    path = directory / "disk-probe.bin"
    block = os.urandom(WRITE_BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        t0 = time.perf_counter()
        remaining = size
        while remaining:
            view = memoryview(block)[: min(WRITE_BLOCK, remaining)]
            while view:
                n = os.write(fd, view)
                view = view[n:]
                remaining -= n
        t_written = time.perf_counter()
        os.fsync(fd)
        t1 = time.perf_counter()
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    elapsed = t1 - t0
    return {
        "seconds": elapsed,
        "write_seconds": t_written - t0,
        "fsync_seconds": t1 - t_written,
        "mib_s": size / MIB / elapsed,
    }


def durable_ack_limit(
    directory: Path, size: int, writers: int = 5, file_size: int = MIB
) -> dict[str, float]:
    """The disk's limit for durable acknowledgements: `writers` threads each write
    `file_size` files into a temp dir, fdatasync each one and rename it into a
    final dir (as a store answering a request only once its data is on disk), until
    `size` bytes are written; then one fsync of each dir. MiB/s includes it all."""
    tmp = directory / "durable-probe.tmp"
    final = directory / "durable-probe.final"
    tmp.mkdir()
    final.mkdir()
    count = -(-size // file_size)
    block = os.urandom(file_size)
    lock = threading.Lock()
    state = {"next": 0}
    errors: list[BaseException] = []
    latencies: list[float] = []

    def take() -> int | None:
        with lock:
            if errors or state["next"] >= count:
                return None
            state["next"] += 1
            return state["next"] - 1

    def writer() -> None:
        mine = []
        try:
            while (i := take()) is not None:
                n = min(file_size, size - i * file_size)
                t = time.perf_counter()
                path = tmp / f"{i:08d}"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    view = memoryview(block)[:n]
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                os.rename(path, final / f"{i:08d}")
                mine.append(time.perf_counter() - t)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            with lock:
                errors.append(exc)
        finally:
            with lock:
                latencies.extend(mine)

    try:
        threads = [threading.Thread(target=writer, name=f"durable-{i}") for i in range(writers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_files = time.perf_counter()
        for d in (tmp, final):
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        t1 = time.perf_counter()
        if errors:
            raise BenchError(f"durable-ack probe failed: {errors[0]!r}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
    elapsed = t1 - t0
    return {
        "seconds": elapsed,
        "files": count,
        "file_size": file_size,
        "writers": writers,
        "dir_fsync_seconds": t1 - t_files,
        "file_p50_ms": (percentile(latencies, 50) or 0.0) * 1000,
        "file_p99_ms": (percentile(latencies, 99) or 0.0) * 1000,
        "mib_s": size / MIB / elapsed,
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess: started, health-checked, measured, stopped by PID."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        health_path: str = "/healthz",
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = env
        self.health_path = health_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.health: Any = None
        self._log_file = None

    def start(self) -> None:
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + HEALTH_TIMEOUT
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    r = client.get(self.health_path)
                    if r.status_code == 200:
                        self.health = r.json()
                        return
                time.sleep(0.1)
        raise BenchError(f"{self.name} not healthy after {HEALTH_TIMEOUT}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float | None:
        """This PID's own CPU (its threads, not its children); see tree_cpu_seconds."""
        return proc_cpu_seconds(self.pid)

    def tree_cpu_seconds(self) -> float | None:
        """CPU of the whole process tree, reaped children included."""
        return tree_cpu_seconds(self.pid)

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def peak_rss_mib(self) -> float | None:
        kib = proc_status_kib(self.pid, "VmHWM")
        return None if kib is None else kib / 1024

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
        return reset_peak_rss(self.pid)

    def stop(self) -> float | None:
        """SIGTERM and wait; SIGKILL (this PID only) if it does not stop in time.
        Descendants still alive afterwards (a master's workers it left behind) get
        the same, each by PID, and are logged.

        Returns the seconds a clean stop took (None if killed or not running)."""
        took = None
        if self.proc is not None and self.proc.poll() is None:
            descendants = {p: proc_start_time(p) for p in process_tree(self.pid)[1:]}
            t0 = time.perf_counter()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
                took = time.perf_counter() - t0
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.proc.pid}) ignored SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
            _stop_leftovers(self.name, descendants)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return took

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _stop_leftovers(name: str, procs: dict[int, str | None]) -> None:
    """SIGTERM, then SIGKILL, the given PIDs that are still the same processes."""

    def alive() -> list[int]:
        return [p for p, st in procs.items() if st is not None and proc_start_time(p) == st]

    deadline = time.monotonic() + 5.0  # they may be on their way out
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = alive()
        if not left:
            return
        log(f"{name}: {len(left)} child process(es) outlived it ({left}); sending {sig.name}")
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10.0
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)


def ingestd_serve_options() -> set[str]:
    """The long options `ingestd serve --help` lists (to tell whether --workers exists)."""
    r = subprocess.run(
        [str(ingestd_exe()), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", r.stdout))


def ingestd_exe() -> Path:
    ingestd = Path(sys.executable).parent / "ingestd"
    if not ingestd.exists():
        ingestd = REPO_ROOT / ".venv" / "bin" / "ingestd"
    return ingestd


def start_ingestd(
    data_dir: Path,
    log_path: Path,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """A fresh `ingestd serve` on 127.0.0.1 with storage.durability = fsync.

    workers > 1 adds `--workers N` (a master process whose children serve the
    requests); workers = 1 adds nothing, so this works with a daemon without
    the option. `extra_env`: INGESTD_* settings on top."""
    ingestd = ingestd_exe()
    # Only the durability is forced; everything else is the daemon's default.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env["INGESTD_STORAGE_DURABILITY"] = "fsync"
    env.update(extra_env or {})
    port = free_port()
    server = ServerProcess(
        "ingestd",
        [
            str(ingestd),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *(["--workers", str(workers)] if workers > 1 else []),
        ],
        port=port,
        log_path=log_path,
        env=env,
    )
    server.start()
    return server

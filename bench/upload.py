"""Upload benchmark (issues 3 and 9): ingestd against a tus peer, in alternating pairs.

Every server is started fresh on 127.0.0.1 with a new data dir; ingestd runs with
INGESTD_STORAGE_DURABILITY=fsync (every other setting is its default) and, for
--workers N > 1, `ingestd serve --workers N` (workers = 1 adds no flag). The peer
is an @tus/server 2.x with @tus/file-store (bench/tus_peer_server.mjs, a node
process; its packages are installed by this script into bench/.peer/ when
missing), fed by tus-js-client under node (bench/tus_peer_client.mjs: an
fs.ReadStream, the whole file in one PATCH unless --peer-chunk-mib). Two peers:
"shipped", the FileStore as it ships (no fsync), and "fsync", which fsyncs the
stored file and its directory once before it answers the last PATCH.

A run is --pairs rounds (default 3); each round, in this order:

  1. disk probes: (a) sequential write of --size-mib in 1 MiB writes to a new
     file next to the data dirs, plus one fsync; (b) the durable-ack limit: 5
     writer threads write --size-mib as 1 MiB files, each fdatasynced and then
     renamed into a final dir (one fsync of each dir at the end);
  2. for each N > 1 in --workers: ingestd fresh with workers = N (paired with 3);
  3. ingestd fresh, workers = 1: a random file of --size-mib uploaded with
     `ingestd.daemon.client.Client` (cdc chunking, --parallel requests);
  4. the shipped peer (paired with 3);
  5. ingestd fresh, workers = 1, a new daemon and data dir again;
  6. the fsyncing peer (paired with 5);
  7. identical re-upload: the daemon of 5 is started again on its data dir and
     the same file is uploaded again as a new upload, first by the client of 5
     (its chunk-list cache knows the file; its resume state is gone), then by a
     client with a new state dir (it hashes the file again); nothing is resumed;
  8. seed API (unless --skip-seed): the file through /api/upload/* with
     bench/seed_upload.py's ChunkSender (--parallel threads posting multipart
     chunks) to a fresh daemon; MiB/s from init to the answer to complete, and the
     chunk posts' latency; the processing job it queues is waited for (its CPU
     counts, as the /v1 client waits for it too).

Once per run, after the rounds, the JSONL case: a deterministic --jsonl-mib JSONL
file, then a variant with 1 MiB of new lines inserted near its start (at the first
line boundary after min(4 MiB, size/8)), to one fresh daemon; the variant should
send only the chunks around the insertion.

For each upload: MiB/s (file size / wall seconds of the upload, completion
included; the peer's seconds are the tus client's own timing, without node's
start-up), bytes sent, the server's CPU seconds over its process tree and per GiB
(user + system of every live process in the tree plus that of the children it
has reaped, read once the case's children have been reaped: ingestd's per-job
plugin worker and, with --workers, the master's children all count), the
server's peak RSS per process (the largest VmHWM among the server's own
processes, reset per case through /proc/PID/clear_refs; processes that came and
went during the case are sampled and reported apart), and this process's CPU
(the client's; for tus-js-client, the node child's). Uploads are checked: BLAKE3
and sha256 of ingestd's file record and materialised copy, sha256 of the peer's
stored file and of the seed API's completed file.

Each pair gives a ratio of MiB/s and one of CPU per GiB; the targets take the
medians of the pair ratios:
  - /v1 fresh, workers = 1: >= 1.0x the shipped peer's MiB/s and >= 1.25x the
    fsyncing peer's; server CPU per GiB <= 1.0x the shipped peer's; the gain of
    each workers = N > 1 over workers = 1 is reported (no target);
  - seed API: >= 0.8x the median /v1 fresh (workers = 1) MiB/s of the same run;
    p99 chunk latency (over all the run's seed chunks) <= 150 ms;
  - identical re-upload >= 20x faster than fresh (completion included);
  - daemon peak RSS <= 150 MiB per process during the fresh uploads;
  - the JSONL variant sends <= 1 % of its bytes.
The targets are set for --size-mib 1024 --jsonl-mib 256 --parallel 5. A missed
target is reported, not an error; the exit status is 1 only if a check or an
upload fails.

Usage: .venv/bin/python bench/upload.py [--size-mib 1024] [--jsonl-mib 256] [--parallel 5]
       [--pairs 3] [--workers 1[,2...]] [--skip-peer] [--skip-seed] [--peer-chunk-mib 0]
       [--json PATH] [--tmp-dir DIR] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import blake3
import httpx
from _common import (
    BENCH_DIR,
    MIB,
    BenchError,
    ServerProcess,
    TreeWatch,
    disk_write_limit,
    durable_ack_limit,
    free_port,
    ingestd_serve_options,
    log,
    machine_info,
    make_source,
    make_tmp_dir,
    percentile,
    print_table,
    settle,
    sha256_file,
    start_ingestd,
    wait_tree,
    write_json,
)
from seed_upload import ChunkSender

T = TypeVar("T")

GIB = 1 << 30
PEER_DIR = BENCH_DIR / ".peer"
PEER_PACKAGES = {"@tus/server": "2.4.5", "@tus/file-store": "2.1.1", "tus-js-client": "4.3.1"}
NODE_MIN = (20, 19)  # @tus/server 2.x
NPM_TIMEOUT = 600.0
PROFILER_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0
REAP_TIMEOUT = 30.0  # for a case's child processes to be reaped before CPU is read
JOB_WAIT = 30.0
INSERT_BYTES = MIB
INSERT_OFFSET = 4 * MIB
JSONL_SEED = 20240603
DURABLE_WRITERS = 5

TARGET_VS_SHIPPED = 1.0
TARGET_VS_FSYNC = 1.25
TARGET_CPU_VS_SHIPPED = 1.0
TARGET_SEED_VS_FRESH = 0.8
TARGET_SEED_P99_MS = 150.0
TARGET_REUPLOAD_SPEEDUP = 20.0
TARGET_RSS_MIB = 150.0
TARGET_INSERT_SENT = 0.01

LABELS = {
    "disk_seq": "disk: sequential write + 1 fsync",
    "disk_durable": f"disk: durable acks (1 MiB files, {DURABLE_WRITERS} writers)",
    "fresh_a": "ingestd /v1 fresh (pair with shipped peer)",
    "fresh_b": "ingestd /v1 fresh (pair with fsync peer)",
    "peer_shipped": "tus peer as shipped (no fsync)",
    "peer_fsync": "tus peer, fsync before last answer",
    "reupload": "ingestd re-upload, same client",
    "reupload_cold": "ingestd re-upload, new client state dir",
    "seed": "ingestd seed API",
    "jsonl": "ingestd JSONL original",
    "insert": "ingestd JSONL +1 MiB inserted",
}
FRESH_1 = ("fresh_a", "fresh_b")
NOT_VS_DISK = ("reupload", "reupload_cold", "jsonl", "insert")  # they write little


def label(key: str) -> str:
    if key.startswith("fresh_w"):
        return f"ingestd /v1 fresh, workers={key[7:]}"
    return LABELS.get(key, key)


def upload_timeout(size: int) -> float:
    """Bound for one upload: two minutes plus 4 MiB/s."""
    return 120.0 + size / (4 * MIB)


def run_bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """fn() in a daemon thread; BenchError if it has not returned within timeout."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BenchError(f"{what} did not finish within {timeout:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def own_cpu_seconds() -> float:
    """CPU of this process plus its waited-for children (the node tus client)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def blake3_file(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.hexdigest()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# -- test files -----------------------------------------------------------------


def _vocabulary(rng: random.Random, n: int = 4096) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(n)]


def _jsonl_lines(seed: int, first_id: int):
    """An endless, deterministic stream of JSONL records (bytes, newline included)."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    i = first_id
    while True:
        prompt = " ".join(rng.choices(vocab, k=rng.randint(8, 40)))
        response = " ".join(rng.choices(vocab, k=rng.randint(20, 120)))
        yield (
            f'{{"id": {i}, "prompt": "{prompt}", "response": "{response}", '
            f'"score": {rng.random():.4f}}}\n'
        ).encode()
        i += 1


def _write_lines(f, lines, nbytes: int) -> None:
    """Exactly nbytes of whole lines; a final {"pad": "..."} line fills the rest."""
    pad_min = len(b'{"pad": ""}\n')
    written = 0
    for line in lines:
        if written + len(line) + pad_min > nbytes:
            break
        f.write(line)
        written += len(line)
    f.write(b'{"pad": "' + b"x" * (nbytes - written - pad_min) + b'"}\n')


def make_jsonl(path: Path, size: int) -> None:
    with open(path, "wb", buffering=8 * MIB) as f:
        _write_lines(f, _jsonl_lines(JSONL_SEED, 0), size)
        f.flush()
        os.fsync(f.fileno())


def make_jsonl_variant(original: Path, path: Path) -> int:
    """original with INSERT_BYTES of new lines inserted at the first line boundary after
    min(INSERT_OFFSET, size/8); returns the insertion offset."""
    size = original.stat().st_size
    with open(original, "rb") as src:
        src.seek(min(INSERT_OFFSET, size // 8))
        src.readline()
        at = src.tell()
        src.seek(0)
        with open(path, "wb", buffering=8 * MIB) as dst:
            remaining = at
            while remaining:
                block = src.read(min(4 * MIB, remaining))
                dst.write(block)
                remaining -= len(block)
            _write_lines(dst, _jsonl_lines(JSONL_SEED + 1, 10**9), INSERT_BYTES)
            shutil.copyfileobj(src, dst, 4 * MIB)
            dst.flush()
            os.fsync(dst.fileno())
    return at


class SourceFile:
    def __init__(self, path: Path, sha256: str | None = None) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.sha256 = sha256 or sha256_file(path)
        self.blake3 = blake3_file(path)


# -- servers --------------------------------------------------------------------


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


# -- measuring ----------------------------------------------------------------------


def measured(
    server: ServerProcess,
    fn: Callable[[], T],
    timeout: float,
    what: str,
    profile: Path | None = None,
    wait_children: bool = False,
    after: Callable[[T], float | None] | None = None,
) -> tuple[T, dict[str, Any]]:
    """Run one case after settling the disk: wall seconds, the server's CPU over its
    process tree, its peak RSS per process, and this process's CPU (the client's,
    when it runs here).

    With wait_children, the CPU is read once the processes the case started in the
    server's tree have gone (a processing job's worker, reaped by the daemon); the
    cases here wait for their job, so this takes no time unless something lingers.
    Without it (bench/tus.py, which times the job itself) the CPU is read at once.
    `after(value)`: work the server does after answering that belongs to the case
    (ingestd writes a file's materialised copy after the verdict): waited for
    before the CPU is read, its seconds reported as after_s, not in seconds."""
    settle()
    profiler = Profiler(server.pid, profile) if profile is not None else None
    watch = TreeWatch(server.pid)
    try:
        watch.start()
        cpu0, main0 = server.tree_cpu_seconds(), server.cpu_seconds()
        own0 = own_cpu_seconds()
        t0 = time.perf_counter()
        value = run_bounded(fn, timeout, what)
        seconds = time.perf_counter() - t0
        after_s = after(value) if after is not None else None
        reaped = wait_tree(server.pid, watch.baseline, REAP_TIMEOUT if wait_children else 0)
        if wait_children and not reaped:
            log(f"  {what}: the server's children were not all reaped in {REAP_TIMEOUT:.0f}s")
        cpu1, main1 = server.tree_cpu_seconds(), server.cpu_seconds()
        own1 = own_cpu_seconds()
    finally:
        rss = watch.stop()
        if profiler is not None:
            profiler.stop()
    return value, {
        "seconds": seconds,
        "server_cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        # The PID we started alone (its threads), without any child: the rest of
        # server_cpu_s is the plugin workers' (and, with --workers, the workers').
        "server_main_cpu_s": None if main0 is None or main1 is None else main1 - main0,
        "server_children_reaped": reaped,
        "after_s": after_s,
        **rss,
        "client_cpu_s": own1 - own0,
    }


class Profiler:
    """py-spy record --format raw on a PID, stopped with SIGINT (collapsed stacks)."""

    def __init__(self, pid: int, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
            + ["--nonblocking", "--threads", "--subprocesses", "-o", str(out)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let it attach
        if self.proc.poll() is not None:
            raise BenchError(f"py-spy exited: {self.proc.stderr.read().decode()[-1000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=PROFILER_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=PROFILER_TIMEOUT)


def top_self_frames(raw: Path, n: int = 15) -> list[tuple[str, int, float]]:
    """(function, samples, share) by self time from py-spy's collapsed stacks."""
    self_time: Counter[str] = Counter()
    total = 0
    with open(raw, errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            # The leaf frame, by function: "name (file.py:123)" -> "name (file.py)".
            leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
            self_time[leaf] += int(count)
            total += int(count)
    return [(frame, c, c / total) for frame, c in self_time.most_common(n)] if total else []


# -- cases --------------------------------------------------------------------------


def ingestd_upload(
    server: ServerProcess,
    source: SourceFile,
    state_dir: Path,
    parallel: int,
    what: str,
    profile: Path | None = None,
) -> dict[str, Any]:
    from ingestd.daemon.client import Client

    clock = PhaseClock()

    def upload():
        clock.start()
        with Client(
            server.base_url, parallel=parallel, chunking="cdc", state_dir=state_dir
        ) as client:
            options: dict[str, Any] = {}
            parameters = inspect.signature(client.upload).parameters
            if "progress" in parameters:
                options["progress"] = clock
            if "new" in parameters:
                # A new file record each time, even of a file already accepted:
                # the case measures the upload (and its dedup), not the lookup.
                options["new"] = True
            result = client.upload(source.path, **options)
        clock.stop()
        return result

    result, m = measured(
        server,
        upload,
        upload_timeout(source.size),
        what,
        profile,
        wait_children=True,
        after=lambda result: wait_for_copy(server, result.file_id),
    )
    fields = (
        "file_id",
        "upload_id",
        "bytes_total",
        "bytes_sent",
        "chunks_total",
        "chunks_sent",
        "chunks_skipped",
        "seconds",
        "blake3",
        "resumed",
    )
    res = {f: getattr(result, f, None) for f in fields}
    checks = verify_ingestd(server, source, res)
    log(
        f"  {what}: {m['seconds']:.2f}s, {source.size / MIB / m['seconds']:.0f} MiB/s, "
        f"sent {res['bytes_sent']:,} of {source.size:,} bytes, server CPU "
        f"{_num(m['server_cpu_s'])}s, peak RSS {_num(m['server_peak_rss_mib'])} MiB "
        f"({m['server_processes']} process(es)), checks "
        f"{'OK' if all(checks.values()) else checks}"
    )
    return {
        "kind": "ingestd",
        "size_bytes": source.size,
        "bytes_sent": res["bytes_sent"],
        **m,
        "phases": clock.phases(),
        "result": res,
        "checks": checks,
        "ok": all(checks.values()),
    }


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class PhaseClock:
    """The client's progress callback: when hashing ended and the last chunk was sent,
    so an upload's time splits into hash (read + chunk + BLAKE3 the file), send
    (create the upload, send the missing chunks) and complete (the completion job:
    verify, materialize; the client waits for it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t0 = self._end = None
        self._last: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self._end = time.perf_counter()

    def __call__(self, kind: str, nbytes: int) -> None:
        now = time.perf_counter()
        with self._lock:
            self._last[kind] = now

    def phases(self) -> dict[str, float] | None:
        hashed = self._last.get("hashed")
        if self._t0 is None or self._end is None or hashed is None:
            return None
        sent = max(hashed, self._last.get("sent", hashed), self._last.get("skipped", hashed))
        return {
            "hash_s": hashed - self._t0,
            "send_s": sent - hashed,
            "complete_s": self._end - sent,
        }


COPY_TIMEOUT = 120.0


def wait_for_copy(server: ServerProcess, file_id: str) -> float | None:
    """Seconds until the file's materialised copy is recorded (ingestd writes it
    after answering); None if it did not appear within COPY_TIMEOUT."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
        while time.perf_counter() - t0 < COPY_TIMEOUT:
            if client.get(f"/v1/files/{file_id}").json().get("path"):
                return time.perf_counter() - t0
            time.sleep(0.02)
    return None


def verify_ingestd(
    server: ServerProcess, source: SourceFile, res: dict[str, Any]
) -> dict[str, bool]:
    checks = {
        "result_blake3": res["blake3"] == source.blake3,
        "result_size": res["bytes_total"] == source.size,
        "not_resumed": res["resumed"] is False,
    }
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
        r = client.get(f"/v1/files/{res['file_id']}")
    checks["file_record"] = r.status_code == 200
    if r.status_code == 200:
        info = r.json()
        checks["file_blake3"] = info.get("blake3") == source.blake3
        checks["file_size"] = info.get("size") == source.size
        if info.get("sha256"):
            checks["file_sha256"] = info["sha256"] == source.sha256
        path = info.get("path")
        checks["materialized"] = bool(path) and Path(path).is_file()
        if checks["materialized"]:
            checks["materialized_sha256"] = sha256_file(path) == source.sha256
    return checks


def peer_upload(
    peer: ServerProcess,
    store_dir: Path,
    source: SourceFile,
    node: str,
    chunk_mib: int,
    what: str,
) -> dict[str, Any]:
    argv = [
        node,
        str(BENCH_DIR / "tus_peer_client.mjs"),
        "--peer-dir",
        str(PEER_DIR),
        "--endpoint",
        f"{peer.base_url}/files",
        "--file",
        str(source.path),
        "--chunk-mib",
        str(chunk_mib),
    ]
    timeout = upload_timeout(source.size)

    def upload() -> dict[str, Any]:
        r = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            raise BenchError(f"tus_peer_client.mjs failed ({r.returncode}): {r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    out, m = measured(peer, upload, timeout + 10, what, wait_children=True)
    how = f"{out['patches']} PATCH" + ("es" if out["patches"] != 1 else "")
    how += " of the whole file" if out["chunk_size"] is None else f" of {chunk_mib} MiB"
    how += ", streamed"
    stored = store_dir / out["url"].rstrip("/").rsplit("/", 1)[-1]
    got = sha256_file(stored) if stored.is_file() else None
    ok = got == source.sha256
    log(
        f"  {what}: {out['seconds']:.2f}s, {source.size / MIB / out['seconds']:.0f} MiB/s "
        f"({how}), server CPU {_num(m['server_cpu_s'])}s, stored sha256 "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    return {
        "kind": "peer",
        "size_bytes": source.size,
        "bytes_sent": source.size,
        **m,
        # The client's own timing (start to the answer to the last PATCH), without
        # node's start-up; the wall time around the client is wall_seconds.
        "wall_seconds": m["seconds"],
        "seconds": out["seconds"],
        "client": out["client"],
        "how": how,
        "url": out["url"],
        "checks": {"stored_sha256": ok},
        "ok": ok,
    }


def seed_upload(
    server: ServerProcess,
    source: SourceFile,
    parallel: int,
    what: str,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The seed API: init, `parallel` threads posting multipart chunks, complete;
    then the processing job that complete queued is waited for (outside `seconds`,
    inside the server CPU figure)."""
    timeout = upload_timeout(source.size)

    def upload() -> dict[str, Any]:
        with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
            t0 = time.perf_counter()
            r = client.post(
                "/api/upload/init", json={"filename": source.path.name, "totalSize": source.size}
            )
            r.raise_for_status()
            init = r.json()
            upload_id, chunk_size = init["uploadId"], int(init["chunkSize"])
            sender = ChunkSender(
                server.base_url, source.path, upload_id, chunk_size, source.size, parallel
            )
            chunks_s = sender.run()
            t_chunks = time.perf_counter()
            r = client.post(f"/api/upload/complete/{upload_id}")
            t_done = time.perf_counter()
            if r.status_code != 200:
                raise BenchError(f"seed complete: HTTP {r.status_code}: {r.text[:500]}")
            done = r.json()
            job = None
            job_id = done.get("downstreamJobId")
            deadline = time.monotonic() + timeout
            while job_id and time.monotonic() < deadline:
                r = client.get(f"/v1/jobs/{job_id}", params={"wait": JOB_WAIT})
                r.raise_for_status()
                job = r.json()
                if job.get("state") in ("succeeded", "failed"):
                    break
            t_job = time.perf_counter()
        return {
            "seconds": t_done - t0,
            "init_s": t_chunks - t0 - chunks_s,
            "chunks_s": chunks_s,
            "complete_s": t_done - t_chunks,
            "job_wait_s": t_job - t_done,
            "chunk_size": chunk_size,
            "chunks": sender.total,
            "latencies": sender.latencies,
            "retries": sender.retries,
            "filepath": done.get("filepath", ""),
            "job_state": job and job.get("state"),
        }

    out, m = measured(server, upload, timeout + 10, what, profile, wait_children=True)
    lat = out.pop("latencies")
    filepath = out["filepath"]
    got = sha256_file(filepath) if filepath and Path(filepath).is_file() else None
    checks = {
        "completed_sha256": got == source.sha256,
        "job_succeeded": out["job_state"] == "succeeded",
        "no_retries": out["retries"] == 0,
    }
    latency_ms = {
        "p50": (percentile(lat, 50) or 0.0) * 1000,
        "p90": (percentile(lat, 90) or 0.0) * 1000,
        "p99": (percentile(lat, 99) or 0.0) * 1000,
        "max": max(lat, default=0.0) * 1000,
    }
    log(
        f"  {what}: {out['seconds']:.2f}s, {source.size / MIB / out['seconds']:.0f} MiB/s "
        f"({out['chunks']} chunks of {out['chunk_size']:,}; p99 {latency_ms['p99']:.0f} ms), "
        f"server CPU {_num(m['server_cpu_s'])}s, peak RSS {_num(m['server_peak_rss_mib'])} MiB, "
        f"checks {'OK' if all(checks.values()) else checks}"
    )
    return {
        "kind": "seed",
        "size_bytes": source.size,
        "bytes_sent": source.size,
        **m,
        "wall_seconds": m["seconds"],  # with the wait for the processing job
        **out,
        "chunk_latency_ms": latency_ms,
        "chunk_latencies_s": lat,
        "checks": checks,
        "ok": all(checks.values()),
    }


# -- the run --------------------------------------------------------------------------


class Bench:
    """One run: the work dir, the servers alive now, and every case in run order."""

    def __init__(self, args: argparse.Namespace, work: Path, peer: dict[str, str] | None):
        self.args = args
        self.work = work
        self.peer = peer
        self.size = args.size_mib * MIB
        self.extra_workers = [w for w in args.workers if w > 1]
        self.live: list[ServerProcess] = []
        self.cases: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self.info: dict[str, Any] | None = None
        self.serial = 0
        self.source: SourceFile | None = None
        self.notes: list[str] = []

    def new_dir(self, prefix: str) -> Path:
        self.serial += 1
        path = self.work / f"{prefix}-{self.serial:02d}"
        path.mkdir()
        return path

    def profile(self, round_no: int, key: str) -> Path | None:
        """py-spy output for this case: the first round's (and the JSONL) cases only."""
        if self.args.profile is None or round_no > 1:
            return None
        return self.args.profile / f"{key}.txt"

    @contextlib.contextmanager
    def server(self, start: Callable[[], ServerProcess]) -> Iterator[ServerProcess]:
        server = start()
        self.live.append(server)
        try:
            yield server
        except BaseException:
            tail = server.log_tail()
            if tail:
                log(f"{server.name} log tail:\n{tail}")
            raise
        finally:
            server.stop()
            self.live.remove(server)

    def ingestd(self, data_dir: Path, workers: int = 1) -> contextlib.AbstractContextManager:
        def start() -> ServerProcess:
            self.serial += 1
            log_path = self.work / f"ingestd-{self.serial:02d}.log"
            server = start_ingestd(data_dir, log_path, workers)
            procs = len(server.tree())
            log(f"ingestd pid {server.pid} port {server.port}, workers={workers}, {procs} proc(s)")
            if self.info is None:
                with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as c:
                    r = c.get("/v1/info")
                    r.raise_for_status()
                    self.info = r.json()
            return server

        return self.server(start)

    def record(
        self, round_no: int | None, key: str, fn: Callable[[], dict[str, Any]], **extra: Any
    ) -> dict[str, Any]:
        """Run one case; a failure is recorded (ok false, error) and the run goes on."""
        log(f"[round {round_no or '-'}] {label(key)}")
        try:
            case = fn()
        except Exception as exc:  # noqa: BLE001 - reported in the table and the JSON
            log(f"  {label(key)} FAILED: {type(exc).__name__}: {exc}")
            for server in self.live:  # a case run inside an open server
                tail = server.log_tail()
                if tail:
                    log(f"{server.name} log tail:\n{tail}")
            case = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        case = {"round": round_no, "key": key, "label": label(key), **extra, **case}
        if case.get("ok") and case.get("seconds"):
            case["mib_s"] = case["size_bytes"] / MIB / case["seconds"]
            if case.get("server_cpu_s") is not None:
                case["server_cpu_s_per_gib"] = case["server_cpu_s"] / (case["size_bytes"] / GIB)
        self.cases.append(case)
        return case

    # -- the cases --------------------------------------------------------------

    def probes(self, round_no: int) -> None:
        settle()
        seq = disk_write_limit(self.work, self.size)
        settle()
        durable = durable_ack_limit(self.work, self.size, writers=DURABLE_WRITERS)
        log(
            f"[round {round_no}] disk: sequential write+fsync {seq['mib_s']:.0f} MiB/s, "
            f"durable acks {durable['mib_s']:.0f} MiB/s "
            f"(file p99 {durable['file_p99_ms']:.1f} ms)"
        )
        self.rounds.append({"round": round_no, "disk_seq": seq, "disk_durable": durable})

    def fresh(
        self,
        round_no: int,
        key: str,
        workers: int = 1,
        data_dir: Path | None = None,
        state_dir: Path | None = None,
    ) -> dict[str, Any]:
        """A fresh upload of the random file to a new daemon; the data dir and the
        client's state dir are removed afterwards unless they were passed in."""
        own_data, own_state = data_dir is None, state_dir is None
        data = data_dir or self.new_dir("ingestd-data")
        state = state_dir or self.new_dir("client-state")
        assert self.source is not None
        source = self.source

        def case() -> dict[str, Any]:
            with self.ingestd(data, workers) as server:
                return ingestd_upload(
                    server,
                    source,
                    state,
                    self.args.parallel,
                    label(key),
                    self.profile(round_no, key),
                )

        try:
            return self.record(round_no, key, case, workers=workers)
        finally:
            if own_data:
                shutil.rmtree(data, ignore_errors=True)
            if own_state:
                shutil.rmtree(state, ignore_errors=True)

    def peer_case(self, round_no: int, key: str, fsync: bool) -> dict[str, Any]:
        assert self.peer is not None and self.source is not None
        source, node = self.source, self.peer["node_bin"]
        store = self.new_dir("tus-store")
        self.serial += 1
        log_path = self.work / f"tus-peer-{self.serial:02d}.log"

        def case() -> dict[str, Any]:
            with self.server(lambda: start_peer(store, log_path, fsync, node)) as peer:
                out = peer_upload(peer, store, source, node, self.args.peer_chunk_mib, label(key))
                out["peer_health"] = peer.health
                return out

        try:
            return self.record(round_no, key, case, fsync=fsync)
        finally:
            shutil.rmtree(store, ignore_errors=True)

    def reuploads(self, round_no: int, data: Path, state: Path) -> None:
        """The daemon of a fresh case again, on its data dir: the same file as a new
        upload, by the same client (warm chunk-list cache) and by a new one."""
        assert self.source is not None
        source = self.source
        cold_state = self.new_dir("client-state")
        todo = [("reupload", state), ("reupload_cold", cold_state)]
        try:
            with self.ingestd(data) as server:
                for key, state_dir in todo:

                    def case(key: str = key, state_dir: Path = state_dir) -> dict[str, Any]:
                        return ingestd_upload(
                            server,
                            source,
                            state_dir,
                            self.args.parallel,
                            label(key),
                            self.profile(round_no, key),
                        )

                    self.record(round_no, key, case, workers=1)
        except Exception as exc:  # noqa: BLE001 - the daemon did not start again
            for key, _ in todo:
                if not any(c["round"] == round_no and c["key"] == key for c in self.cases):
                    self.record(round_no, key, lambda exc=exc: _raise(exc))
        finally:
            shutil.rmtree(cold_state, ignore_errors=True)

    def seed(self, round_no: int) -> dict[str, Any]:
        assert self.source is not None
        source = self.source
        data = self.new_dir("ingestd-data")

        def case() -> dict[str, Any]:
            with self.ingestd(data) as server:
                return seed_upload(
                    server,
                    source,
                    self.args.parallel,
                    label("seed"),
                    self.profile(round_no, "seed"),
                )

        try:
            return self.record(round_no, "seed", case, workers=1)
        finally:
            shutil.rmtree(data, ignore_errors=True)

    def jsonl_cases(self, jsonl: SourceFile, variant: SourceFile) -> None:
        data = self.new_dir("ingestd-data")
        state = self.new_dir("client-state")
        try:
            with self.ingestd(data) as server:
                for key, src in (("jsonl", jsonl), ("insert", variant)):

                    def case(key: str = key, src: SourceFile = src) -> dict[str, Any]:
                        return ingestd_upload(
                            server,
                            src,
                            state,
                            self.args.parallel,
                            label(key),
                            self.profile(1, key),
                        )

                    self.record(None, key, case, workers=1)
        except Exception as exc:  # noqa: BLE001 - the daemon did not start
            for key in ("jsonl", "insert"):
                if not any(c["key"] == key for c in self.cases):
                    self.record(None, key, lambda exc=exc: _raise(exc))
        finally:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)

    def one_round(self, r: int) -> None:
        self.probes(r)
        for w in self.extra_workers if self.args.workers_supported else ():
            self.fresh(r, f"fresh_w{w}", workers=w)
        self.fresh(r, "fresh_a")
        if self.peer is not None:
            self.peer_case(r, "peer_shipped", fsync=False)
        data, state = self.new_dir("ingestd-data"), self.new_dir("client-state")
        try:
            fresh_b = self.fresh(r, "fresh_b", data_dir=data, state_dir=state)
            if self.peer is not None:
                self.peer_case(r, "peer_fsync", fsync=True)
            if fresh_b.get("ok"):
                settle()
                self.reuploads(r, data, state)
        finally:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
        if not self.args.skip_seed:
            self.seed(r)


def _raise(exc: BaseException) -> dict[str, Any]:
    raise exc


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MIB
    jsonl_size = args.jsonl_mib * MIB
    peer_versions = None if args.skip_peer else ensure_peer()
    args.workers_supported = True
    if any(w > 1 for w in args.workers):
        args.workers_supported = "--workers" in ingestd_serve_options()
        if not args.workers_supported:
            log("`ingestd serve` has no --workers option yet: the workers > 1 cases are skipped")
    work = make_tmp_dir(args.tmp_dir, "ingestd-bench-upload-")
    bench = Bench(args, work, peer_versions)
    result: dict[str, Any] = {}
    try:
        log(f"work dir {work}")
        log(f"writing a {args.size_mib} MiB random file and {args.jsonl_mib} MiB JSONL files")
        bench.source = SourceFile(work / "random.bin", make_source(work / "random.bin", size))
        jsonl = variant = None
        if jsonl_size:
            make_jsonl(work / "train.jsonl", jsonl_size)
            jsonl = SourceFile(work / "train.jsonl")
            insert_at = make_jsonl_variant(jsonl.path, work / "train-inserted.jsonl")
            variant = SourceFile(work / "train-inserted.jsonl")
            result["jsonl"] = {
                "size_bytes": jsonl.size,
                "variant_size_bytes": variant.size,
                "insert_offset": insert_at,
                "insert_bytes": INSERT_BYTES,
                "seed": JSONL_SEED,
            }
        for r in range(1, args.pairs + 1):
            bench.one_round(r)
        if jsonl is not None and variant is not None:
            bench.jsonl_cases(jsonl, variant)
    finally:
        for server in list(bench.live):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result.update(
        {
            "ingestd_info": bench.info,
            "peer_versions": peer_versions,
            "workers_supported": args.workers_supported,
            "rounds": bench.rounds,
            "cases": bench.cases,
        }
    )
    return result


# -- the report -----------------------------------------------------------------------


def _ok(case: dict[str, Any] | None) -> bool:
    return bool(case and case.get("ok") and case.get("mib_s") is not None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summarize(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    cases: list[dict[str, Any]] = result["cases"]
    rounds: list[dict[str, Any]] = result["rounds"]
    round_nos = [r["round"] for r in rounds]

    def get(r: int | None, key: str) -> dict[str, Any] | None:
        return next((c for c in cases if c["round"] == r and c["key"] == key), None)

    def ok_cases(*keys: str) -> list[dict[str, Any]]:
        return [c for c in cases if c["key"] in keys and _ok(c)]

    # 1. the disk's limits
    seq = [r["disk_seq"]["mib_s"] for r in rounds]
    durable = [r["disk_durable"]["mib_s"] for r in rounds]
    disk_rows: list[list[object]] = [
        [
            r["round"],
            r["disk_seq"]["mib_s"],
            r["disk_seq"]["write_seconds"],
            r["disk_seq"]["fsync_seconds"],
            r["disk_durable"]["mib_s"],
            r["disk_durable"]["file_p50_ms"],
            r["disk_durable"]["file_p99_ms"],
        ]
        for r in rounds
    ]
    disk_rows.append(["median", median(seq), None, None, median(durable), None, None])
    print_table(
        f"disk limits, probed before each round ({args.size_mib} MiB each; durable acks: "
        f"{DURABLE_WRITERS} writers, 1 MiB files each fdatasynced and renamed into place)",
        [
            "round",
            "seq write+fsync MiB/s",
            "write s",
            "fsync s",
            "durable-ack MiB/s",
            "file p50 ms",
            "file p99 ms",
        ],
        disk_rows,
    )

    # 2. every case, in run order
    def procs(c: dict[str, Any]) -> str | None:
        if c.get("server_processes") is None:
            return None
        return f"{c['server_processes']}" + (f"+{c['children_seen']}" if c["children_seen"] else "")

    def check(c: dict[str, Any]) -> str:
        if c.get("ok"):
            return "OK"
        first = (c.get("error") or "").strip().splitlines()[:1]
        return "FAIL" + (f": {first[0][:60]}" if first else "")

    print_table(
        f"every case in run order (durability=fsync, {args.parallel} parallel, 127.0.0.1); "
        "procs = server processes [+ children that came and went]",
        [
            "round",
            "case",
            "MiB/s",
            "seconds",
            "sent %",
            "server CPU s",
            "CPU s/GiB",
            "peak RSS MiB",
            "procs",
            "client CPU s",
            "check",
        ],
        [
            [
                "-" if c["round"] is None else str(c["round"]),
                c["label"],
                c.get("mib_s"),
                c.get("seconds"),
                None
                if c.get("bytes_sent") is None or not c.get("size_bytes")
                else c["bytes_sent"] / c["size_bytes"] * 100,
                c.get("server_cpu_s"),
                c.get("server_cpu_s_per_gib"),
                c.get("server_peak_rss_mib"),
                procs(c),
                c.get("client_cpu_s"),
                check(c),
            ]
            for c in cases
        ],
    )

    # 3. the pairs
    pair_specs = [("ingestd / shipped peer", "fresh_a", "peer_shipped")]
    pair_specs.append(("ingestd / fsync peer", "fresh_b", "peer_fsync"))
    extra = [w for w in args.workers if w > 1]
    pair_specs += [(f"workers={w} / workers=1", f"fresh_w{w}", "fresh_a") for w in extra]
    pairs: list[dict[str, Any]] = []
    for r in round_nos:
        for name, ka, kb in pair_specs:
            a, b = get(r, ka), get(r, kb)
            if not (_ok(a) and _ok(b)):
                continue
            assert a is not None and b is not None
            pairs.append(
                {
                    "round": r,
                    "pair": name,
                    "a": ka,
                    "b": kb,
                    "a_mib_s": a["mib_s"],
                    "b_mib_s": b["mib_s"],
                    "ratio": a["mib_s"] / b["mib_s"],
                    "a_cpu_s_per_gib": a.get("server_cpu_s_per_gib"),
                    "b_cpu_s_per_gib": b.get("server_cpu_s_per_gib"),
                    "cpu_ratio": _ratio(
                        a.get("server_cpu_s_per_gib"), b.get("server_cpu_s_per_gib")
                    ),
                }
            )
    pair_rows: list[list[object]] = [
        [
            str(p["round"]),
            p["pair"],
            p["a_mib_s"],
            p["b_mib_s"],
            p["ratio"],
            p["a_cpu_s_per_gib"],
            p["b_cpu_s_per_gib"],
            p["cpu_ratio"],
        ]
        for p in pairs
    ]

    def pair_values(name: str, field: str) -> list[float]:
        return [p[field] for p in pairs if p["pair"] == name and p[field] is not None]

    for name, _, _ in pair_specs:
        if pair_values(name, "ratio"):
            pair_rows.append(
                [
                    "median",
                    name,
                    None,
                    None,
                    median(pair_values(name, "ratio")),
                    None,
                    None,
                    median(pair_values(name, "cpu_ratio")),
                ]
            )
    print_table(
        "pairs (adjacent in time): A / B" + ("" if pair_rows else ": none"),
        [
            "round",
            "pair A / B",
            "A MiB/s",
            "B MiB/s",
            "ratio",
            "A CPU s/GiB",
            "B CPU s/GiB",
            "CPU ratio",
        ],
        pair_rows,
    )

    # 4. medians by case
    keys = list(dict.fromkeys(c["key"] for c in cases))
    fresh_1 = [c["mib_s"] for c in ok_cases(*FRESH_1)]
    medians: dict[str, dict[str, Any]] = {}
    for key in keys:
        done = ok_cases(key)
        runs = [c for c in cases if c["key"] == key]
        rates = [c["mib_s"] for c in done]
        cpu = [c["server_cpu_s_per_gib"] for c in done if c.get("server_cpu_s_per_gib") is not None]
        rss = [c["server_peak_rss_mib"] for c in done if c.get("server_peak_rss_mib") is not None]
        medians[key] = {
            "runs": len(runs),
            "ok": len(done),
            "mib_s": median(rates),
            "mib_s_min": min(rates, default=None),
            "mib_s_max": max(rates, default=None),
            "seconds": median([c["seconds"] for c in done]),
            "server_cpu_s_per_gib": median(cpu),
            "server_peak_rss_mib_max": max(rss, default=None),
        }
    if fresh_1:
        medians["fresh"] = {
            "runs": len([c for c in cases if c["key"] in FRESH_1]),
            "ok": len(fresh_1),
            "mib_s": median(fresh_1),
            "mib_s_min": min(fresh_1),
            "mib_s_max": max(fresh_1),
            "seconds": median([c["seconds"] for c in ok_cases(*FRESH_1)]),
            "server_cpu_s_per_gib": median(
                [
                    c["server_cpu_s_per_gib"]
                    for c in ok_cases(*FRESH_1)
                    if c.get("server_cpu_s_per_gib") is not None
                ]
            ),
            "server_peak_rss_mib_max": max(
                (
                    c["server_peak_rss_mib"]
                    for c in ok_cases(*FRESH_1)
                    if c.get("server_peak_rss_mib") is not None
                ),
                default=None,
            ),
        }
    seq_med, durable_med = median(seq), median(durable)
    order = ["fresh", *keys]
    print_table(
        "medians by case (over the rounds); ingestd /v1 fresh = both workers=1 fresh cases",
        [
            "case",
            "ok/runs",
            "MiB/s",
            "min",
            "max",
            "seconds",
            "CPU s/GiB",
            "peak RSS MiB (max)",
            "vs seq disk",
            "vs durable acks",
        ],
        [
            [
                "ingestd /v1 fresh, workers=1" if key == "fresh" else label(key),
                f"{medians[key]['ok']}/{medians[key]['runs']}",
                medians[key]["mib_s"],
                medians[key]["mib_s_min"],
                medians[key]["mib_s_max"],
                medians[key]["seconds"],
                medians[key]["server_cpu_s_per_gib"],
                medians[key]["server_peak_rss_mib_max"],
                None if key in NOT_VS_DISK else _ratio(medians[key]["mib_s"], seq_med),
                None if key in NOT_VS_DISK else _ratio(medians[key]["mib_s"], durable_med),
            ]
            for key in order
            if key in medians
        ],
    )

    # 5. ingestd phases
    phased = [k for k in keys if any(c.get("phases") for c in ok_cases(k))]
    if phased:

        def phase(key: str, name: str) -> float | None:
            return median([c["phases"][name] for c in ok_cases(key) if c.get("phases")])

        print_table(
            "ingestd /v1 cases by phase (median seconds, from the client's progress callback; "
            "copy after: the materialised copy, written after the answer, not in total)",
            ["case", "hash", "create+send", "complete", "total", "copy after"],
            [
                [
                    label(k),
                    phase(k, "hash_s"),
                    phase(k, "send_s"),
                    phase(k, "complete_s"),
                    medians[k]["seconds"],
                    median([c["after_s"] for c in ok_cases(k) if c.get("after_s") is not None]),
                ]
                for k in phased
            ],
        )
    seeds = ok_cases("seed")
    latencies = [x for c in seeds for x in c.get("chunk_latencies_s", [])]
    if seeds:
        print(
            f"\nseed API: {seeds[0]['chunks']} chunks of {seeds[0]['chunk_size']:,} bytes per run, "
            f"{args.parallel} parallel; chunk latency over {len(latencies)} posts: "
            f"p50 {(percentile(latencies, 50) or 0) * 1000:.0f} ms, "
            f"p99 {(percentile(latencies, 99) or 0) * 1000:.0f} ms, "
            f"max {max(latencies, default=0) * 1000:.0f} ms; median complete "
            f"{median([c['complete_s'] for c in seeds]) or 0:.2f}s, processing job "
            f"{median([c['job_wait_s'] for c in seeds]) or 0:.2f}s after it"
        )

    # 6. the targets
    targets: dict[str, dict[str, Any]] = {}
    rows: list[list[object]] = []

    def target(
        name: str,
        value: float | None,
        goal: float | None,
        at_most: bool = False,
        unit: str = "x",
        values: list[float] | None = None,
        note: str | None = None,
    ) -> None:
        met = (
            None if value is None or goal is None else (value <= goal if at_most else value >= goal)
        )
        targets[name] = {
            "value": value,
            "goal": goal,
            "at_most": at_most,
            "unit": unit,
            "met": met,
            "values": values,
            "note": note,
        }
        goal_s = ""
        if goal is not None:
            g = f"{goal:g}" + (".0" if unit == "x" and float(goal).is_integer() else "")
            goal_s = f" {'<=' if at_most else '>='} {g}{unit}"
        shown = note if value is None and note else ("-" if value is None else f"{value:.2f}{unit}")
        if values and len(values) > 1:
            shown += f"  ({', '.join(f'{v:.2f}' for v in values)})"
        rows.append([name + goal_s, shown, "-" if met is None else ("yes" if met else "MISSED")])

    shipped = pair_values("ingestd / shipped peer", "ratio")
    fsyncing = pair_values("ingestd / fsync peer", "ratio")
    cpu_shipped = pair_values("ingestd / shipped peer", "cpu_ratio")
    cpu_fsync = pair_values("ingestd / fsync peer", "cpu_ratio")
    no_peer = "n/a (--skip-peer)" if args.skip_peer else "n/a (no pair)"
    target(
        "/v1 fresh vs shipped peer, MiB/s",
        median(shipped),
        TARGET_VS_SHIPPED,
        values=shipped,
        note=no_peer,
    )
    target(
        "/v1 fresh vs fsync peer, MiB/s",
        median(fsyncing),
        TARGET_VS_FSYNC,
        values=fsyncing,
        note=no_peer,
    )
    target(
        "/v1 fresh vs shipped peer, server CPU/GiB",
        median(cpu_shipped),
        TARGET_CPU_VS_SHIPPED,
        at_most=True,
        values=cpu_shipped,
        note=no_peer,
    )
    target(
        "/v1 fresh vs fsync peer, server CPU/GiB (no target)",
        median(cpu_fsync),
        None,
        values=cpu_fsync,
        note=no_peer,
    )
    for w in extra:
        gain = pair_values(f"workers={w} / workers=1", "ratio")
        note = "n/a (no --workers in `ingestd serve`)" if not result["workers_supported"] else "n/a"
        target(
            f"workers={w} gain over workers=1, MiB/s (no target)",
            median(gain),
            None,
            values=gain,
            note=note,
        )
        cpu_gain = pair_values(f"workers={w} / workers=1", "cpu_ratio")
        target(
            f"workers={w} vs workers=1, server CPU/GiB (no target)",
            median(cpu_gain),
            None,
            values=cpu_gain,
            note=note,
        )
    seed_rates = [c["mib_s"] for c in seeds]
    target(
        "seed API vs /v1 fresh (medians), MiB/s",
        _ratio(median(seed_rates), median(fresh_1)),
        TARGET_SEED_VS_FRESH,
        note="n/a (--skip-seed)" if args.skip_seed else "n/a",
    )
    target(
        "seed API p99 chunk latency",
        None if not latencies else (percentile(latencies, 99) or 0) * 1000,
        TARGET_SEED_P99_MS,
        at_most=True,
        unit=" ms",
        note="n/a (--skip-seed)" if args.skip_seed else "n/a",
    )
    for key, name in (
        ("reupload_cold", "re-upload (new client state dir) speed-up over fresh"),
        ("reupload", "re-upload (same client, chunk-list cache) speed-up"),
    ):
        speedups = []
        for r in round_nos:
            fresh_b, again = get(r, "fresh_b"), get(r, key)
            if _ok(fresh_b) and _ok(again):
                assert fresh_b is not None and again is not None
                speedups.append(fresh_b["seconds"] / again["seconds"])
        target(name, median(speedups), TARGET_REUPLOAD_SPEEDUP, values=speedups)
    rss_cases = [
        c
        for c in ok_cases(*FRESH_1, *(f"fresh_w{w}" for w in extra))
        if c.get("server_peak_rss_mib") is not None
    ]
    target(
        "daemon peak RSS per process, fresh uploads (max)",
        max((c["server_peak_rss_mib"] for c in rss_cases), default=None),
        TARGET_RSS_MIB,
        at_most=True,
        unit=" MiB",
    )
    insert = get(None, "insert")
    target(
        "JSONL +1 MiB inserted: share of bytes sent",
        insert["bytes_sent"] / insert["size_bytes"] * 100 if _ok(insert) and insert else None,
        TARGET_INSERT_SENT * 100,
        at_most=True,
        unit=" %",
        note="n/a (--jsonl-mib 0)" if not args.jsonl_mib else "n/a",
    )
    title = "targets (medians of the pair ratios; the rounds' values in brackets)"
    if args.size_mib != 1024 or args.jsonl_mib != 256:
        title += (
            f"; NB: set for 1024 MiB / JSONL 256 MiB, this run used {args.size_mib} / "
            f"{args.jsonl_mib} MiB"
        )
    print_table(title, ["target", "measured", "met?"], rows)

    peers = ok_cases("peer_shipped", "peer_fsync")
    if peers:
        print(f"\npeer client: {peers[0]['client']}, {peers[0]['how']}")
    if "jsonl" in result:
        j = result["jsonl"]
        print(
            f"JSONL: {j['size_bytes']:,} bytes; variant {j['variant_size_bytes']:,} bytes with "
            f"{j['insert_bytes']:,} bytes of new lines at offset {j['insert_offset']:,}"
        )
    scopes = {c.get("server_peak_rss_scope") for c in cases} - {None}
    print(
        f"server peak RSS: the largest VmHWM among the server's own processes, per "
        f"{', '.join(sorted(scopes)) or '-'}; server CPU: the whole process tree"
    )
    return {"pairs": pairs, "medians": medians, "targets": targets}


def parse_workers(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("workers must be >= 1")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="random file (default 1024)")
    parser.add_argument(
        "--jsonl-mib",
        type=int,
        default=256,
        help="JSONL file for the insertion case; 0: none (256)",
    )
    parser.add_argument("--parallel", type=int, default=5, help="client parallelism (5)")
    parser.add_argument(
        "--pairs", type=int, default=3, help="rounds of alternating ingestd/peer pairs (3)"
    )
    parser.add_argument(
        "--workers",
        type=parse_workers,
        default=[1],
        metavar="N[,N...]",
        help="`ingestd serve --workers` values; workers=1 always runs (it is paired with "
        "the peers), each N > 1 adds a fresh case per round paired with it (default 1)",
    )
    parser.add_argument("--skip-peer", action="store_true", help="no tus peers")
    parser.add_argument("--skip-seed", action="store_true", help="no seed-API case")
    parser.add_argument(
        "--peer-chunk-mib",
        type=int,
        default=0,
        help="tus-js-client PATCH size in MiB; 0: the whole file in one PATCH (0)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record the daemon (and its subprocesses) during the first round's "
        "ingestd cases and the JSONL cases into DIR/CASE.txt (collapsed stacks, "
        "flamegraph.pl input) and print the top functions by self time; those numbers "
        "then include py-spy's overhead",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="results file (default bench/results/upload.json)"
    )
    parser.add_argument(
        "--tmp-dir",
        metavar="DIR",
        help="parent of the temp dir holding the files and data dirs "
        "(default $INGESTD_BENCH_TMP, else the repo's parent dir)",
    )
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep the tables after the progress lines
    if args.size_mib <= 0 or args.parallel <= 0 or args.jsonl_mib < 0:
        parser.error("--size-mib and --parallel must be positive, --jsonl-mib >= 0")
    if args.pairs <= 0 or args.peer_chunk_mib < 0:
        parser.error("--pairs must be positive, --peer-chunk-mib >= 0")
    if 1 not in args.workers:
        args.workers = [1, *args.workers]

    t0 = time.monotonic()
    result = run(args)
    summary = summarize(args, result)
    if args.profile:
        summary["profile_top_self"] = {}
        for case in result["cases"]:
            if case["round"] not in (1, None):
                continue
            raw = args.profile / f"{case['key']}.txt"
            if not raw.is_file():
                continue
            frames = top_self_frames(raw)
            print(f"\ndaemon during {case['key']}: top functions by self time ({raw})")
            for frame, samples, share in frames:
                print(f"  {share:6.1%} {samples:6d}  {frame}")
            summary["profile_top_self"][case["key"]] = [
                {"frame": f, "samples": n, "share": sh} for f, n, sh in frames
            ]
    ok = bool(result["cases"]) and all(c["ok"] for c in result["cases"])
    out = write_json(
        args.json,
        "upload",
        {
            "benchmark": "upload",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "params": {
                "size_mib": args.size_mib,
                "jsonl_mib": args.jsonl_mib,
                "parallel": args.parallel,
                "pairs": args.pairs,
                "workers": args.workers,
                "chunking": "cdc",
                "durability": "fsync",
                "peers": None if args.skip_peer else ["shipped (no fsync)", "fsync"],
                "peer_client": None if args.skip_peer else "tus-js-client (node)",
                "peer_chunk_mib": args.peer_chunk_mib,
                "seed": not args.skip_seed,
                "durable_probe_writers": DURABLE_WRITERS,
                "profiled": bool(args.profile),
            },
            "run_seconds": time.monotonic() - t0,
            **result,
            **summary,
            "all_ok": ok,
        },
    )
    print(f"\nresults written to {out} (run took {time.monotonic() - t0:.0f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"upload benchmark failed: {exc}")
        sys.exit(1)

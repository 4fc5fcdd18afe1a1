"""Upload benchmark (issue 3): the ingestd client against the disk's limit and a tus peer.

One run; every server is started fresh on 127.0.0.1 and gets a new data dir, and
ingestd runs with INGESTD_STORAGE_DURABILITY=fsync (every other setting is its
default). Cases:

1. disk: the disk's limit, the --size-mib bytes written sequentially in 1 MiB
   writes to a new file next to the data dirs, then fsynced (fsync included);
   the median of --disk-runs such probes;
2. ingestd fresh: a random file of --size-mib uploaded with
   `ingestd.daemon.client.Client` (cdc chunking, --parallel requests) to a fresh
   `ingestd serve`;
3. ingestd re-upload: the same file again as a new upload (new client state dir,
   so nothing is resumed); every chunk is already stored, so little is sent;
4. ingestd JSONL: a deterministic --jsonl-mib JSONL file, then a variant with
   1 MiB of new lines inserted near its start (the first line boundary after
   min(4 MiB, size/8)); the variant should send only the chunks around the
   insertion;
5. peer: an @tus/server 2.x with @tus/file-store (bench/tus_peer_server.mjs, a
   node process; packages installed by this script into bench/.peer/ when
   missing) receives the --size-mib file from tus-js-client under node
   (bench/tus_peer_client.mjs: an fs.ReadStream, the whole file in one PATCH) and
   from tuspy (PATCHes of --tuspy-chunk-mib MiB); the faster of the two is the
   peer reference. The peer fsyncs the stored file and its directory before it
   acknowledges the last PATCH (--peer-no-fsync: not). Stored files are checked
   by sha256.

For each case: MiB/s (file size / wall seconds of the upload call, completion
included), bytes sent, ratios to the disk and to the peer reference, the server's
CPU seconds and its peak RSS (VmHWM from /proc, reset per case through
/proc/PID/clear_refs), and the benchmark process's own CPU (the client; for
tus-js-client, the node child's). The peer's seconds under node are the tus
client's own timing, without node's start-up. ingestd cases are also split into
hash / create+send / complete phases through the client's progress callback,
and checked against the local BLAKE3 and sha256 of the file.

Targets: fresh >= 0.8x disk and >= 1.0x peer; re-upload >= 20x faster than
fresh; the insertion case sends <= 5 % of the file. A missed target is reported,
not an error; the exit status is 1 only if a check or an upload fails.

Usage: .venv/bin/python bench/upload.py [--size-mib 1024] [--jsonl-mib 256] [--parallel 5]
       [--skip-peer] [--json PATH] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import inspect
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import blake3
import httpx
from _common import (
    BENCH_DIR,
    MIB,
    BenchError,
    ServerProcess,
    disk_write_limit,
    free_port,
    log,
    machine_info,
    make_source,
    make_tmp_dir,
    print_table,
    settle,
    sha256_file,
    start_ingestd,
    write_json,
)

T = TypeVar("T")

PEER_DIR = BENCH_DIR / ".peer"
PEER_PACKAGES = {"@tus/server": "2.4.5", "@tus/file-store": "2.1.1", "tus-js-client": "4.3.1"}
NODE_MIN = (20, 19)  # @tus/server 2.x
NPM_TIMEOUT = 600.0
PROFILER_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0
INSERT_BYTES = MIB
INSERT_OFFSET = 4 * MIB
JSONL_SEED = 20240603

TARGET_FRESH_VS_DISK = 0.8
TARGET_FRESH_VS_PEER = 1.0
TARGET_REUPLOAD_SPEEDUP = 20.0
TARGET_INSERT_SENT = 0.05


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
    server = ServerProcess("tus peer", argv, port=port, log_path=log_path)
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
    server: ServerProcess | None, fn: Callable[[], T], timeout: float, what: str
) -> tuple[T, dict[str, Any]]:
    """Run one case after settling the disk: wall seconds, server CPU and peak RSS,
    and this process's CPU (the client's, when it runs here)."""
    settle()
    reset = server.reset_peak_rss() if server else False
    cpu0 = server.cpu_seconds() if server else None
    own0 = own_cpu_seconds()
    t0 = time.perf_counter()
    value = run_bounded(fn, timeout, what)
    seconds = time.perf_counter() - t0
    own1 = own_cpu_seconds()
    cpu1 = server.cpu_seconds() if server else None
    return value, {
        "seconds": seconds,
        "server_cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        "server_peak_rss_mib": server.peak_rss_mib() if server else None,
        "server_peak_rss_scope": "case" if reset else "process lifetime",
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
            + ["--nonblocking", "--threads", "-o", str(out)],
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
            if "progress" in inspect.signature(client.upload).parameters:
                result = client.upload(source.path, progress=clock)
            else:
                result = client.upload(source.path)
        clock.stop()
        return result

    profiler = None
    if profile is not None:
        settle()
        profiler = Profiler(server.pid, profile)
    try:
        result, m = measured(server, upload, upload_timeout(source.size), what)
    finally:
        if profiler is not None:
            profiler.stop()
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
        f"  {what}: {m['seconds']:.2f}s, sent {res['bytes_sent']:,} of {source.size:,} bytes, "
        f"checks {'OK' if all(checks.values()) else checks}"
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
        if path and Path(path).is_file():  # the materialized copy
            checks["materialized_sha256"] = sha256_file(path) == source.sha256
    return checks


def peer_node_upload(
    peer: ServerProcess, store_dir: Path, source: SourceFile, node: str, chunk_mib: int
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

    out, m = measured(peer, upload, timeout + 10, "tus-js-client upload")
    how = f"{out['patches']} PATCH" + ("es" if out["patches"] != 1 else "")
    how += " of the whole file" if out["chunk_size"] is None else f" of {chunk_mib} MiB"
    return _peer_case(
        store_dir, source, out["url"], m, out["seconds"], out["client"], how + ", streamed"
    )


def peer_tuspy_upload(
    peer: ServerProcess, store_dir: Path, source: SourceFile, chunk_mib: int
) -> dict[str, Any]:
    from tusclient import client as tus_client

    def upload() -> str:
        uploader = tus_client.TusClient(f"{peer.base_url}/files").uploader(
            str(source.path),
            chunk_size=chunk_mib * MIB,
            metadata={"filename": source.path.name},
            store_url=False,
            retries=0,
        )
        uploader.upload()
        return uploader.url

    url, m = measured(peer, upload, upload_timeout(source.size), "tuspy upload")
    n = -(-source.size // (chunk_mib * MIB))
    version = importlib.metadata.version("tuspy")
    how = f"{n} PATCH{'es' if n != 1 else ''} of up to {chunk_mib} MiB"
    return _peer_case(store_dir, source, url, m, m["seconds"], f"tuspy {version}", how)


def _peer_case(
    store_dir: Path,
    source: SourceFile,
    url: str,
    m: dict[str, Any],
    seconds: float,
    client: str,
    how: str,
) -> dict[str, Any]:
    stored = store_dir / url.rstrip("/").rsplit("/", 1)[-1]
    got = sha256_file(stored) if stored.is_file() else None
    ok = got == source.sha256
    log(f"  {client}: {seconds:.2f}s ({how}), stored sha256 {'OK' if ok else 'MISMATCH'}")
    with contextlib.suppress(OSError):
        stored.unlink()  # free the space for what follows
    return {
        "kind": "peer",
        "size_bytes": source.size,
        "bytes_sent": source.size,
        **m,
        # The client's own timing (start to the answer to the last PATCH), without
        # node's start-up; the wall time around the client is wall_seconds.
        "wall_seconds": m["seconds"],
        "seconds": seconds,
        "client": client,
        "how": how,
        "url": url,
        "stored_sha256": got,
        "checks": {"stored_sha256": ok},
        "ok": ok,
    }


# -- the run --------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MIB
    jsonl_size = args.jsonl_mib * MIB
    peer_versions = None if args.skip_peer else ensure_peer()
    work = make_tmp_dir(args.tmp_dir, "ingestd-bench-upload-")
    servers: list[ServerProcess] = []
    cases: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {"cases": cases}
    try:
        data_dir = work / "ingestd-data"
        peer_dir = work / "tus-store"
        data_dir.mkdir()
        log(f"work dir {work}")
        log(f"writing a {args.size_mib} MiB random file and {args.jsonl_mib} MiB JSONL files")
        source = SourceFile(work / "random.bin", make_source(work / "random.bin", size))
        jsonl = variant = None
        if not args.skip_ingestd and jsonl_size:
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

        log(f"disk: sequential write+fsync, {args.disk_runs} run(s)")
        probes = []
        for _ in range(args.disk_runs):
            settle()
            probes.append(disk_write_limit(work, size))
            log(f"  disk: {probes[-1]['mib_s']:.0f} MiB/s")
        disk = sorted(probes, key=lambda p: p["seconds"])[len(probes) // 2]  # the median
        cases["disk"] = {
            "kind": "disk",
            "size_bytes": size,
            "bytes_sent": None,
            "seconds": disk["seconds"],
            "disk": disk,
            "disk_runs_mib_s": [p["mib_s"] for p in probes],
            "ok": True,
        }

        if not args.skip_ingestd:
            daemon = start_ingestd(data_dir, work / "ingestd.log")
            servers.append(daemon)
            with httpx.Client(base_url=daemon.base_url, timeout=REQUEST_TIMEOUT) as client:
                r = client.get("/v1/info")
                r.raise_for_status()
                result["ingestd_info"] = r.json()
            log(f"ingestd pid {daemon.pid} on port {daemon.port}")
            # The re-upload runs the same client again (its chunk-list cache
            # knows the file); the cold one is another machine (hashes it).
            todo = [
                ("fresh", source, "fresh upload", "fresh"),
                ("reupload", source, "re-upload", "fresh"),
                ("reupload_cold", source, "re-upload, cold client", "cold"),
            ]
            if jsonl is not None and variant is not None:
                todo += [
                    ("jsonl", jsonl, "JSONL upload", "jsonl"),
                    ("insert", variant, "JSONL +1 MiB", "insert"),
                ]
            for key, src, what, state in todo:
                cases[key] = ingestd_upload(
                    daemon,
                    src,
                    work / f"state-{state}",
                    args.parallel,
                    what,
                    profile=args.profile / f"{key}.txt" if args.profile else None,
                )
            result["ingestd_server_cpu_total_s"] = daemon.cpu_seconds()
            daemon.stop()

        if not args.skip_peer:
            assert peer_versions is not None
            node = peer_versions["node_bin"]
            peer = start_peer(peer_dir, work / "tus-peer.log", not args.peer_no_fsync, node)
            servers.append(peer)
            result["peer_health"] = peer.health
            log(f"tus peer pid {peer.pid} on port {peer.port}")
            if args.peer_client in ("node", "both"):
                cases["peer_node"] = peer_node_upload(
                    peer, peer_dir, source, node, args.peer_chunk_mib
                )
            if args.peer_client in ("tuspy", "both"):
                cases["peer_tuspy"] = peer_tuspy_upload(
                    peer, peer_dir, source, args.tuspy_chunk_mib
                )
            peer.stop()
            result["peer_versions"] = peer_versions
        return result
    except BaseException:
        for server in servers:
            tail = server.log_tail()
            if tail:
                log(f"{server.name} log tail:\n{tail}")
        raise
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _mib_s(case: dict[str, Any]) -> float:
    return case["size_bytes"] / MIB / case["seconds"]


def summarize(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    cases = result["cases"]
    for case in cases.values():
        case["mib_s"] = _mib_s(case)
    disk = cases["disk"]["mib_s"]
    peers = [c for k, c in cases.items() if k.startswith("peer_") and c["ok"]]
    peer = max(peers, key=lambda c: c["mib_s"]) if peers else None
    for case in cases.values():
        case["vs_disk"] = case["mib_s"] / disk
        case["vs_peer"] = case["mib_s"] / peer["mib_s"] if peer else None
        if case.get("bytes_sent") is not None:
            case["sent_share"] = case["bytes_sent"] / case["size_bytes"]

    labels = {
        "disk": "disk write+fsync, 1 MiB writes"
        + (f" (median of {args.disk_runs})" if args.disk_runs > 1 else ""),
        "fresh": f"ingestd fresh (cdc, {args.parallel} parallel)",
        "reupload": "ingestd re-upload (dedup)",
        "reupload_cold": "ingestd re-upload, cold client cache",
        "jsonl": "ingestd JSONL original",
        "insert": "ingestd JSONL +1 MiB inserted",
    }
    for key in ("peer_node", "peer_tuspy"):
        if key in cases:
            labels[key] = f"peer tus: {cases[key]['client'].split(' (')[0]}"
            if cases[key] is peer:
                labels[key] += " *"

    def cpu(case):
        return case.get("server_cpu_s")

    print_table(
        f"upload of {args.size_mib} MiB (JSONL {args.jsonl_mib} MiB), durability=fsync, "
        "127.0.0.1; * = peer reference",
        [
            "case",
            "MiB/s",
            "seconds",
            "bytes sent",
            "sent %",
            "vs disk",
            "vs peer",
            "server CPU s",
            "server peak RSS MiB",
            "client CPU s",
            "check",
        ],
        [
            [
                labels[key],
                c["mib_s"],
                c["seconds"],
                c.get("bytes_sent"),
                None if c.get("sent_share") is None else c["sent_share"] * 100,
                c["vs_disk"],
                c["vs_peer"],
                cpu(c),
                c.get("server_peak_rss_mib"),
                c.get("client_cpu_s"),
                "-" if c["kind"] == "disk" else ("OK" if c["ok"] else "FAIL"),
            ]
            for key, c in cases.items()
        ],
    )

    timed = [(k, c) for k, c in cases.items() if c.get("phases")]
    if timed:
        print_table(
            "ingestd cases by phase (seconds, from the client's progress callback)",
            ["case", "hash", "create+send", "complete", "total"],
            [
                [
                    labels[k],
                    c["phases"]["hash_s"],
                    c["phases"]["send_s"],
                    c["phases"]["complete_s"],
                    c["seconds"],
                ]
                for k, c in timed
            ],
        )

    targets: dict[str, dict[str, Any]] = {}

    def target(name: str, value: float | None, goal: float, at_most: bool, unit: str) -> None:
        met = None if value is None else (value <= goal if at_most else value >= goal)
        targets[name] = {"value": value, "goal": goal, "at_most": at_most, "met": met}
        shown = "-" if value is None else f"{value:.2f}{unit}"
        goal_s = f"{'<=' if at_most else '>='} {goal:g}{unit}"
        status = "n/a" if met is None else ("OK" if met else "MISSED")
        print(f"  {name:<36} {shown:>10}  {goal_s:<8} {status}")

    fresh = cases.get("fresh")
    reup = cases.get("reupload")
    insert = cases.get("insert")
    print("\ntargets")
    target("fresh vs disk", fresh and fresh["vs_disk"], TARGET_FRESH_VS_DISK, False, "x")
    target(
        "fresh vs peer",
        fresh and fresh["vs_peer"],
        TARGET_FRESH_VS_PEER,
        False,
        "x",
    )
    target(
        "re-upload speed-up over fresh",
        fresh and reup and fresh["seconds"] / reup["seconds"],
        TARGET_REUPLOAD_SPEEDUP,
        False,
        "x",
    )
    cold = cases.get("reupload_cold")
    if fresh and cold:
        speedup = fresh["seconds"] / cold["seconds"]
        print(f"  {'re-upload, cold client (no target)':<36} {speedup:>9.2f}x")
    target(
        "insertion case: share of file sent",
        insert and insert["sent_share"] * 100,
        TARGET_INSERT_SENT * 100,
        True,
        " %",
    )
    if peer:
        print(f"\npeer reference: {peer['client']}, {peer['how']}; {_peer_note(args)}")
    for key in ("peer_node", "peer_tuspy"):
        c = cases.get(key)
        if c and c is not peer:
            print(f"other tus client: {c['client']}, {c['how']}, {c['mib_s']:.0f} MiB/s")
    if "jsonl" in result:
        j = result["jsonl"]
        print(
            f"JSONL: {j['size_bytes']:,} bytes; variant {j['variant_size_bytes']:,} bytes with "
            f"{j['insert_bytes']:,} bytes of new lines at offset {j['insert_offset']:,}"
        )
    runs = cases["disk"].get("disk_runs_mib_s") or []
    if len(runs) > 1:
        print(f"disk probes: {', '.join(f'{r:.0f}' for r in runs)} MiB/s (median used)")
    scopes = {c.get("server_peak_rss_scope") for c in cases.values()} - {None}
    print(f"server peak RSS is VmHWM per {', '.join(sorted(scopes)) or '-'}")
    return {"targets": targets, "peer_reference": peer and peer["client"]}


def _peer_note(args: argparse.Namespace) -> str:
    if args.peer_no_fsync:
        return "the peer does not fsync (page cache only)"
    return "the peer fsyncs the file once, before answering the last PATCH"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="random file (default 1024)")
    parser.add_argument(
        "--jsonl-mib", type=int, default=256, help="JSONL file for the insertion case (256)"
    )
    parser.add_argument("--parallel", type=int, default=5, help="client parallelism (5)")
    parser.add_argument("--skip-peer", action="store_true", help="no tus peer")
    parser.add_argument(
        "--skip-ingestd", action="store_true", help="no ingestd cases (disk and peer only)"
    )
    parser.add_argument(
        "--disk-runs",
        type=int,
        default=3,
        help="disk probes; the median is the disk's limit (3)",
    )
    parser.add_argument(
        "--peer-client",
        choices=("node", "tuspy", "both"),
        default="both",
        help="tus client(s) for the peer; with both, the faster is the reference (both)",
    )
    parser.add_argument(
        "--peer-chunk-mib",
        type=int,
        default=0,
        help="tus-js-client PATCH size in MiB; 0: the whole file in one PATCH (0)",
    )
    parser.add_argument(
        "--tuspy-chunk-mib", type=int, default=64, help="tuspy PATCH size in MiB (64)"
    )
    parser.add_argument(
        "--peer-no-fsync",
        action="store_true",
        help="the peer does not fsync the finished file (default: it does)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record the daemon during each ingestd case into DIR/CASE.txt "
        "(collapsed stacks, flamegraph.pl input) and print the top functions by "
        "self time; the numbers then include py-spy's overhead",
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
    sys.stdout.reconfigure(line_buffering=True)  # keep the table after the progress lines
    if args.size_mib <= 0 or args.parallel <= 0 or args.jsonl_mib < 0:
        parser.error("--size-mib and --parallel must be positive, --jsonl-mib >= 0")
    if args.disk_runs <= 0:
        parser.error("--disk-runs must be positive")
    if args.tuspy_chunk_mib <= 0 or args.peer_chunk_mib < 0:
        parser.error("--tuspy-chunk-mib must be positive, --peer-chunk-mib >= 0")

    result = run(args)
    summary = summarize(args, result)
    if args.profile:
        summary["profile_top_self"] = {}
        for key in ("fresh", "reupload", "reupload_cold", "jsonl", "insert"):
            raw = args.profile / f"{key}.txt"
            if not raw.is_file():
                continue
            frames = top_self_frames(raw)
            print(f"\ndaemon during {key}: top functions by self time (active samples, {raw})")
            for frame, samples, share in frames:
                print(f"  {share:6.1%} {samples:6d}  {frame}")
            summary["profile_top_self"][key] = [
                {"frame": f, "samples": n, "share": sh} for f, n, sh in frames
            ]
    ok = all(c["ok"] for c in result["cases"].values())
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
                "disk_runs": args.disk_runs,
                "chunking": "cdc",
                "durability": "fsync",
                "peer_client": None if args.skip_peer else args.peer_client,
                "peer_chunk_mib": args.peer_chunk_mib,
                "tuspy_chunk_mib": args.tuspy_chunk_mib,
                "peer_fsync": not args.peer_no_fsync,
                "profiled": bool(args.profile),
            },
            **result,
            **summary,
            "all_ok": ok,
        },
    )
    print(f"\nresults written to {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"upload benchmark failed: {exc}")
        sys.exit(1)

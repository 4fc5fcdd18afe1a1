"""tus benchmark (issue 5): ingestd's tus endpoint against @tus/server's file store.

One run; each server is started fresh on 127.0.0.1 with a new data dir;
ingestd runs with INGESTD_STORAGE_DURABILITY=fsync (everything else default:
1 MiB chunks, materialised copies, the built-in plugins). The peer is
@tus/server 2.x with @tus/file-store (bench/tus_peer_server.mjs, installed into
bench/.peer/ by bench/_peers.py when missing); it fsyncs each stored
file and its directory before it answers the last PATCH. Cases, on a random
--size-mib file:

1. disk: the disk's limit, the file's size written in 1 MiB writes and fsynced
   (the median of --disk-runs probes);
2. single PATCH: tus-js-client under node (bench/tus_peer_client.mjs) creates
   an upload and sends the whole file in one PATCH, streamed from disk — to
   ingestd, then to the peer;
3. N-way parallel (--parallel, default 5): the file cut into N ranges, each
   sent as its own upload at the same time (httpx, one thread and connection
   per range, one PATCH each, streamed from disk). For ingestd the ranges are
   tus partial uploads, joined by one final upload (Upload-Concat: final);
   the time runs to the answer to that POST. @tus/file-store does not offer
   the concatenation extension, so the peer receives N plain uploads; its
   time runs to the last PATCH's answer and leaves out joining them.
   "peer N-way + join by copy" adds what joining would cost there: the bench
   copies the N stored files into one and fsyncs it (os.copy_file_range), as
   a server without manifest concatenation would have to.

MiB/s is the file size over the case's seconds (for node, the client's own
timing, start to the last answer, without node's start-up). ingestd's answer
to the last request means every byte is durable and the completion job is
queued; "ready s" is when that job has verified (BLAKE3), copied and
processed the file, measured from the case's start. Stored content is
checked: ingestd's file record BLAKE3 and size, and the bytes downloaded back
through the tus GET; the peer's stored files by sha256. Also shown: server
CPU seconds and peak RSS (VmHWM, reset per case where the kernel allows).

Usage: .venv/bin/python bench/tus.py [--size-mib 1024] [--parallel 5] [--skip-peer]
       [--json PATH] [--tmp-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _clients import SourceFile
from _common import (
    BENCH_DIR,
    MIB,
    BenchError,
    ServerProcess,
    disk_write_limit,
    finish,
    log,
    make_source,
    make_tmp_dir,
    print_table,
    run_main,
    settle,
    sha256_file,
    start_ingestd,
)
from _measure import measured, upload_timeout
from _peers import PEER_DIR, ensure_peer, start_peer

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
REQUEST_TIMEOUT = 60.0
READY_TIMEOUT = 600.0
BLOCK = MIB


def ranges(size: int, parts: int) -> list[tuple[int, int]]:
    """(start, length) of `parts` nearly equal ranges of `size` bytes."""
    base, extra = divmod(size, parts)
    out, start = [], 0
    for i in range(parts):
        length = base + (1 if i < extra else 0)
        out.append((start, length))
        start += length
    return out


def file_range(path: Path, start: int, length: int):
    """The bytes of a file range, streamed in 1 MiB blocks."""
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left:
            block = f.read(min(BLOCK, left))
            if not block:
                raise BenchError(f"{path} ended early")
            left -= len(block)
            yield block


def create(client: httpx.Client, endpoint: str, headers: dict[str, str]) -> str:
    r = client.post(endpoint, headers={**TUS, **headers})
    if r.status_code != 201:
        raise BenchError(f"POST {endpoint}: {r.status_code} {r.text[:300]}")
    return str(httpx.URL(endpoint).join(r.headers["Location"]))


def patch_range(client: httpx.Client, url: str, path: Path, start: int, length: int) -> None:
    r = client.patch(
        url,
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": OCTETS,
            "Content-Length": str(length),
        },
        content=file_range(path, start, length),
    )
    if r.status_code != 204 or r.headers.get("Upload-Offset") != str(length):
        raise BenchError(f"PATCH {url}: {r.status_code} {r.text[:300]}")


def in_threads(work: list[Callable[[], Any]]) -> list[Any]:
    """Run callables at once, one thread each; their results, or the first error."""
    results: list[Any] = [None] * len(work)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = work[i]()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# -- cases ----------------------------------------------------------------------


def node_single_patch(
    server: ServerProcess, source: SourceFile, node: str, endpoint: str
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """tus-js-client, the whole file in one PATCH; (client output, measures, t0)."""
    argv = [
        node,
        str(BENCH_DIR / "tus_peer_client.mjs"),
        "--peer-dir",
        str(PEER_DIR),
        "--endpoint",
        endpoint,
        "--file",
        str(source.path),
    ]
    timeout = upload_timeout(source.size)
    started: list[float] = []

    def upload() -> dict[str, Any]:
        started.append(time.monotonic())
        r = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            raise BenchError(f"tus_peer_client.mjs failed ({r.returncode}): {r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    out, m = measured(server, upload, timeout + 10, "tus-js-client single PATCH")
    if out["patches"] != 1:
        raise BenchError(f"expected one PATCH, tus-js-client sent {out['patches']}")
    return out, m, started[0]


def parallel_uploads(
    server: ServerProcess, source: SourceFile, parts: int, concatenate: bool
) -> tuple[str | list[str], dict[str, Any], float]:
    """`parts` ranges sent at once; with `concatenate`, joined by a final upload."""
    endpoint = f"{server.base_url}/files/"
    spans = ranges(source.size, parts)
    started: list[float] = []

    def upload() -> str | list[str]:
        started.append(time.monotonic())

        def one(start: int, length: int) -> str:
            with httpx.Client(timeout=upload_timeout(length)) as client:
                headers = {"Upload-Length": str(length)}
                if concatenate:
                    headers["Upload-Concat"] = "partial"
                url = create(client, endpoint, headers)
                patch_range(client, url, source.path, start, length)
                return url

        urls = in_threads([lambda s=s, n=n: one(s, n) for s, n in spans])
        if not concatenate:
            return urls
        with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
            return create(
                client,
                endpoint,
                {
                    "Upload-Concat": "final;" + " ".join(httpx.URL(u).path for u in urls),
                    "Upload-Metadata": "filename "
                    + base64.b64encode(source.path.name.encode()).decode(),
                },
            )

    urls, m = measured(server, upload, upload_timeout(source.size), f"{parts}-way parallel")
    return urls, m, started[0]


def ingestd_ready(server: ServerProcess, url: str, source: SourceFile, t0: float) -> dict:
    """Wait for the upload's job; check the file; when it was ready (seconds after t0)."""
    with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
        r = client.head(url, headers=TUS)
        job_id = r.headers.get("Ingestd-Job-Id")
        if r.status_code != 200 or not job_id:
            raise BenchError(f"HEAD {url}: {r.status_code} {dict(r.headers)}")
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            job = client.get(f"{server.base_url}/v1/jobs/{job_id}?wait=30").json()
            if job["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
                break
        ready = time.monotonic() - t0
        checks = {"job_succeeded": job["state"] == "succeeded"}
        if checks["job_succeeded"]:
            file = client.get(f"{server.base_url}/v1/files/{job['file_id']}").json()
            checks["file_blake3"] = file["blake3"] == source.blake3
            checks["file_size"] = file["size"] == source.size
            sha = hashlib.sha256()
            with client.stream("GET", url) as response:
                for block in response.iter_bytes(4 * MIB):
                    sha.update(block)
            checks["download_sha256"] = sha.hexdigest() == source.sha256
            chunks = file.get("chunks") or {}
        else:
            chunks = {}
    return {"ready_seconds": ready, "job": job_id, "chunks": chunks, "checks": checks}


def peer_stored(store_dir: Path, urls: list[str]) -> list[Path]:
    return [store_dir / u.rstrip("/").rsplit("/", 1)[-1] for u in urls]


def join_by_copy(paths: list[Path], dest: Path) -> float:
    """Seconds to concatenate `paths` into `dest` by copying, fsync included."""
    t0 = time.perf_counter()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for path in paths:
            with open(path, "rb") as src:
                left = os.fstat(src.fileno()).st_size
                while left:
                    n = os.copy_file_range(src.fileno(), fd, left)
                    if n == 0:
                        raise BenchError(f"short copy from {path}")
                    left -= n
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def case(kind: str, label: str, source: SourceFile, seconds: float, m: dict, **extra) -> dict:
    checks = extra.pop("checks", {})
    return {
        "kind": kind,
        "label": label,
        "size_bytes": source.size,
        **m,
        "seconds": seconds,
        "mib_s": source.size / MIB / seconds,
        "checks": checks,
        "ok": all(checks.values()) if checks else True,
        **extra,
    }


# -- the run -------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MIB
    versions = None if args.skip_peer else ensure_peer()
    node = versions["node_bin"] if versions else shutil.which("node")
    if node is None:
        raise BenchError("node is needed for tus-js-client")
    if not (PEER_DIR / "node_modules" / "tus-js-client").is_dir():
        ensure_peer()  # tus-js-client comes with the peer's packages
    work = make_tmp_dir(args.tmp_dir, "ingestd-bench-tus-")
    cases: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {"cases": cases, "peer_versions": versions}
    servers: list[ServerProcess] = []
    try:
        log(f"work dir {work}; writing a {args.size_mib} MiB random file")
        source = SourceFile(work / "random.bin", make_source(work / "random.bin", size))

        log(f"disk: sequential write+fsync, {args.disk_runs} run(s)")
        probes = []
        for _ in range(args.disk_runs):
            settle()
            probes.append(disk_write_limit(work, size))
        disk = sorted(probes, key=lambda p: p["seconds"])[len(probes) // 2]
        cases["disk"] = case(
            "disk",
            "disk write+fsync, 1 MiB writes",
            source,
            disk["seconds"],
            {},
            disk_runs_mib_s=[p["mib_s"] for p in probes],
        )

        daemon = start_ingestd(work / "ingestd-data", work / "ingestd.log")
        servers.append(daemon)
        log(f"ingestd pid {daemon.pid} on port {daemon.port}")
        out, m, t0 = node_single_patch(daemon, source, node, f"{daemon.base_url}/files/")
        ready = ingestd_ready(daemon, out["url"], source, t0)
        cases["ingestd_single"] = case(
            "ingestd",
            "ingestd, 1 PATCH (tus-js-client)",
            source,
            out["seconds"],
            {**m, "wall_seconds": m["seconds"]},
            client=out["client"],
            **ready,
        )
        log(f"  ingestd single PATCH: {out['seconds']:.2f}s, ready {ready['ready_seconds']:.2f}s")
        url, m, t0 = parallel_uploads(daemon, source, args.parallel, concatenate=True)
        ready = ingestd_ready(daemon, url, source, t0)
        cases["ingestd_parallel"] = case(
            "ingestd",
            f"ingestd, {args.parallel} partials + final (httpx)",
            source,
            m["seconds"],
            m,
            **ready,
        )
        log(f"  ingestd {args.parallel}-way concat: {m['seconds']:.2f}s")
        result["ingestd_cpu_total_s"] = daemon.cpu_seconds()
        daemon.stop()

        if not args.skip_peer:
            store = work / "tus-store"
            peer = start_peer(store, work / "tus-peer.log", True, node)
            servers.append(peer)
            result["peer_health"] = peer.health
            log(f"tus peer pid {peer.pid} on port {peer.port}")
            out, m, _ = node_single_patch(peer, source, node, f"{peer.base_url}/files")
            [stored] = peer_stored(store, [out["url"]])
            ok = sha256_file(stored) == source.sha256
            stored.unlink()
            cases["peer_single"] = case(
                "peer",
                "peer, 1 PATCH (tus-js-client)",
                source,
                out["seconds"],
                {**m, "wall_seconds": m["seconds"]},
                client=out["client"],
                checks={"stored_sha256": ok},
            )
            log(f"  peer single PATCH: {out['seconds']:.2f}s")
            urls, m, _ = parallel_uploads(peer, source, args.parallel, concatenate=False)
            paths = peer_stored(store, urls)
            settle()
            joined = work / "peer-joined.bin"
            join_s = join_by_copy(paths, joined)
            ok = sha256_file(joined) == source.sha256
            cases["peer_parallel"] = case(
                "peer",
                f"peer, {args.parallel} uploads, not joined (httpx)",
                source,
                m["seconds"],
                m,
                checks={"joined_sha256": ok},
            )
            cases["peer_parallel_join"] = case(
                "peer",
                f"peer, {args.parallel} uploads + join by copy",
                source,
                m["seconds"] + join_s,
                {},
                join_seconds=join_s,
                checks={"joined_sha256": ok},
            )
            log(f"  peer {args.parallel}-way: {m['seconds']:.2f}s (+{join_s:.2f}s to join)")
            peer.stop()
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


def summarize(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    cases = result["cases"]
    disk = cases["disk"]["mib_s"]
    peers = {
        "single": cases.get("peer_single"),
        "parallel": cases.get("peer_parallel"),
        "parallel_join": cases.get("peer_parallel_join"),
    }
    ratios: dict[str, float | None] = {}
    for c in cases.values():
        c["vs_disk"] = c["mib_s"] / disk
    single, parallel = cases.get("ingestd_single"), cases.get("ingestd_parallel")
    if single and peers["single"]:
        ratios["single_vs_peer"] = single["mib_s"] / peers["single"]["mib_s"]
    if parallel and peers["parallel"]:
        ratios["parallel_vs_peer_unjoined"] = parallel["mib_s"] / peers["parallel"]["mib_s"]
        ratios["parallel_vs_peer_joined"] = parallel["mib_s"] / peers["parallel_join"]["mib_s"]
    for c in cases.values():
        c["vs_peer"] = None
    if single and peers["single"]:
        single["vs_peer"] = ratios["single_vs_peer"]
    if parallel and peers["parallel"]:
        parallel["vs_peer"] = ratios["parallel_vs_peer_unjoined"]

    print_table(
        f"tus upload of {args.size_mib} MiB, durability=fsync, 127.0.0.1",
        [
            "case",
            "MiB/s",
            "seconds",
            "ready s",
            "vs disk",
            "vs peer",
            "server CPU s",
            "server peak RSS MiB",
            "check",
        ],
        [
            [
                c["label"],
                c["mib_s"],
                c["seconds"],
                c.get("ready_seconds"),
                c["vs_disk"],
                c["vs_peer"],
                c.get("server_cpu_s"),
                c.get("server_peak_rss_mib"),
                "-" if c["kind"] == "disk" else ("OK" if c["ok"] else "FAIL"),
            ]
            for c in cases.values()
        ],
    )
    print("\nratios (MiB/s of ingestd over the peer's)")
    for name, value in ratios.items():
        print(f"  {name:<28} {value:.2f}x")
    print(
        "\n'ready s': the completion job has hashed, copied and processed the file. "
        "The peer fsyncs each file before its last answer; ingestd fsyncs every chunk."
    )
    if peers["parallel"]:
        print(
            "@tus/file-store has no concatenation: its parallel case is N separate uploads; "
            "'+ join by copy' adds copying them into one file (fsynced) in the bench."
        )
    return {"ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="random file (1024)")
    parser.add_argument("--parallel", type=int, default=5, help="ranges sent at once (5)")
    parser.add_argument("--disk-runs", type=int, default=3, help="disk probes, median (3)")
    parser.add_argument("--skip-peer", action="store_true", help="ingestd only")
    parser.add_argument("--json", metavar="PATH", help="results (bench/results/tus.json)")
    parser.add_argument(
        "--tmp-dir",
        metavar="DIR",
        help="parent of the work dir (default $INGESTD_BENCH_TMP, else the repo's parent)",
    )
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    if args.size_mib <= 0 or args.parallel < 2 or args.disk_runs <= 0:
        parser.error("--size-mib and --disk-runs must be positive, --parallel at least 2")
    result = run(args)
    summary = summarize(args, result)
    ok = all(c["ok"] for c in result["cases"].values())
    return finish(
        args.json,
        "tus",
        {
            "size_mib": args.size_mib,
            "parallel": args.parallel,
            "disk_runs": args.disk_runs,
            "durability": "fsync",
            "peer": not args.skip_peer,
        },
        {**result, **summary, "all_ok": ok},
        ok,
    )


if __name__ == "__main__":
    run_main(main, "tus")

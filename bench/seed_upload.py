"""Upload a random file through the seed API and compare with the disk's limit.

For each size (the given one, then a quarter of it) this:

1. writes a random source file into a temp dir (and fsyncs it);
2. measures the disk's sequential write+fsync limit: the same number of bytes
   written to a new file next to the daemon's data dir in 1 MiB writes, then
   fsynced (MiB/s = size / elapsed, fsync included);
3. starts a fresh `ingestd serve` with INGESTD_STORAGE_DURABILITY=fsync and
   waits for GET /healthz;
4. uploads the file: POST /api/upload/init, then every chunk as a multipart
   POST /api/upload/chunk from N worker threads (one httpx.Client each, the
   chunk read with os.pread per request), then POST /api/upload/complete/{id};
5. reads the daemon's peak RSS (VmHWM), checks the completed file's sha256
   against the source, stops the daemon with SIGTERM and deletes everything.

Usage: .venv/bin/python bench/seed_upload.py [--size-mib 1024] [--parallel 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import httpx
from _clients import SEED_REQUEST_TIMEOUT, ChunkSender
from _common import (
    MIB,
    ServerProcess,
    disk_write_limit,
    finish,
    log,
    make_source,
    make_tmp_dir,
    percentile,
    print_table,
    settle,
    sha256_file,
    start_ingestd,
)
from _procs import proc_cpu_seconds, proc_status_kib

RSS_TARGET_MIB = 250


def run_one(size: int, parallel: int, tmp_parent: str | None) -> dict[str, object]:
    work = make_tmp_dir(tmp_parent, "ingestd-seed-upload-")
    daemon: ServerProcess | None = None
    try:
        source = work / "source.bin"
        data_dir = work / "data"
        data_dir.mkdir()
        log(f"[{size // MIB} MiB] writing random source file in {work}")
        source_sha = make_source(source, size)

        if os.stat(work).st_dev != os.stat(data_dir).st_dev:
            raise RuntimeError("probe dir and data dir are on different filesystems")
        log(f"[{size // MIB} MiB] measuring sequential write+fsync")
        settle()
        disk = disk_write_limit(data_dir.parent, size)
        settle()

        daemon = start_ingestd(data_dir, work / "daemon.log")
        rss_start = proc_status_kib(daemon.pid, "VmRSS")
        log(f"[{size // MIB} MiB] daemon pid {daemon.pid} on port {daemon.port}, uploading")

        with httpx.Client(base_url=daemon.base_url, timeout=SEED_REQUEST_TIMEOUT) as client:
            t_start = time.perf_counter()
            cpu0 = proc_cpu_seconds(daemon.pid)
            self0 = _self_cpu()
            r = client.post(
                "/api/upload/init", json={"filename": "bench-source.bin", "totalSize": size}
            )
            r.raise_for_status()
            init = r.json()
            upload_id, chunk_size = init["uploadId"], int(init["chunkSize"])

            sender = ChunkSender(daemon.base_url, source, upload_id, chunk_size, size, parallel)
            upload_s = sender.run()
            hwm_after_chunks = proc_status_kib(daemon.pid, "VmHWM")
            cpu1 = proc_cpu_seconds(daemon.pid)
            self1 = _self_cpu()

            t_complete = time.perf_counter()
            r = client.post(f"/api/upload/complete/{upload_id}")
            t_end = time.perf_counter()
            if r.status_code != 200:
                raise RuntimeError(f"complete failed: HTTP {r.status_code}: {r.text[:500]}")
            done = r.json()
        complete_s = t_end - t_complete
        total_s = t_end - t_start

        hwm = proc_status_kib(daemon.pid, "VmHWM")
        cpu2 = proc_cpu_seconds(daemon.pid)
        rss_end = proc_status_kib(daemon.pid, "VmRSS")

        filepath = done.get("filepath", "")
        if filepath and Path(filepath).is_file():
            got_sha = sha256_file(filepath)
            verified = got_sha == source_sha
        else:
            got_sha, verified = None, False
            log(f"completed file {filepath!r} is not a readable path")
        stop_s = daemon.stop()

        lat = sender.latencies
        upload_mib_s = size / MIB / upload_s
        return {
            "size_bytes": size,
            "size_mib": size / MIB,
            "chunk_size": chunk_size,
            "chunks": sender.total,
            "parallel": parallel,
            "disk": disk,
            "disk_mib_s": disk["mib_s"],
            "upload_seconds": upload_s,
            "complete_seconds": complete_s,
            "total_seconds": total_s,
            "upload_mib_s": upload_mib_s,
            "total_mib_s": size / MIB / total_s,
            "upload_vs_disk": upload_mib_s / disk["mib_s"],
            "chunk_latency_ms": {
                "p50": _ms(percentile(lat, 50)),
                "p90": _ms(percentile(lat, 90)),
                "p99": _ms(percentile(lat, 99)),
                "max": _ms(max(lat) if lat else None),
            },
            "retries": sender.retries,
            # CPU seconds; the client runs on the same machine and competes for cores.
            "daemon_cpu_upload_s": _sub(cpu1, cpu0),
            "daemon_cpu_complete_s": _sub(cpu2, cpu1),
            "client_cpu_upload_s": self1 - self0,
            "daemon_pid": daemon.pid,
            "rss_start_mib": _mib(rss_start),
            "peak_rss_after_chunks_mib": _mib(hwm_after_chunks),
            "peak_rss_mib": _mib(hwm),
            "rss_end_mib": _mib(rss_end),
            "peak_rss_within_target": hwm is not None and hwm / 1024 <= RSS_TARGET_MIB,
            "shutdown_seconds": stop_s,
            "source_sha256": source_sha,
            "completed_sha256": got_sha,
            "sha256_ok": verified,
            "filepath": filepath,
            "file_type": done.get("metadata", {}).get("fileType"),
        }
    except BaseException:
        if daemon is not None:
            tail = daemon.log_tail()
            if tail:
                log("daemon log tail:\n" + tail)
        raise
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-mib", type=int, default=1024, help="file size in MiB (default 1024)"
    )
    parser.add_argument(
        "--parallel", type=int, default=5, help="parallel chunk uploads (default 5)"
    )
    parser.add_argument(
        "--small-divisor",
        type=int,
        default=4,
        help="also run size/N against a fresh daemon to check that peak RSS is flat "
        "in file size (0: skip; default 4)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="results file (default bench/results/seed_upload.json)"
    )
    parser.add_argument(
        "--tmp-dir",
        metavar="DIR",
        help="parent for the temp dir holding source file and data "
        "(default $INGESTD_BENCH_TMP, else the repo's parent dir)",
    )
    args = parser.parse_args(argv)
    if args.size_mib <= 0 or args.parallel <= 0:
        parser.error("--size-mib and --parallel must be positive")

    sizes = [args.size_mib * MIB]
    if args.small_divisor > 1 and args.size_mib // args.small_divisor > 0:
        sizes.append(args.size_mib // args.small_divisor * MIB)

    runs = []
    for size in sizes:
        runs.append(run_one(size, args.parallel, args.tmp_dir))

    print_table(
        f"seed API upload, {args.parallel} parallel chunk posts, durability=fsync",
        [
            "size MiB",
            "chunks",
            "disk MiB/s",
            "upload s",
            "upload MiB/s",
            "vs disk",
            "complete s",
            "total s",
            "total MiB/s",
            "p50 ms",
            "p99 ms",
            "peak RSS MiB",
            "sha256",
        ],
        [
            [
                r["size_mib"],
                r["chunks"],
                r["disk_mib_s"],
                r["upload_seconds"],
                r["upload_mib_s"],
                f"{r['upload_vs_disk']:.0%}",
                r["complete_seconds"],
                r["total_seconds"],
                r["total_mib_s"],
                r["chunk_latency_ms"]["p50"],
                r["chunk_latency_ms"]["p99"],
                r["peak_rss_mib"],
                "OK" if r["sha256_ok"] else "FAIL",
            ]
            for r in runs
        ],
    )
    peaks = [r["peak_rss_mib"] for r in runs]
    flat = None
    if len(runs) > 1 and all(p is not None for p in peaks):
        # "Flat" = the big file's peak is within 20% (or 16 MiB) of the small one's.
        flat = peaks[0] - peaks[1] <= max(16.0, 0.2 * peaks[1])
    print()
    for r in runs:
        print(
            f"{r['size_mib']:.0f} MiB: peak RSS {r['peak_rss_mib']:.1f} MiB "
            f"(start {r['rss_start_mib']:.1f}, after chunks {r['peak_rss_after_chunks_mib']:.1f}), "
            f"target <= {RSS_TARGET_MIB} MiB: {'OK' if r['peak_rss_within_target'] else 'OVER'}; "
            f"disk probe write {r['disk']['write_seconds']:.2f}s"
            f" + fsync {r['disk']['fsync_seconds']:.2f}s; "
            f"sha256 {'OK' if r['sha256_ok'] else 'FAIL'}"
        )
        if r["daemon_cpu_upload_s"] is not None:
            print(
                f"    CPU during the chunk phase ({r['upload_seconds']:.1f}s): "
                f"daemon {r['daemon_cpu_upload_s']:.1f}s "
                f"({r['daemon_cpu_upload_s'] / r['upload_seconds']:.2f} cores), "
                f"client {r['client_cpu_upload_s']:.1f}s "
                f"({r['client_cpu_upload_s'] / r['upload_seconds']:.2f} cores); "
                f"daemon during complete {r['daemon_cpu_complete_s']:.1f}s"
            )
    if flat is not None:
        print(
            f"peak RSS flat in file size: {'yes' if flat else 'NO'} "
            f"({' vs '.join(f'{p:.1f}' for p in peaks)} MiB)"
        )

    return finish(
        args.json,
        "seed_upload",
        {
            "size_mib": args.size_mib,
            "parallel": args.parallel,
            "small_divisor": args.small_divisor,
            "durability": "fsync",
            "rss_target_mib": RSS_TARGET_MIB,
        },
        {
            "runs": runs,
            "peak_rss_flat": flat,
            "all_sha256_ok": all(r["sha256_ok"] for r in runs),
        },
        all(r["sha256_ok"] for r in runs),
    )


if __name__ == "__main__":
    sys.exit(main())

"""Chunk puts through the store library, with and without group commit.

Each configuration gets a fresh store in its own temp dir: one session of
`chunks` chunks of `chunk-kib` KiB, then `threads` threads call
`store.put_chunk(session.id, index, data)` for distinct random chunks. We
report chunks/s, MiB/s, commits issued by the index writer during the puts,
and operations per commit. Directory fsyncs done by the writer are counted by
wrapping `ingestd.cas.localstore.fsync_dir` in this process (the store is not
modified).

Usage: .venv/bin/python bench/group_commit.py [--chunks 2000] [--threads 16] [--chunk-kib 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time

import ingestd.cas.localstore as cas_localstore
from _common import (
    MIB,
    finish,
    make_tmp_dir,
    percentile,
    print_table,
    settle,
)
from ingestd.cas import Store

CONFIGS = [
    # (durability, group_commit)
    ("fsync", True),
    ("fsync", False),
    ("none", True),
    ("none", False),
]


class DirFsyncCounter:
    """Counts and times the directory fsyncs the index writer issues."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self._orig = cas_localstore.fsync_dir

    def __enter__(self) -> DirFsyncCounter:
        def counted(path: str | os.PathLike[str]) -> None:
            t0 = time.perf_counter()
            try:
                self._orig(path)
            finally:
                # Only the single writer thread calls this; no lock needed.
                self.calls += 1
                self.seconds += time.perf_counter() - t0

        cas_localstore.fsync_dir = counted
        return self

    def __exit__(self, *exc: object) -> None:
        cas_localstore.fsync_dir = self._orig


def run_config(
    durability: str, group_commit: bool, chunks: list[bytes], threads: int, tmp_parent: str | None
) -> dict[str, object]:
    chunk_size = len(chunks[0])
    total_bytes = sum(len(c) for c in chunks)
    root = make_tmp_dir(tmp_parent, "ingestd-group-commit-")
    try:
        store = Store(
            root / "data", durability=durability, group_commit=group_commit, materialize="none"
        )
        try:
            session = store.create_session(
                filename="bench.bin", size=total_bytes, chunk_size=chunk_size
            )
            writer = store.index.writer
            commits0, ops0 = writer.commits, writer.ops

            barrier = threading.Barrier(threads + 1)
            errors: list[BaseException] = []
            latencies: list[list[float]] = [[] for _ in range(threads)]

            def worker(t: int) -> None:
                mine = latencies[t]
                barrier.wait()
                try:
                    for index in range(t, len(chunks), threads):
                        t0 = time.perf_counter()
                        ack = store.put_chunk(session.id, index, chunks[index])
                        mine.append(time.perf_counter() - t0)
                        if not ack.stored:
                            raise RuntimeError(f"chunk {index} was not newly stored")
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            pool = [
                threading.Thread(target=worker, args=(t,), name=f"put-{t}") for t in range(threads)
            ]
            for th in pool:
                th.start()
            with DirFsyncCounter() as dir_fsyncs:
                barrier.wait()
                t0 = time.perf_counter()
                for th in pool:
                    th.join()
                elapsed = time.perf_counter() - t0
            if errors:
                raise RuntimeError(f"{len(errors)} put_chunk calls failed; first: {errors[0]!r}")

            commits = writer.commits - commits0
            ops = writer.ops - ops0
            commits_total = writer.commits
            final = store.session(session.id)
            if final.received_chunks != len(chunks) or len(store.received(session.id)) != len(
                chunks
            ):
                raise RuntimeError(
                    f"session holds {final.received_chunks} chunks, expected {len(chunks)}"
                )
        finally:
            store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    lat = [x for per in latencies for x in per]
    return {
        "durability": durability,
        "group_commit": group_commit,
        "threads": threads,
        "chunks": len(chunks),
        "chunk_size": chunk_size,
        "seconds": elapsed,
        "chunks_per_s": len(chunks) / elapsed,
        "mib_s": total_bytes / MIB / elapsed,
        # Commits during the puts only; commits_total also counts create_session's.
        "commits": commits,
        "commits_total": commits_total,
        "ops": ops,
        "ops_per_commit": ops / commits if commits else None,
        "dir_fsyncs": dir_fsyncs.calls,
        "dir_fsyncs_per_commit": dir_fsyncs.calls / commits if commits else None,
        "dir_fsync_seconds": dir_fsyncs.seconds,
        "put_latency_ms": {
            "p50": _ms(percentile(lat, 50)),
            "p90": _ms(percentile(lat, 90)),
            "p99": _ms(percentile(lat, 99)),
            "max": _ms(max(lat) if lat else None),
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2000, help="chunks per run (default 2000)")
    parser.add_argument("--threads", type=int, default=16, help="writer threads (default 16)")
    parser.add_argument("--chunk-kib", type=int, default=64, help="chunk size in KiB (default 64)")
    parser.add_argument(
        "--json", metavar="PATH", help="results file (default bench/results/group_commit.json)"
    )
    parser.add_argument(
        "--tmp-dir",
        metavar="DIR",
        help="parent for the temp store dirs "
        "(default $INGESTD_BENCH_TMP, else the repo's parent dir)",
    )
    args = parser.parse_args(argv)
    if min(args.chunks, args.threads, args.chunk_kib) <= 0:
        parser.error("--chunks, --threads and --chunk-kib must be positive")

    chunk_size = args.chunk_kib << 10
    print(
        f"generating {args.chunks} random chunks of {args.chunk_kib} KiB",
        file=sys.stderr,
        flush=True,
    )
    chunks = [os.urandom(chunk_size) for _ in range(args.chunks)]

    runs = []
    for durability, grouped in CONFIGS:
        print(
            f"running durability={durability} group_commit={grouped}", file=sys.stderr, flush=True
        )
        settle()
        runs.append(run_config(durability, grouped, chunks, args.threads, args.tmp_dir))

    def find(durability: str, grouped: bool) -> dict[str, object]:
        return next(
            r for r in runs if r["durability"] == durability and r["group_commit"] == grouped
        )

    speedups = {
        d: find(d, True)["chunks_per_s"] / find(d, False)["chunks_per_s"] for d in ("fsync", "none")
    }

    print_table(
        f"store.put_chunk, {args.threads} threads, "
        f"{args.chunks} x {args.chunk_kib} KiB distinct chunks",
        [
            "durability",
            "group",
            "seconds",
            "chunks/s",
            "MiB/s",
            "commits",
            "ops/commit",
            "dir fsyncs",
            "dir fsync s",
            "p50 ms",
            "p99 ms",
        ],
        [
            [
                r["durability"],
                "on" if r["group_commit"] else "off",
                r["seconds"],
                r["chunks_per_s"],
                r["mib_s"],
                r["commits"],
                r["ops_per_commit"],
                r["dir_fsyncs"],
                r["dir_fsync_seconds"],
                r["put_latency_ms"]["p50"],
                r["put_latency_ms"]["p99"],
            ]
            for r in runs
        ],
    )
    print()
    print(f"group commit speedup, durability=fsync: {speedups['fsync']:.2f}x")
    print(f"group commit speedup, durability=none (reference): {speedups['none']:.2f}x")

    return finish(
        args.json,
        "group_commit",
        {"chunks": args.chunks, "threads": args.threads, "chunk_kib": args.chunk_kib},
        {
            "runs": runs,
            "speedup_fsync": speedups["fsync"],
            "speedup_none": speedups["none"],
        },
    )


if __name__ == "__main__":
    sys.exit(main())

"""Index benchmark (issue 22): the upload core on the LMDB index against the
same on the PostgreSQL index, in alternating pairs, and PostgreSQL's round
trips per chunk.

In-process, so that the index is what differs: a `cas.Store` with local packs
(durability fsync), `--uploads` uploads at once from as many threads, each of
`--chunks` chunks of `--chunk-kib` KiB sent as /v1 runs of 32 chunks
(`Store.receive_chunks`, what `PUT /v1/uploads/{id}/chunks?from=&count=`
does), then completed. PostgreSQL is Debian's, started here on a Unix
socket (tests/support/postgres.py, the tests' own harness), fsync on.
Round trips are counted where they are made (each statement `PgTxn` sends is
one), split into the chunk runs and the rest (create, complete).

Reported per round: chunks per second, process CPU seconds per 1,000
chunks, and (PostgreSQL) round trips per chunk and per upload's completion.

Usage: .venv/bin/python bench/index_backends.py [--uploads 5] [--chunks 256]
       [--chunk-kib 256] [--pairs 3] [--json PATH] [--tmp-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from _common import finish, log, make_tmp_dir, print_table, run_main, use_tests_harness

RUN = 32


class RoundTrips:
    """Counts the statements `PgTxn` sends, by the phase the caller names."""

    def __init__(self) -> None:
        self.by_phase: dict[str, int] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def phase(self, name: str) -> None:
        self._local.phase = name

    def install(self) -> None:
        from ingestd.cas import pgindex

        original = pgindex.PgTxn._execute
        counter = self

        def counted(txn, sql, params):
            phase = getattr(counter._local, "phase", "writer")
            with counter._lock:
                counter.by_phase[phase] = counter.by_phase.get(phase, 0) + 1
            return original(txn, sql, params)

        pgindex.PgTxn._execute = counted


def one_round(work: Path, index: dict[str, Any] | None, args, trips: RoundTrips | None) -> dict:
    from ingestd.cas import Store

    root = work / "data"
    shutil.rmtree(root, ignore_errors=True)
    chunk = args.chunk_kib << 10
    payloads = [os.urandom(chunk * args.chunks) for _ in range(args.uploads)]
    errors: list[BaseException] = []
    with Store(root, durability="fsync", materialize="none", index=index) as store:
        if trips is not None:
            trips.by_phase.clear()

        def upload(data: bytes) -> None:
            try:
                if trips is not None:
                    trips.phase("create")
                s = store.create_session(filename="x.bin", size=len(data), chunk_size=chunk)
                if trips is not None:
                    trips.phase("chunks")
                for first in range(0, args.chunks, RUN):
                    count = min(RUN, args.chunks - first)
                    run = store.receive_chunks(s.id, first, count)
                    try:
                        run.finish([data[first * chunk : (first + count) * chunk]])
                    finally:
                        run.abort()
                if trips is not None:
                    trips.phase("complete")
                store.complete(s.id)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=(p,)) for p in payloads]
        cpu0, t0 = time.process_time(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(3600)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        commits = store.index.writer.commits
    if errors:
        raise RuntimeError(f"an upload failed: {errors[0]!r}")
    chunks = args.uploads * args.chunks
    out: dict[str, Any] = {
        "seconds": seconds,
        "chunks_per_s": chunks / seconds,
        "mib_s": chunks * chunk / (1 << 20) / seconds,
        "cpu_s_per_1000_chunks": cpu / chunks * 1000,
        "commits": commits,
    }
    if trips is not None:
        by = dict(trips.by_phase)
        out["round_trips"] = by
        # The writer thread runs every write; its statements are the commits'.
        out["round_trips_per_chunk"] = (by.get("writer", 0) + by.get("chunks", 0)) / chunks
        out["round_trips_per_upload_outside_chunks"] = (
            by.get("create", 0) + by.get("complete", 0)
        ) / args.uploads
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--tmp-dir", metavar="DIR")
    args = parser.parse_args()
    started = time.monotonic()
    use_tests_harness()
    from support.postgres import find_bindir, start_postgres

    bindir = find_bindir()
    if bindir is None:
        log("no PostgreSQL server binaries: apt-get install postgresql")
        return 1
    work = make_tmp_dir(args.tmp_dir, "ingestd-bench-index-")
    server = start_postgres(bindir)
    trips = RoundTrips()
    trips.install()
    rounds = []
    try:
        for r in range(1, args.pairs + 1):
            log(f"[round {r}] LMDB")
            a = one_round(work, None, args, None)
            log(f"[round {r}] PostgreSQL")
            index = {"backend": "postgres", "postgres": {"dsn": server.dsn, "schema": f"b{r}"}}
            b = one_round(work, index, args, trips)
            rounds.append({"round": r, "lmdb": a, "postgres": b})
    finally:
        server.stop()
    rows = [
        (
            r["round"],
            f"{r['lmdb']['chunks_per_s']:.0f}",
            f"{r['postgres']['chunks_per_s']:.0f}",
            f"{r['postgres']['chunks_per_s'] / r['lmdb']['chunks_per_s']:.2f}",
            f"{r['lmdb']['cpu_s_per_1000_chunks']:.2f}",
            f"{r['postgres']['cpu_s_per_1000_chunks']:.2f}",
            f"{r['postgres']['round_trips_per_chunk']:.2f}",
            f"{r['postgres']['round_trips_per_upload_outside_chunks']:.0f}",
        )
        for r in rounds
    ]
    ratio = statistics.median(
        r["postgres"]["chunks_per_s"] / r["lmdb"]["chunks_per_s"] for r in rounds
    )
    per_chunk = statistics.median(r["postgres"]["round_trips_per_chunk"] for r in rounds)
    rows.append(("median", "", "", f"{ratio:.2f}", "", "", f"{per_chunk:.2f}", ""))
    print_table(
        f"upload core on LMDB vs PostgreSQL: {args.uploads} uploads at once, "
        f"{args.chunks} x {args.chunk_kib} KiB chunks each, runs of {RUN}",
        [
            "round",
            "LMDB chunks/s",
            "PG chunks/s",
            "PG/LMDB",
            "LMDB CPU s/1k chunks",
            "PG CPU s/1k chunks",
            "PG round trips/chunk",
            "PG round trips/upload (create+complete)",
        ],
        rows,
    )
    body = {"rounds": rounds, "median_ratio": ratio, "median_round_trips_per_chunk": per_chunk}
    return finish(args.json, "index_backends", vars(args), body, started=started)


if __name__ == "__main__":
    run_main(main, "index")

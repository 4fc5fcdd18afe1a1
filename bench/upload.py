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
     bench/seed_upload.py's ChunkSender (bench/_clients.py: --parallel threads
     posting multipart chunks) to a fresh daemon; MiB/s from init to the answer to
     complete, and the chunk posts' latency; the processing job it queues is waited
     for (its CPU counts, as the /v1 client waits for it too).

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
    fsyncing peer's; server CPU per GiB <= 1.5x the shipped peer's (issue 21;
    the completion's copy included); the gain of
    each workers = N > 1 over workers = 1 is reported (no target);
  - seed API: >= 0.8x the median /v1 fresh (workers = 1) MiB/s of the same run;
    p99 chunk latency (over all the run's seed chunks) <= 150 ms;
  - identical re-upload >= 20x faster than fresh (completion included);
  - `ingestd upload` of the file already accepted (the CLI, its chunk list
    known) within 2x `ingestd --version`, medians of 5 alternating pairs in
    step 7, with the daemon of 5 serving;
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
import sys
import time
from pathlib import Path

from _common import finish, run_main
from _profile import print_top_self
from _upload_report import summarize
from _upload_run import DURABLE_WRITERS, run


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
            summary["profile_top_self"][case["key"]] = print_top_self(raw, case["key"])
    ok = bool(result["cases"]) and all(c["ok"] for c in result["cases"])
    return finish(
        args.json,
        "upload",
        {
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
        {"run_seconds": time.monotonic() - t0, **result, **summary, "all_ok": ok},
        ok,
        started=t0,
    )


if __name__ == "__main__":
    run_main(main, "upload")

"""The chunk store's object layout, measured on this disk: what a GiB of fresh
1 MiB chunks costs as one file per chunk (today's ``objects/`` tree) and as
packs of many chunks, both made durable the way the store must before it
acknowledges (fdatasync of the bytes, fsync of the directories that gained a
name).

Layouts, alternating in each round (A B C A B C ...):

- ``object-per-chunk``: per chunk a temp file, write, fdatasync, link into
  ``objects/aa/bb/<hash>``, unlink the temp; the new directories fsynced once
  per batch of `batch-mib` MiB (group commit).
- ``pack``: chunks appended to a pack file of `pack-mib` MiB; one fdatasync
  per batch of `batch-mib` MiB and a directory fsync per new pack.
- ``one-file`` (the machine's limit): the bytes written to one file, one
  fdatasync per batch.

Each prints MiB/s, CPU seconds per GiB (this process: the syscalls' kernel
time included), files created per GiB and fsync-family calls per GiB;
medians over the rounds. The chunk count per GiB is also the number of PUTs
an object store would take per GiB with that layout (see docs/storage-layout.md).

Usage: .venv/bin/python bench/layout.py [--size-mib 1024] [--rounds 3]
       [--batch-mib 8] [--pack-mib 64] [--json PATH] [--tmp-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from _common import MIB, finish, make_tmp_dir, print_table, run_main, settle

CHUNK = MIB


class Counts:
    def __init__(self) -> None:
        self.files = 0
        self.syncs = 0

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)
        self.syncs += 1

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.syncs += 1


def chunks(size: int, seed: int) -> list[bytes]:
    # Distinct random chunks, made once per round (outside the timing).
    return [os.urandom(CHUNK) for _ in range(size // CHUNK)]


def object_per_chunk(root: Path, data: list[bytes], batch: int, counts: Counts) -> None:
    objects, tmp = root / "objects", root / "tmp"
    objects.mkdir()
    tmp.mkdir()
    dirty: set[Path] = set()
    pending = 0
    for i, chunk in enumerate(data):
        digest = blake3.blake3(chunk).hexdigest()
        final = objects / digest[:2] / digest[2:4] / digest
        part = tmp / f"{i}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, chunk)
        counts.fdatasync(fd)
        os.close(fd)
        if not final.parent.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            dirty |= {final.parent.parent, objects}
        os.link(part, final)
        os.unlink(part)
        counts.files += 1
        dirty.add(final.parent)
        pending += len(chunk)
        if pending >= batch:
            for d in sorted(dirty):
                counts.fsync_dir(d)
            dirty.clear()
            pending = 0
    for d in sorted(dirty):
        counts.fsync_dir(d)


def pack(root: Path, data: list[bytes], batch: int, pack_size: int, counts: Counts) -> None:
    packs = root / "packs"
    packs.mkdir()
    fd, written, pending, number = -1, 0, 0, 0
    for chunk in data:
        blake3.blake3(chunk).hexdigest()  # the hash each layout computes
        if fd < 0 or written >= pack_size:
            if fd >= 0:
                counts.fdatasync(fd)
                os.close(fd)
            fd = os.open(packs / f"{number:08d}.pack", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            counts.files += 1
            counts.fsync_dir(packs)
            number, written = number + 1, 0
        os.write(fd, chunk)
        written += len(chunk)
        pending += len(chunk)
        if pending >= batch:
            counts.fdatasync(fd)
            pending = 0
    if fd >= 0:
        counts.fdatasync(fd)
        os.close(fd)


def one_file(root: Path, data: list[bytes], batch: int, counts: Counts) -> None:
    fd = os.open(root / "one.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    counts.files += 1
    pending = 0
    for chunk in data:
        blake3.blake3(chunk).hexdigest()
        os.write(fd, chunk)
        pending += len(chunk)
        if pending >= batch:
            counts.fdatasync(fd)
            pending = 0
    counts.fdatasync(fd)
    os.close(fd)


def measure(name: str, work: Callable[[Path, Counts], None], base: Path, size: int) -> dict:
    root = base / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    settle()
    counts = Counts()
    cpu0, t0 = time.process_time(), time.perf_counter()
    work(root, counts)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    gib = size / (1 << 30)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "layout": name,
        "seconds": seconds,
        "mib_s": size / MIB / seconds,
        "cpu_s_per_gib": cpu / gib,
        "files_per_gib": counts.files / gib,
        "syncs_per_gib": counts.syncs / gib,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-mib", type=int, default=8, help="bytes per durability batch")
    ap.add_argument("--pack-mib", type=int, default=64, help="pack size")
    ap.add_argument("--json", help="results file (default bench/results/layout.json)")
    ap.add_argument("--tmp-dir", help="parent of the temp dir (default: the repo's parent)")
    args = ap.parse_args()
    size, batch = args.size_mib * MIB, args.batch_mib * MIB
    started = time.monotonic()
    base = make_tmp_dir(args.tmp_dir, "ingestd-layout-")
    layouts: dict[str, Callable[[Path, list[bytes], Counts], None]] = {
        "object-per-chunk": lambda r, d, c: object_per_chunk(r, d, batch, c),
        "pack": lambda r, d, c: pack(r, d, batch, args.pack_mib * MIB, c),
        "one-file": lambda r, d, c: one_file(r, d, batch, c),
    }
    runs: list[dict] = []
    try:
        for round_ in range(args.rounds):
            data = chunks(size, round_)
            for name, layout in layouts.items():
                run = measure(name, lambda r, c, f=layout, d=data: f(r, d, c), base, size)
                runs.append({"round": round_ + 1, **run})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_table(
        "every run, in order",
        ["round", "layout", "MiB/s", "CPU s/GiB", "files/GiB", "fsyncs/GiB"],
        [
            [
                r["round"],
                r["layout"],
                r["mib_s"],
                r["cpu_s_per_gib"],
                r["files_per_gib"],
                r["syncs_per_gib"],
            ]
            for r in runs
        ],
    )
    medians = []
    for name in layouts:
        mine = [r for r in runs if r["layout"] == name]
        medians.append(
            {
                "layout": name,
                **{
                    key: statistics.median(r[key] for r in mine)
                    for key in ("mib_s", "cpu_s_per_gib", "files_per_gib", "syncs_per_gib")
                },
            }
        )
    limit = next(m["mib_s"] for m in medians if m["layout"] == "one-file")
    print_table(
        f"medians over {args.rounds} rounds ({args.size_mib} MiB of 1 MiB chunks, "
        f"durable every {args.batch_mib} MiB, packs of {args.pack_mib} MiB)",
        ["layout", "MiB/s", "x one-file", "CPU s/GiB", "files/GiB", "fsyncs/GiB"],
        [
            [
                m["layout"],
                m["mib_s"],
                m["mib_s"] / limit,
                m["cpu_s_per_gib"],
                m["files_per_gib"],
                m["syncs_per_gib"],
            ]
            for m in medians
        ],
    )
    params = vars(args)
    return finish(args.json, "layout", params, {"runs": runs, "medians": medians}, started=started)


if __name__ == "__main__":
    run_main(main, "layout")

"""The materialised copy, measured on this disk: what writing a completed file
out of a pack costs, the way completion does it (every byte hashed on the way).

Ways, alternating in each round (A B A B ...), from one pack written first:

- ``read-write``: pread a block, hash it, write it to the copy (today's
  `cas.materialize`); fsync at the end.
- ``copy_file_range``: hash the block read with pread, and have the kernel
  copy the same range into the copy (no user-space write); fsync at the end.
- ``reflink``: FICLONERANGE, sharing the pack's blocks (written once) — only
  where the filesystem supports it; the table says whether it did.

Prints MiB/s and CPU seconds per GiB (kernel time included); medians.

Usage: .venv/bin/python bench/copy_out.py [--size-mib 1024] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import time
from pathlib import Path

import blake3
from _common import MIB, finish, make_tmp_dir, print_table, run_main, settle

BLOCK = 8 * MIB
FICLONERANGE = 0x4020940D


def make_pack(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // BLOCK):
            f.write(os.urandom(BLOCK))
        f.flush()
        os.fsync(f.fileno())


def _hash_and_copy(src: int, size: int, copy_block) -> None:
    """Read and hash every block, as completion does; `copy_block(view, offset)` copies it."""
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    hasher = blake3.blake3()
    for offset in range(0, size, BLOCK):
        n = os.preadv(src, [view], offset)
        hasher.update(view[:n])
        copy_block(view[:n], offset)


def read_write(src: int, dst: int, size: int) -> None:
    def write(block: memoryview, offset: int) -> None:
        while block:
            block = block[os.write(dst, block) :]

    _hash_and_copy(src, size, write)


def copy_range(src: int, dst: int, size: int) -> None:
    def copy(block: memoryview, offset: int) -> None:
        done = 0
        while done < len(block):
            n = len(block) - done
            done += os.copy_file_range(src, dst, n, offset + done, offset + done)

    _hash_and_copy(src, size, copy)


def reflink(src: int, dst: int, size: int) -> None:
    import struct

    fcntl.ioctl(dst, FICLONERANGE, struct.pack("qQQQ", src, 0, size, 0))


WAYS = {"read-write": read_write, "copy_file_range": copy_range, "reflink": reflink}


def measure(way: str, pack: Path, out: Path, size: int) -> dict[str, object]:
    settle()
    src = os.open(pack, os.O_RDONLY)
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0, c0 = time.monotonic(), os.times()
    try:
        WAYS[way](src, dst, size)
        os.fsync(dst)
        supported = True
    except OSError:
        supported = False
    seconds = time.monotonic() - t0
    c1 = os.times()
    os.close(src)
    os.close(dst)
    out.unlink()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    gib = size / (1 << 30)
    return {
        "way": way,
        "supported": supported,
        "mib_s": size / MIB / seconds if supported else None,
        "cpu_s_per_gib": cpu / gib if supported else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="results file (default bench/results/copy_out.json)")
    ap.add_argument("--tmp-dir", help="parent of the temp dir (default: the repo's parent)")
    args = ap.parse_args()
    size = args.size_mib * MIB
    started = time.monotonic()
    base = make_tmp_dir(args.tmp_dir, "ingestd-copy-")
    runs = []
    try:
        pack = base / "pack"
        make_pack(pack, size)
        for round_ in range(args.rounds):
            for way in WAYS:
                runs.append({"round": round_ + 1, **measure(way, pack, base / "copy", size)})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    medians = []
    for way in WAYS:
        mine = [r for r in runs if r["way"] == way and r["supported"]]
        medians.append(
            {
                "way": way,
                "supported": bool(mine),
                "mib_s": statistics.median(r["mib_s"] for r in mine) if mine else None,
                "cpu_s_per_gib": statistics.median(r["cpu_s_per_gib"] for r in mine)
                if mine
                else None,
            }
        )
    print_table(
        f"medians over {args.rounds} rounds (a {args.size_mib} MiB copy out of a pack, hashed)",
        ["way", "supported", "MiB/s", "CPU s/GiB"],
        [[m["way"], m["supported"], m["mib_s"], m["cpu_s_per_gib"]] for m in medians],
    )
    return finish(
        args.json, "copy_out", vars(args), {"runs": runs, "medians": medians}, started=started
    )


if __name__ == "__main__":
    run_main(main, "copy_out")

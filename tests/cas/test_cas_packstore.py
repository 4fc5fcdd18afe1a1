"""What is particular to the pack layout (the conformance suite covers the interface)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import blake3
import pytest
from ingestd.cas import LocalChunkStore, LocalPackStore
from ingestd.cas.chunkstore import Lane

pytestmark = pytest.mark.unit

KiB = 1024


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def put(store: LocalPackStore, data: bytes, lane: object | None = None):
    writer = store.writer(lane=lane)
    writer.write(data)
    return writer.commit()


def pack_files(root: Path) -> list[Path]:
    return sorted((root / "packs").glob("??/*.pack"))


def test_a_lane_keeps_its_chunks_together_while_another_writes(tmp_path):
    store = LocalPackStore(tmp_path)
    run, other = Lane(), Lane()
    ours = []
    for i in range(4):
        # Two requests' chunks interleave in time; each request's stay in order.
        ours.append(put(store, blob(i, 10 * KiB), run))
        put(store, blob(100 + i, 7 * KiB), other)
    store.sync(ours)
    extents = [store.extent(p.hash) for p in ours]
    assert len({path for path, _, _ in extents}) == 1
    assert [offset for _, offset, _ in extents] == [i * 10 * KiB for i in range(4)]
    store.close()


def test_packs_close_when_full_and_every_chunk_reads_back(tmp_path):
    store = LocalPackStore(tmp_path, pack_bytes=64 * KiB)
    datas = [blob(i, 20 * KiB) for i in range(10)]
    lane = Lane()
    puts = [put(store, d, lane) for d in datas]
    store.sync(puts)
    packs = pack_files(tmp_path)
    # 20 KiB chunks: a pack takes four (reaching 64 KiB), then the next opens.
    assert [p.stat().st_size for p in packs if p.stat().st_size == 80 * KiB] != []
    assert sum(p.stat().st_size for p in packs) == 200 * KiB
    assert len(packs) == 3
    for d in datas:
        assert store.read(b3(d)) == d
    store.close()


def test_bytes_already_stored_and_aborted_bytes_are_cut_off_the_pack(tmp_path):
    store = LocalPackStore(tmp_path)
    data = blob(1, 30 * KiB)
    first = put(store, data)
    store.sync([first])
    (pack,) = pack_files(tmp_path)
    again = put(store, data)
    assert again.existed and again.size == len(data)
    aborted = store.writer()
    aborted.write(blob(2, 50 * KiB))
    aborted.abort()
    assert pack.stat().st_size == len(data)
    store.sync([again])
    assert store.read(first.hash) == data
    store.close()


def test_another_process_sees_a_chunk_once_it_is_synced(tmp_path):
    writer = LocalPackStore(tmp_path, worker="a")
    reader = LocalPackStore(tmp_path, readonly=True)
    data = blob(3, 9 * KiB)
    committed = put(writer, data)
    assert writer.exists(committed.hash)  # this process sees it at once
    assert not reader.exists(committed.hash)  # nothing durable names it yet
    writer.sync([committed])
    assert reader.exists(committed.hash) and reader.read(committed.hash) == data
    reader.close()
    writer.close()


def test_two_writers_of_the_same_bytes_leave_one_location(tmp_path):
    a = LocalPackStore(tmp_path, worker="a")
    b = LocalPackStore(tmp_path, worker="b")
    data = blob(4, 12 * KiB)
    pa, pb = put(a, data), put(b, data)
    assert not pa.existed and not pb.existed  # neither knew of the other
    a.sync([pa])
    b.sync([pb])
    assert a.extent(pa.hash) == b.extent(pb.hash)
    assert b.read(pb.hash) == data
    a.close()
    b.close()


def test_an_emptied_pack_goes_but_never_from_under_its_writer(tmp_path):
    store = LocalPackStore(tmp_path, pack_bytes=16 * KiB)
    full = put(store, blob(5, 20 * KiB))  # fills its pack: closed once recorded
    store.sync([full])
    open_one = put(store, blob(6, 4 * KiB))  # a pack still open for more
    store.sync([open_one])
    assert len(pack_files(tmp_path)) == 2
    store.delete(full.hash)
    store.delete(open_one.hash)
    remaining = pack_files(tmp_path)
    assert len(remaining) == 1  # the open pack is held by its writer
    assert store.extent(open_one.hash) is None
    # Another process's sweep may not take it either, while it is held.
    other = LocalPackStore(tmp_path, worker="b")
    assert other.sweep(grace=0, now=time.time() + 1) == (0, 0)
    store.close()  # the writer lets go
    assert other.sweep(grace=0, now=time.time() + 1) == (1, 4 * KiB)
    assert pack_files(tmp_path) == []
    other.close()


def test_the_older_layout_stays_readable_and_deletable(tmp_path):
    old = LocalChunkStore(tmp_path)
    data = blob(7, 5 * KiB)
    legacy = old.put(data)
    old.sync([legacy])
    old.close()
    store = LocalPackStore(tmp_path)
    assert store.exists(legacy.hash) and store.read(legacy.hash) == data
    path, offset, length = store.extent(legacy.hash)  # its own file, not a pack
    assert (path.parent.parent.parent.name, offset, length) == ("objects", 0, len(data))
    assert set(store.iter_hashes()) == {legacy.hash}
    again = put(store, data)
    assert again.existed and pack_files(tmp_path)[0].stat().st_size == 0
    new = put(store, blob(8, 3 * KiB))
    store.sync([again, new])
    assert set(store.iter_hashes()) == {legacy.hash, new.hash}
    store.delete(legacy.hash)
    assert not store.exists(legacy.hash)
    assert not (tmp_path / "objects" / legacy.hash[:2] / legacy.hash[2:4] / legacy.hash).exists()
    store.close()


def test_a_killed_writer_keeps_what_it_synced_and_nothing_else(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, random, sys
        from ingestd.cas import LocalPackStore
        store = LocalPackStore({str(tmp_path)!r})
        def put(seed, size):
            w = store.writer()
            w.write(random.Random(seed).randbytes(size))
            return w.commit()
        store.sync([put(1, 40_000), put(2, 50_000)])
        put(3, 60_000)  # committed, never synced
        w = store.writer()
        w.write(b"half a chunk")
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        os.kill(os.getpid(), 9)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9 and done.stdout == "ready\n", done.stderr
    store = LocalPackStore(tmp_path)
    kept = {b3(blob(1, 40_000)), b3(blob(2, 50_000))}
    assert set(store.iter_hashes()) == kept
    for digest in kept:
        assert store.verify(digest)
    assert not store.exists(b3(blob(3, 60_000)))
    # The unrecorded tail is only unnamed bytes past the last recorded chunk.
    (pack,) = pack_files(tmp_path)
    assert pack.stat().st_size >= 90_000
    store.close()


def test_chunks_of_no_bytes_need_no_pack(tmp_path):
    store = LocalPackStore(tmp_path)
    empty = store.put(b"")
    store.sync([empty])
    assert store.exists(empty.hash) and store.read(empty.hash) == b""
    assert pack_files(tmp_path) == []
    store.close()


def test_a_pack_that_lost_its_bytes_reads_as_missing(tmp_path):
    store = LocalPackStore(tmp_path)
    data = blob(9, 8 * KiB)
    p = put(store, data)
    store.sync([p])
    path, offset, length = store.extent(p.hash)
    os.truncate(path, offset + length - 1)
    assert not store.exists(p.hash)
    assert not store.verify(p.hash)
    store.close()

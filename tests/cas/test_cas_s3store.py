"""What is particular to packs in S3 (the conformance suite covers the
interface), against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import blake3
import obstore
import pytest
from ingestd.cas.chunkstore import Lane
from ingestd.cas.errors import CorruptObject
from ingestd.cas.s3store import S3PackStore, s3_client
from support.seaweedfs import unique_prefix

pytestmark = pytest.mark.unit

KiB = 1024


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def bucket(seaweedfs):
    return s3_client(**seaweedfs.settings)


def listing(client, prefix: str) -> dict[str, int]:
    return {m["path"]: m["size"] for batch in obstore.list(client, prefix=prefix) for m in batch}


def put(store: S3PackStore, data: bytes, lane: object | None = None):
    writer = store.writer(lane=lane)
    writer.write(data)
    return writer.commit()


def test_a_lanes_sync_is_one_object_and_its_spool_goes(tmp_path: Path, bucket, seaweedfs):
    prefix = unique_prefix()
    store = S3PackStore(tmp_path, bucket, prefix=prefix)
    run, other = Lane(), Lane()
    ours = [put(store, blob(i, 100 * KiB), run) for i in range(4)]
    theirs = [put(store, blob(10 + i, 50 * KiB), other) for i in range(2)]
    assert listing(bucket, prefix) == {}  # nothing is in S3 before the sync
    store.sync(ours + theirs)
    objects = listing(bucket, f"{prefix}/packs/")
    assert sorted(objects.values()) == [100 * KiB, 400 * KiB]  # one object per lane
    # Both spools are done with: no new chunk goes into them, and they are gone.
    assert list((tmp_path / "packs").glob("??/*.pack")) == []
    more = put(store, blob(20, 10 * KiB), run)
    store.sync([more])
    assert len(listing(bucket, f"{prefix}/packs/")) == 3
    for p, seed, size in [(ours[2], 2, 100 * KiB), (more, 20, 10 * KiB)]:
        assert store.read(p.hash) == blob(seed, size)
    # Another process (a read-only command) reads what the index records.
    reader = S3PackStore(tmp_path, s3_client(**seaweedfs.settings), prefix=prefix, readonly=True)
    assert reader.read(theirs[1].hash, 1000, 5) == blob(11, 50 * KiB)[1000:1005]
    reader.close()
    store.close()


def test_an_object_goes_when_its_last_chunk_does(tmp_path: Path, bucket):
    prefix = unique_prefix()
    store = S3PackStore(tmp_path, bucket, prefix=prefix)
    lane = Lane()
    puts = [put(store, blob(30 + i, 20 * KiB), lane) for i in range(3)]
    store.sync(puts)
    assert len(listing(bucket, f"{prefix}/packs/")) == 1
    store.delete(puts[0].hash)
    store.delete(puts[1].hash)
    assert len(listing(bucket, f"{prefix}/packs/")) == 1  # one chunk still lives in it
    assert store.read(puts[2].hash) == blob(32, 20 * KiB)
    store.delete(puts[2].hash)
    assert listing(bucket, f"{prefix}/packs/") == {}
    with pytest.raises(CorruptObject):
        store.read(puts[2].hash)
    store.close()


def test_the_sweep_deletes_only_what_no_location_names_after_the_grace(tmp_path: Path, bucket):
    """An object PUT by a process that died before recording it is an orphan:
    the listing proposes it, the index decides, the grace period protects a
    PUT whose record is on its way."""
    prefix = unique_prefix()
    store = S3PackStore(tmp_path, bucket, prefix=prefix)
    live = put(store, blob(40, 30 * KiB), Lane())
    store.sync([live])
    orphan = f"{prefix}/packs/ab/ab" + os.urandom(15).hex()
    obstore.put(bucket, orphan, blob(41, 7 * KiB), mode="create")
    foreign = f"{prefix}/packs/not-a-pack-of-ours"
    obstore.put(bucket, foreign, b"x")
    assert store.sweep(grace=3600, now=time.time()) == (0, 0)
    assert store.sweep(grace=0, now=time.time() + 5) == (1, 7 * KiB)
    left = listing(bucket, f"{prefix}/packs/")
    assert orphan not in left and foreign in left and len(left) == 2
    assert store.read(live.hash) == blob(40, 30 * KiB)
    store.close()


def test_a_dead_writers_spool_is_swept_and_a_live_ones_is_not(tmp_path: Path, bucket):
    prefix = unique_prefix()
    writer_store = S3PackStore(tmp_path, bucket, prefix=prefix)
    unsynced = put(writer_store, blob(50, 12 * KiB), Lane())  # committed, never synced
    (held,) = list((tmp_path / "packs").glob("??/*.pack"))
    # What a SIGKILLed writer leaves: a spool that no process holds.
    leftover = tmp_path / "packs" / "cd" / f"cd{os.urandom(15).hex()}.pack"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(blob(51, 9 * KiB))
    other = S3PackStore(tmp_path, bucket, prefix=prefix, worker="b")
    assert other.sweep(grace=3600, now=time.time()) == (0, 0)
    assert other.sweep(grace=0, now=time.time() + 5) == (1, 9 * KiB)
    assert held.exists() and not leftover.exists()
    writer_store.close()  # the writer goes, and its spool with it
    assert not held.exists()
    assert not other.exists(unsynced.hash)
    assert listing(bucket, prefix) == {}
    other.close()


def test_identical_content_from_two_stores_is_one_location(tmp_path: Path, bucket):
    prefix = unique_prefix()
    a = S3PackStore(tmp_path, bucket, prefix=prefix)
    b = S3PackStore(tmp_path, bucket, prefix=prefix, worker="b")
    data = blob(60, 64 * KiB)
    pa, pb = put(a, data, Lane()), put(b, data, Lane())
    a.sync([pa])
    b.sync([pb])
    assert a.extent(pa.hash) is None  # nothing local to copy from
    assert a.read(pa.hash) == b.read(pb.hash) == data
    assert blake3.blake3(a.read(pa.hash)).hexdigest() == pa.hash
    a.close()
    b.close()


def test_a_sync_never_closes_a_spool_under_its_writer(tmp_path: Path, bucket):
    """A sync puts a spool's chunks in S3 while the same lane is writing its
    next chunk there: the spool stays open until that writer is done (found
    by bench/crash.py --s3: the writer wrote to a closed descriptor)."""
    store = S3PackStore(tmp_path, bucket, prefix=unique_prefix())
    lane = Lane()
    first = put(store, blob(70, 40 * KiB), lane)
    second = store.writer(lane=lane)
    second.write(blob(71, 40 * KiB)[: 20 * KiB])  # in the same spool as `first`
    store.sync([first])
    second.write(blob(71, 40 * KiB)[20 * KiB :])
    done = second.commit()
    store.sync([done])
    assert store.read(done.hash) == blob(71, 40 * KiB)
    assert store.read(first.hash) == blob(70, 40 * KiB)
    assert list((tmp_path / "packs").glob("??/*.pack")) == []
    store.close()

"""Conformance suite for `ChunkStore` implementations (after restic's backend tests).

Every test except the clearly marked local-only one uses the public interface
only, so that a new implementation (an S3-compatible store, say) can be added
to the `chunk_store` fixture's params and pass the suite unchanged.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import random
import threading
import time
from pathlib import Path

import blake3
import pytest
from ingestd.cas.chunkstore import ChunkStore, PutResult
from ingestd.cas.errors import ChunkHashMismatch, CorruptObject
from ingestd.cas.localstore import LocalChunkStore
from ingestd.cas.materialize import COPY_BLOCK, materialize
from ingestd.cas.memstore import MemoryChunkStore
from ingestd.cas.packstore import LocalPackStore
from ingestd.cas.s3store import S3PackStore, s3_client
from support.seaweedfs import unique_prefix

pytestmark = pytest.mark.unit


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(params=["packs", "local", "memory", "s3", "s3+postgres", "radosgw"])
def chunk_store(request, tmp_path):
    if request.param == "packs":
        store: ChunkStore = LocalPackStore(tmp_path, durable=True)
    elif request.param.startswith("s3") or request.param == "radosgw":
        # "s3": SeaweedFS; "s3+postgres": the pack index in PostgreSQL, as with
        # index.backend = "postgres"; "radosgw": Ceph's S3 gateway.
        server = request.getfixturevalue("radosgw" if request.param == "radosgw" else "seaweedfs")
        pack_index = None
        if request.param == "s3+postgres":
            pack_index = request.getfixturevalue("pg_index")["postgres"]
        store = S3PackStore(
            tmp_path,
            s3_client(**server.settings),
            prefix=unique_prefix(),
            pack_index=pack_index,
        )
    elif request.param == "local":
        store = LocalChunkStore(tmp_path, durable=True)
    else:
        store = MemoryChunkStore()
    yield store
    store.close()


def assert_tmp_empty(store: ChunkStore, tmp_path: Path) -> None:
    """Implementation-specific leftovers: only the local store has a temp directory."""
    if isinstance(store, LocalChunkStore):
        assert list((tmp_path / "tmp").iterdir()) == []


def assert_absent(store: ChunkStore, tmp_path: Path, digest: str) -> None:
    assert not store.exists(digest)
    assert store.size(digest) is None
    assert digest not in set(store.iter_hashes())
    assert_tmp_empty(store, tmp_path)


# -- put, read, identity ----------------------------------------------------------


def test_put_then_read_back(chunk_store, tmp_path):
    data = blob(1, 100_003)
    res = chunk_store.put(data)
    assert isinstance(res, PutResult)
    assert (res.hash, res.size, res.existed) == (b3(data), len(data), False)
    assert chunk_store.exists(res.hash)
    assert chunk_store.size(res.hash) == len(data)
    assert res.hash in set(chunk_store.iter_hashes())
    assert b3(chunk_store.read(res.hash)) == res.hash
    assert chunk_store.read(res.hash) == data
    assert_tmp_empty(chunk_store, tmp_path)


def test_streaming_writer_matches_one_shot(chunk_store, tmp_path):
    data = blob(2, 300_000)
    rng = random.Random(2)
    w = chunk_store.writer()
    pos, kinds = 0, [bytes, bytearray, memoryview]
    while pos < len(data):
        n = rng.choice([0, 1, 7, 4095, 4097, 65_537, rng.randrange(1, 20_000)])
        piece = data[pos : pos + n]
        w.write(kinds[rng.randrange(3)](piece))
        pos += len(piece)
        assert w.size == pos
    w.write(b"")
    w.write(memoryview(b""))
    assert w.hexdigest() == b3(data)
    assert w.size == len(data)
    res = w.commit()
    assert (res.hash, res.size, res.existed) == (b3(data), len(data), False)
    assert chunk_store.read(res.hash) == data
    assert chunk_store.put(data).existed
    assert_tmp_empty(chunk_store, tmp_path)


def test_reput_existing_refreshes_age_and_rewrites_nothing(chunk_store, tmp_path):
    data = blob(3, 5000)
    first = chunk_store.put(data)
    time.sleep(0.3)
    assert chunk_store.age(first.hash, time.time()) >= 0.25
    again = chunk_store.put(data, expected_hash=first.hash)
    assert (again.hash, again.size, again.existed) == (first.hash, len(data), True)
    assert chunk_store.age(first.hash, time.time()) < 0.25
    assert chunk_store.read(first.hash) == data
    assert list(chunk_store.iter_hashes()).count(first.hash) == 1
    assert_tmp_empty(chunk_store, tmp_path)


def test_expected_hash_mismatch_refused_and_nothing_kept(chunk_store, tmp_path):
    data, other = blob(4, 10_000), blob(5, 10_000)
    with pytest.raises(ChunkHashMismatch):
        chunk_store.put(data, expected_hash=b3(other))
    assert_absent(chunk_store, tmp_path, b3(data))
    assert_absent(chunk_store, tmp_path, b3(other))
    # The same through an explicit writer.
    w = chunk_store.writer(b3(other))
    w.write(data)
    with pytest.raises(ChunkHashMismatch):
        w.commit()
    w.abort()  # harmless after a refused commit
    assert_absent(chunk_store, tmp_path, b3(data))
    assert list(chunk_store.iter_hashes()) == []
    # The right expected hash is accepted.
    res = chunk_store.put(data, expected_hash=b3(data))
    assert (res.hash, res.existed) == (b3(data), False)
    assert chunk_store.read(res.hash) == data


def test_aborted_writer_leaves_nothing(chunk_store, tmp_path):
    data = blob(6, 50_000)
    w = chunk_store.writer(b3(data))
    w.write(data[:20_000])
    w.abort()
    w.abort()  # twice is harmless
    assert_absent(chunk_store, tmp_path, b3(data))
    assert_absent(chunk_store, tmp_path, b3(data[:20_000]))
    assert list(chunk_store.iter_hashes()) == []


def test_dropped_writer_leaves_no_object(chunk_store):
    data = blob(7, 50_000)

    def upload() -> None:
        w = chunk_store.writer()
        w.write(data[:30_000])
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        upload()
    gc.collect()
    for digest in (b3(data), b3(data[:30_000])):
        assert not chunk_store.exists(digest)
        assert chunk_store.size(digest) is None
    assert list(chunk_store.iter_hashes()) == []


def test_put_failing_midway_leaves_nothing(chunk_store, tmp_path):
    # `put` opens a writer, then the write fails (not bytes-like): it must abort.
    with pytest.raises(TypeError):
        chunk_store.put(object())
    assert list(chunk_store.iter_hashes()) == []
    assert_tmp_empty(chunk_store, tmp_path)


# -- reads ------------------------------------------------------------------------


def test_ranged_reads(chunk_store):
    data = blob(8, 70_001)
    digest = chunk_store.put(data).hash
    size = len(data)
    rng = random.Random(8)
    cases = [(0, 0), (0, size), (size, 0), (size, 10), (size + 5, 10), (size - 3, 10), (1, size)]
    cases += [(rng.randrange(size + 1), rng.randrange(20_000)) for _ in range(40)]
    with chunk_store.open(digest) as handle:
        for offset, length in cases:
            buf = bytearray(length)
            n = handle.readinto(memoryview(buf), offset)
            want = data[offset : offset + length]
            assert n == len(want), (offset, length)
            assert bytes(buf[:n]) == want
            assert chunk_store.read(digest, offset, length) == want
    assert chunk_store.read(digest) == data
    assert chunk_store.read(digest, 10) == data[10:]
    assert chunk_store.read(digest, size) == b""
    assert chunk_store.read(digest, size + 100) == b""


def test_open_missing_raises(chunk_store):
    missing = b3(b"never stored")
    with pytest.raises(CorruptObject):
        chunk_store.open(missing)
    with pytest.raises(CorruptObject):
        chunk_store.read(missing)


def test_empty_object(chunk_store, tmp_path):
    res = chunk_store.put(b"")
    assert (res.hash, res.size, res.existed) == (b3(b""), 0, False)
    assert chunk_store.exists(res.hash)
    assert chunk_store.size(res.hash) == 0
    assert chunk_store.read(res.hash) == b""
    assert chunk_store.verify(res.hash)
    assert list(chunk_store.iter_hashes()) == [res.hash]
    assert_tmp_empty(chunk_store, tmp_path)


def test_verify(chunk_store):
    data = blob(9, 3_000_000)  # more than one READ_BLOCK
    digest = chunk_store.put(data).hash
    assert chunk_store.verify(digest) is True
    assert chunk_store.verify(b3(b"missing")) is False


def test_materialize_reads_every_object_once_in_whole_blocks(chunk_store, tmp_path):
    """A completed copy is written in full blocks across objects of odd lengths,
    and the observers (the completion's hashers) see exactly the copy's bytes."""
    parts = [blob(20 + i, n) for i, n in enumerate([1, 4095, 700_001, 3_000_000, 12_345])]
    entries = [(chunk_store.put(p).hash, len(p)) for p in parts]
    whole = b"".join(parts)
    seen = hashlib.sha256()
    sizes: list[int] = []

    def observe(block: memoryview) -> None:
        sizes.append(len(block))
        seen.update(block)

    dest = materialize(
        chunk_store,
        entries,
        tmp_path / "out" / "file.bin",
        within=tmp_path,
        durable=False,
        observers=[observe],
    )
    assert dest.read_bytes() == whole
    assert seen.hexdigest() == hashlib.sha256(whole).hexdigest()
    assert all(n == COPY_BLOCK for n in sizes[:-1]) and sum(sizes) == len(whole)
    with pytest.raises(CorruptObject):
        materialize(
            chunk_store,
            [(b3(b"missing"), 1)],
            tmp_path / "gone" / "x",
            within=tmp_path,
            durable=False,
        )
    assert not (tmp_path / "gone").exists()


def test_an_extent_holds_exactly_the_objects_bytes(chunk_store):
    """A store may say where an object lies in a local file (so that copies
    are made by the kernel); when it does, the range is the object."""
    data = blob(30, 300_000)
    digest = chunk_store.put(data).hash
    found = chunk_store.extent(digest)
    if found is not None:
        path, offset, length = found
        with open(path, "rb") as f:
            f.seek(offset)
            assert (length, f.read(length)) == (len(data), data)
    assert chunk_store.extent(b3(b"missing")) is None


@pytest.mark.parametrize("kernel_copy", ["supported", "unsupported"])
def test_materialize_copies_repeats_and_empties_with_or_without_the_kernel(
    chunk_store, tmp_path, monkeypatch, kernel_copy
):
    """The same chunk twice, an empty chunk, and no observers; where the
    filesystem cannot copy_file_range the bytes are written instead."""
    if kernel_copy == "unsupported":

        def cannot(*args: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", cannot)
    a, b = blob(31, 2_000_003), blob(32, 777)
    entries = [(chunk_store.put(p).hash, len(p)) for p in (a, b"", b, a)]
    for observers in ([], [hashlib.sha256().update]):
        dest = materialize(
            chunk_store,
            entries,
            tmp_path / "out" / f"{len(observers)}.bin",
            within=tmp_path,
            durable=True,
            observers=observers,
        )
        assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(a + b + a).digest()


# -- concurrency ------------------------------------------------------------------


def run_threads(n: int, target) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_concurrent_puts_of_same_object(chunk_store, tmp_path):
    data = blob(11, 400_000)
    digest = b3(data)
    results = run_threads(8, lambda i: chunk_store.put(data, expected_hash=digest))
    assert all((r.hash, r.size) == (digest, len(data)) for r in results)
    assert any(not r.existed for r in results)
    assert chunk_store.read(digest) == data
    assert list(chunk_store.iter_hashes()).count(digest) == 1
    assert_tmp_empty(chunk_store, tmp_path)


def test_concurrent_puts_of_different_objects(chunk_store, tmp_path):
    blobs = [blob(100 + i, 50_000 + i) for i in range(6)]
    results = run_threads(6, lambda i: chunk_store.put(blobs[i]))
    assert [r.hash for r in results] == [b3(b) for b in blobs]
    assert not any(r.existed for r in results)
    for data in blobs:
        assert chunk_store.read(b3(data)) == data
    assert set(chunk_store.iter_hashes()) == {b3(b) for b in blobs}
    assert_tmp_empty(chunk_store, tmp_path)


# -- delete, iteration, sync ------------------------------------------------------


def test_delete(chunk_store, tmp_path):
    chunk_store.delete(b3(b"never stored"))  # not an error
    keep, gone = chunk_store.put(b"keep me").hash, chunk_store.put(b"delete me").hash
    chunk_store.delete(gone)
    assert_absent(chunk_store, tmp_path, gone)
    assert chunk_store.age(gone, time.time()) is None
    with pytest.raises(CorruptObject):
        chunk_store.open(gone)
    assert chunk_store.verify(gone) is False
    chunk_store.delete(gone)  # again: still not an error
    assert chunk_store.read(keep) == b"keep me"
    # A deleted object can be stored again.
    assert chunk_store.put(b"delete me").existed is False
    assert chunk_store.read(gone) == b"delete me"


def test_quarantine_moves_an_object_out(chunk_store, tmp_path):
    keep, suspect = chunk_store.put(b"keep me").hash, chunk_store.put(b"suspect").hash
    chunk_store.quarantine(suspect)
    assert_absent(chunk_store, tmp_path, suspect)
    chunk_store.quarantine(suspect)  # gone already: not an error
    chunk_store.quarantine(b3(b"never stored"))
    assert chunk_store.read(keep) == b"keep me"
    # The bytes sent again are stored anew, beside the quarantined copy.
    assert chunk_store.put(b"suspect").existed is False
    assert chunk_store.read(suspect) == b"suspect"
    if isinstance(chunk_store, LocalChunkStore):
        assert (tmp_path / "quarantine" / suspect).read_bytes() == b"suspect"


def test_iteration_lists_exactly_the_stored_hashes(chunk_store):
    assert list(chunk_store.iter_hashes()) == []
    stored = {chunk_store.put(blob(200 + i, 100 * i)).hash for i in range(12)}
    chunk_store.put(blob(201, 100))  # a re-put adds nothing
    victim = sorted(stored)[3]
    chunk_store.delete(victim)
    stored.discard(victim)
    listed = list(chunk_store.iter_hashes())
    assert len(listed) == len(stored)
    assert set(listed) == stored


def test_sync_accepts_batches(chunk_store):
    first = [chunk_store.put(blob(300 + i, 1000)) for i in range(3)]
    second = [chunk_store.put(blob(300, 1000)), chunk_store.put(b"")]
    assert second[0].existed
    chunk_store.sync([])
    chunk_store.sync(first + second)
    chunk_store.sync(iter(first))
    for r in first + second:
        assert chunk_store.verify(r.hash)


# -- local only -------------------------------------------------------------------


def test_local_startup_clears_leftover_temp_files(tmp_path):
    LocalChunkStore(tmp_path, durable=True).close()
    leftover = tmp_path / "tmp" / "0123abcd.part"
    leftover.write_bytes(b"half an object from a crashed process")
    store = LocalChunkStore(tmp_path, durable=True)
    assert not leftover.exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list(store.iter_hashes()) == []

import hashlib
import io
import os
import random

import blake3
import pytest
from ingestd.cas import (
    DEFAULT_TENANT,
    ChecksumMismatch,
    ChunkConflict,
    ChunkHashMismatch,
    ChunkOutOfRange,
    IncompleteUpload,
    InvalidLayout,
    JobState,
    ManifestReader,
    MemoryChunkStore,
    SessionNotOpen,
    SessionState,
    Store,
    UnknownFile,
    UnknownSession,
    WrongChunkSize,
    safe_filename,
)
from support import chunks as stored

pytestmark = pytest.mark.unit

CHUNK = 1000


def upload(store: Store, data: bytes, name: str = "f.bin", **kw):
    session = store.create_session(filename=name, size=len(data), chunk_size=CHUNK, **kw)
    order = list(range(session.total_chunks))
    random.shuffle(order)
    for i in order:
        store.put_chunk(session.id, i, data[i * CHUNK : (i + 1) * CHUNK])
    return session


def test_full_upload_records_file_and_job(store):
    data = os.urandom(3500)
    s = upload(store, data, sha256=hashlib.sha256(data).hexdigest())
    done = store.complete(s.id)
    assert done.file.blake3 == blake3.blake3(data).hexdigest()
    assert done.file.size == 3500 and done.file.chunk_count == 4
    assert done.job.state == "queued" and done.job.file_id == done.file.id
    assert open(done.file.path, "rb").read() == data
    assert store.session(s.id).state == SessionState.COMPLETED
    with store.open_file(done.file.id) as reader:
        assert reader.read() == data
    # Completing again is idempotent.
    again = store.complete(s.id)
    assert (again.file.id, again.job.id) == (done.file.id, done.job.id)


def test_same_bytes_twice_are_stored_once(store):
    data = os.urandom(4000)
    store.complete(upload(store, data).id)
    before = sorted(store.chunks.iter_hashes())
    second = store.complete(upload(store, data).id)
    assert sorted(store.chunks.iter_hashes()) == before
    assert open(second.file.path, "rb").read() == data


def test_chunk_rules(store):
    s = store.create_session(filename="a", size=2500, chunk_size=CHUNK)
    with pytest.raises(ChunkOutOfRange):
        store.put_chunk(s.id, 3, b"x" * 500)
    with pytest.raises(WrongChunkSize):
        store.put_chunk(s.id, 0, b"x" * 999)
    with pytest.raises(WrongChunkSize):
        store.put_chunk(s.id, 2, b"x" * 1000)  # the last chunk is 500 bytes
    first = store.put_chunk(s.id, 0, b"a" * CHUNK)
    repeat = store.put_chunk(s.id, 0, b"a" * CHUNK)
    assert first.stored and not repeat.stored and repeat.received_chunks == 1
    with pytest.raises(ChunkConflict):
        store.put_chunk(s.id, 0, b"b" * CHUNK)
    assert store.received(s.id) == {0: (first.hash, CHUNK)}
    with pytest.raises(IncompleteUpload) as exc:
        store.complete(s.id)
    assert exc.value.extra["missing"] == [1, 2]
    with pytest.raises(UnknownSession):
        store.session("nope")
    with pytest.raises(UnknownSession):
        store.session(s.id, tenant="other-team")


def test_checksum_mismatch_rejects_and_releases(store, clock):
    data = os.urandom(2000)
    s = upload(store, data, sha256="0" * 64)
    with pytest.raises(ChecksumMismatch):
        store.complete(s.id)
    rejected = store.session(s.id)
    assert rejected.state == SessionState.REJECTED and "sha256" in rejected.reason
    # No copy of refused content is left for downstream tools to pick up.
    assert not [p for p in store.completed_dir.rglob("*") if p.is_file()]
    with pytest.raises(SessionNotOpen):
        store.put_chunk(s.id, 0, data[:CHUNK])
    clock.now += 10
    assert store.collect_garbage(grace=5) == (2, 2000)
    assert list(store.chunks.iter_hashes()) == []


def test_expiry_releases_chunks_but_keeps_shared_ones(store, clock):
    shared = os.urandom(CHUNK)
    kept = store.complete(upload(store, shared).id)
    s = upload(store, shared + os.urandom(CHUNK))
    clock.now += 101
    assert store.expire_sessions() == [s.id]
    assert store.session(s.id).state == SessionState.EXPIRED
    assert store.received(s.id) == {}
    clock.now += 10
    # Only the chunk no file uses goes; the shared one stays.
    assert store.collect_garbage(grace=5) == (1, CHUNK)
    with store.open_file(kept.file.id) as reader:
        assert reader.read() == shared


def test_garbage_waits_for_grace_period(store, clock):
    s = upload(store, os.urandom(CHUNK))
    store.cancel(s.id)
    clock.now += 1
    assert store.collect_garbage(grace=5) == (0, 0)
    clock.now += 5
    assert store.collect_garbage(grace=5) == (1, CHUNK)


def test_chunk_attached_again_after_release_is_revived(store, clock):
    data = os.urandom(CHUNK)
    store.cancel(upload(store, data).id)
    again = upload(store, data)
    clock.now += 100
    assert store.collect_garbage(grace=5) == (0, 0)
    assert store.complete(again.id).file.size == CHUNK


def test_orphan_sweep_deletes_only_old_unrecorded_objects(store):
    s = store.create_session(filename="a", size=CHUNK, chunk_size=CHUNK)
    kept = store.put_chunk(s.id, 0, b"a" * CHUNK)
    # A refused re-send leaves its object behind with no chunk record.
    with pytest.raises(ChunkConflict):
        store.put_chunk(s.id, 0, b"b" * CHUNK)
    orphan = blake3.blake3(b"b" * CHUNK).hexdigest()
    assert sorted(store.chunks.iter_hashes()) == sorted([kept.hash, orphan])
    assert store.sweep_orphans(grace=60) == (0, 0)  # too young to judge
    for digest in (kept.hash, orphan):
        stored.make_old(store.chunks, digest, 120)
    assert store.sweep_orphans(grace=60) == (1, CHUNK)
    assert list(store.chunks.iter_hashes()) == [kept.hash]
    assert store.complete(s.id).file.size == CHUNK


def test_crash_mid_completion_reopens_session(tmp_path, clock):
    data = os.urandom(2500)
    with Store(tmp_path, durability="none", clock=clock) as store:
        s = upload(store, data)
        store.completer.hash = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            store.complete(s.id)
        assert store.session(s.id).state == SessionState.OPEN
    with Store(tmp_path, durability="none", clock=clock) as store:
        assert store.complete(s.id).file.size == 2500


def test_crash_after_completion_began_is_finished_on_restart(tmp_path, clock):
    data = os.urandom(2500)
    with Store(tmp_path, durability="none", clock=clock) as store:
        s = upload(store, data)
        begun = store.begin_completion(s.id)
        assert begun.state == SessionState.COMPLETING
        assert store.jobs.get(begun.job_id).state == JobState.QUEUED
    # The process died here; the next one finds the session and finishes it.
    with Store(tmp_path, durability="none", clock=clock) as store:
        assert store.completing_sessions() == [s.id]
        done = store.finish_completion(s.id)
        assert done.file.blake3 == blake3.blake3(data).hexdigest()
        assert store.completing_sessions() == []


def layout(data: bytes, sizes: list[int]) -> list[tuple[str, int]]:
    out, offset = [], 0
    for n in sizes:
        out.append((blake3.blake3(data[offset : offset + n]).hexdigest(), n))
        offset += n
    return out


def declare(store, data, sizes, **kw):
    return store.create_session(
        filename="d.bin",
        size=len(data),
        chunk_size=CHUNK,
        chunks=layout(data, sizes),
        min_chunk_size=100,
        max_chunk_size=4000,
        **kw,
    )


def test_declared_layout_attaches_known_chunks_and_lists_the_rest(store):
    data = os.urandom(3000)
    sizes = [1200, 300, 1500]
    first = declare(store, data, sizes)
    assert store.missing(first.id) == [0, 1, 2]
    assert store.put_chunk(first.id, 1, data[1200:1500]).stored
    assert store.missing(first.id) == [0, 2]
    # A second upload sharing chunk 1 gets it attached without bytes.
    other = os.urandom(500) + data[1200:1500]
    second = declare(store, other, [500, 300])
    assert second.received_chunks == 1 and store.missing(second.id) == [0]
    store.put_chunk(second.id, 0, other[:500])
    with store.open_file(store.complete(second.id).file.id) as reader:
        assert reader.read() == other


def test_declared_layout_rejects_wrong_hashes_and_bad_lists(store):
    data = os.urandom(2000)
    s = declare(store, data, [1000, 1000])
    with pytest.raises(ChunkHashMismatch):
        store.put_chunk(s.id, 0, data[1000:])  # right size, wrong bytes
    with pytest.raises(WrongChunkSize):
        store.put_chunk(s.id, 0, data[:999])
    assert store.received(s.id) == {}
    with pytest.raises(InvalidLayout):
        declare(store, data, [1000, 900])  # does not add up
    with pytest.raises(InvalidLayout):
        declare(store, data, [50, 1950])  # first chunk under the minimum
    with pytest.raises(InvalidLayout):
        store.create_session(filename="x", size=1, chunk_size=CHUNK, chunks=[("XYZ", 1)])


def test_repeated_chunk_is_sent_once_and_filled_at_completion(store):
    block = os.urandom(1000)
    data = block + os.urandom(1000) + block
    s = declare(store, data, [1000, 1000, 1000])
    assert store.missing(s.id) == [0, 1]  # index 2 repeats index 0
    store.put_chunk(s.id, 0, block)
    store.put_chunk(s.id, 1, data[1000:2000])
    assert store.missing(s.id) == []
    done = store.complete(s.id)
    with store.open_file(done.file.id) as reader:
        assert reader.read() == data


def test_identical_reupload_is_recognised_without_rereading(store):
    data = os.urandom(2500)
    first = store.complete(upload(store, data, sha256=hashlib.sha256(data).hexdigest()).id).file
    store.completer.hash = lambda *a, **k: pytest.fail("identical content must not be re-hashed")
    second = store.complete(upload(store, data, name="again.bin").id).file
    assert (second.blake3, second.sha256) == (first.blake3, first.sha256)
    # Materialised copies are read-only, so identical ones share an inode.
    assert os.stat(first.path).st_ino == os.stat(second.path).st_ino
    assert os.stat(second.path).st_mode & 0o222 == 0
    store.delete_file(first.id)
    with open(second.path, "rb") as f:
        assert f.read() == data


def test_delete_file_keeps_chunks_another_file_uses(store, clock):
    shared = os.urandom(CHUNK)
    a = store.complete(upload(store, shared + os.urandom(CHUNK)).id).file
    b = store.complete(upload(store, shared).id).file
    assert [f.id for f in store.list_files()] == sorted([a.id, b.id])
    store.delete_file(a.id)
    with pytest.raises(UnknownFile):
        store.file(a.id)
    assert a.path and not os.path.exists(a.path)
    clock.now += 10
    assert store.collect_garbage(grace=5) == (1, CHUNK)
    with store.open_file(b.id) as reader:
        assert reader.read() == shared


def test_files_are_listed_by_prefix_and_paged(store):
    ids = {store.complete(upload(store, os.urandom(10), name=f"{n}.csv").id).file.id for n in "abc"}
    store.complete(upload(store, os.urandom(10), name="zz.json").id)
    assert {f.filename for f in store.list_files(prefix="zz")} == {"zz.json"}
    first = store.list_files(limit=2)
    rest = store.list_files(after=first[-1].id, limit=10)
    assert len(first) == 2 and len(rest) == 2
    assert ids <= {f.id for f in first + rest}
    assert store.list_files(tenant="other-team") == []


def test_empty_file(store):
    s = store.create_session(filename="empty", size=0, chunk_size=CHUNK)
    done = store.complete(s.id)
    assert done.file.size == 0 and open(done.file.path, "rb").read() == b""


def test_materialized_path_stays_inside_completed_dir(store):
    s = upload(store, b"x" * 10, name="../../../etc/passwd")
    path = store.complete(s.id).file.path
    assert path.startswith(str(store.completed_dir.resolve()))
    assert path.endswith("/passwd")


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../x", "x"),
        ("..", "file"),
        ("a\\b\\c.csv", "c.csv"),
        ("a\x00b", "a_b"),
        (".hidden", "hidden"),
        ("ok name.jsonl", "ok name.jsonl"),
        ("", "file"),
    ],
)
def test_safe_filename(raw, safe):
    assert safe_filename(raw) == safe


def test_safe_filename_bounds_length():
    name = safe_filename("é" * 300 + ".parquet")
    assert len(name.encode()) <= 200 and name.endswith(".parquet")


def test_reader_seeks_across_chunk_boundaries(store):
    data = os.urandom(10_000)
    lengths = [1, 999, 4096, 3000, 1904]
    entries, offset = [], 0
    for n in lengths:
        entries.append((store.chunks.put(data[offset : offset + n]).hash, n))
        offset += n
    reader = ManifestReader(store.chunks, entries)
    rng = random.Random(7)
    for _ in range(200):
        pos = rng.randrange(0, 10_001)
        n = rng.randrange(0, 6000)
        reader.seek(pos)
        assert reader.read(n) == data[pos : pos + n]
        assert reader.tell() == min(pos + n, 10_000)
    assert reader.seek(-10, io.SEEK_END) == 9_990
    assert reader.read() == data[-10:]
    buffered = io.BufferedReader(ManifestReader(store.chunks, entries), buffer_size=333)
    assert buffered.read() == data


@pytest.mark.parametrize("materialize", ["copy", "none"])
def test_a_store_over_the_memory_chunk_store(tmp_path, clock, materialize):
    """Nothing above the chunk-store interface touches object paths: the whole
    life of an upload works with objects kept in memory."""
    chunks = MemoryChunkStore(clock=clock)
    with Store(
        tmp_path, durability="none", clock=clock, chunks=chunks, materialize=materialize
    ) as store:
        data = os.urandom(3500)
        done = store.complete(upload(store, data).id)
        assert done.file.blake3 == blake3.blake3(data).hexdigest()
        with store.open_file(done.file.id) as reader:
            assert reader.read() == data
        if materialize == "copy":
            with open(done.file.path, "rb") as f:
                assert f.read() == data
        assert not (tmp_path / "objects").exists() or not any((tmp_path / "objects").iterdir())
        assert len(list(chunks.iter_hashes())) == 4
        store.delete_file(done.file.id)
        clock.now += 10
        assert store.collect_garbage(grace=5) == (4, 3500)
        assert list(chunks.iter_hashes()) == []


def test_a_file_plugins_decide_gets_its_copy_once_accepted(tmp_path, clock):
    """The copy is written after the verdict (off the client's wait), recorded
    only once durable, never for a rejected or deleted file; a due copy
    outlives a restart."""
    with Store(tmp_path, durability="fsync", clock=clock, process_files=True) as store:
        data, other, third = os.urandom(2500), os.urandom(3100), os.urandom(1200)
        first = store.complete(upload(store, data).id).file
        assert first.path is None and store.copies_due() == [first.id]
        assert store.write_copy(first.id) is None  # not accepted yet
        store.conclude(first.id, accepted=True)
        path = store.write_copy(first.id)
        assert path is not None and store.file(first.id).path == path
        with open(path, "rb") as f:
            assert f.read() == data
        assert store.copies_due() == [] and store.write_copy(first.id) is None

        rejected = store.complete(upload(store, other).id).file
        store.conclude(rejected.id, accepted=False, reason="no")
        assert store.copies_due() == [] and store.write_copy(rejected.id) is None
        assert not (store.completed_dir / DEFAULT_TENANT / rejected.id).exists()

        deleted = store.complete(upload(store, other, name="o.bin").id).file
        store.conclude(deleted.id, accepted=True)
        store.delete_file(deleted.id)
        assert store.copies_due() == [] and store.write_copy(deleted.id) is None

        # The same content again: a link to the first copy, made at completion.
        twin = store.complete(upload(store, data, name="again.bin").id).file
        assert twin.path is not None
        assert os.stat(twin.path).st_ino == os.stat(path).st_ino

        pending = store.complete(upload(store, third).id).file
        store.conclude(pending.id, accepted=True)
    with Store(tmp_path, durability="fsync", clock=clock, process_files=True) as store:
        assert store.copies_due() == [pending.id]
        with open(store.write_copy(pending.id), "rb") as f:
            assert f.read() == third
        assert store.copies_due() == []


def test_copy_now_writes_the_copy_before_the_verdict(tmp_path, clock):
    """The seed API answers its completion with the copy's path."""
    with Store(tmp_path, durability="none", clock=clock, process_files=True) as store:
        data = os.urandom(2200)
        file = store.complete(upload(store, data).id, copy_now=True).file
        assert file.path is not None and store.copies_due() == []
        with open(file.path, "rb") as f:
            assert f.read() == data

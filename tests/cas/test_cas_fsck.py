"""cas/fsck.py: what it finds in a damaged store, and what --repair makes of it."""

from __future__ import annotations

import os

import blake3
import lmdb
import msgspec
import pytest
from ingestd.cas import DamagedFile, FileState, SessionState, Store, fsck, records
from ingestd.cas.records import ChunkRecord
from support import chunks as stored

pytestmark = [pytest.mark.unit, pytest.mark.damages_store]

CHUNK = 1000


@pytest.fixture
def store(tmp_path):
    """Without materialised copies (fsck would restore objects from them)."""
    with Store(tmp_path / "data", durability="none", materialize="none") as s:
        yield s


def upload(store: Store, data: bytes, name: str = "f.bin") -> str:
    session = store.create_session(filename=name, size=len(data), chunk_size=CHUNK)
    for i in range(0, len(data), CHUNK):
        store.put_chunk(session.id, i // CHUNK, data[i : i + CHUNK])
    return store.complete(session.id).file.id


def kinds(report: fsck.Report) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in report.problems + report.leftovers:
        out.setdefault(f.kind, set()).add(f.subject)
    return out


def check(store: Store) -> fsck.Report:
    return fsck.check(store.index, store.chunks, root=store.root)


def test_a_healthy_store_is_clean_and_every_byte_is_verified(store):
    upload(store, os.urandom(3500))
    upload(store, os.urandom(10), "small.bin")
    report = check(store)
    assert report.clean and report.leftovers == []
    assert report.objects == 5 and report.files == 2
    assert report.verified_bytes == report.object_bytes == 3510


def test_corrupt_and_missing_objects_damage_their_files_and_repair_says_so(store):
    data = os.urandom(3 * CHUNK)
    damaged = upload(store, data, "a.bin")
    manifest = store.manifest(damaged)
    whole = upload(store, os.urandom(2 * CHUNK), "b.bin")
    corrupt, gone = manifest[0][0], manifest[2][0]
    flipped = bytearray(store.chunks.read(corrupt))
    flipped[10] ^= 0xFF
    stored.corrupt(store.chunks, corrupt)
    stored.lose(store.chunks, gone)

    report = check(store)
    found = kinds(report)
    assert found["corrupt_object"] == {corrupt}
    assert found["missing_object"] == {corrupt, gone}
    assert not report.clean

    done = fsck.repair(store, report)
    assert any(f"quarantined corrupt object {corrupt}" in line for line in done)
    assert (store.root / "quarantine" / corrupt).read_bytes() == bytes(flipped)
    file = store.file(damaged)
    assert file.state == FileState.DAMAGED
    assert "2 of its 3 chunks are missing or corrupt (from byte 0)" in file.reason
    with pytest.raises(DamagedFile):
        store.open_file(damaged)
    # The other file is untouched; the store is now consistent.
    assert store.open_file(whole).read() is not None
    after = check(store)
    assert after.clean, after.problems
    assert after.damaged_files == [damaged] and after.quarantined == 1


def test_a_missing_chunk_is_never_attached_without_its_bytes_and_comes_back_when_sent(store):
    data = os.urandom(2 * CHUNK)
    first = upload(store, data)
    digest, length = store.manifest(first)[1]
    stored.lose(store.chunks, digest)
    fsck.repair(store, check(store))
    # A client declaring the chunk is asked for its bytes, not given a broken file.
    chunks = [(blake3.blake3(data[i : i + CHUNK]).hexdigest(), CHUNK) for i in (0, CHUNK)]
    session = store.create_session(
        filename="again.bin", size=len(data), chunk_size=CHUNK, chunks=chunks
    )
    assert store.missing(session.id) == [1]
    store.put_chunk(session.id, 1, data[CHUNK:])
    again = store.complete(session.id).file.id
    assert store.open_file(again).read() == data
    with store.index.reader() as txn:
        record = store.refs.get(txn, digest)
    assert record.refs == 2 and not record.missing
    assert check(store).clean


def test_missing_object_restored_from_the_materialised_copy(tmp_path):
    with Store(tmp_path / "data", durability="none", materialize="copy") as store:
        data = os.urandom(3 * CHUNK)
        file_id = upload(store, data)
        digest = store.manifest(file_id)[1][0]
        stored.lose(store.chunks, digest)
        done = fsck.repair(store, check(store))
        assert f"restored object {digest} from the copy of file {file_id}" in done
        assert store.file(file_id).state == FileState.ACCEPTED
        assert store.open_file(file_id).read() == data
        assert check(store).clean


def test_open_upload_loses_only_its_missing_parts_and_resumes(store):
    data = os.urandom(3 * CHUNK)
    session = store.create_session(filename="open.bin", size=len(data), chunk_size=CHUNK)
    for i in range(3):
        store.put_chunk(session.id, i, data[i * CHUNK : (i + 1) * CHUNK])
    lost = store.received(session.id)[1][0]
    stored.lose(store.chunks, lost)
    assert "missing_object" in kinds(check(store))
    fsck.repair(store, check(store))
    assert store.missing(session.id) == [1]
    assert store.session(session.id).received_chunks == 2
    store.put_chunk(session.id, 1, data[CHUNK : 2 * CHUNK])
    assert store.open_file(store.complete(session.id).file.id).read() == data
    assert check(store).clean


def _write(store: Store, op) -> None:
    store.index.write(op)


def test_derived_data_is_checked_and_rebuilt(store):
    file_id = upload(store, os.urandom(2 * CHUNK))
    digest = store.manifest(file_id)[0][0]
    db = store.index.db

    def break_things(txn: lmdb.Transaction) -> None:
        record = store.refs.get(txn, digest)
        store.index.put(
            txn, "chunks", bytes.fromhex(digest), msgspec.structs.replace(record, refs=7)
        )
        txn.drop(db["file_hashes"], delete=False)
        usage = store.tenants.usage(txn, "default")
        store.index.put(txn, "tenants", b"default", msgspec.structs.replace(usage, logical_bytes=1))
        # Parts of an upload that does not exist.
        txn.put(
            b"ghost/" + (0).to_bytes(4, "big"), records.pack_entry(digest, CHUNK), db=db["parts"]
        )

    _write(store, break_things)
    # An object no record names, and a half-written temp file: leftovers only.
    orphan = store.chunks.put(b"orphan bytes").hash
    (store.root / "tmp" / "x.part").write_bytes(b"half")
    report = check(store)
    found = kinds(report)
    assert found["refcount"] == {digest}
    assert found["content_index"] == {file_id}
    assert found["tenant_ledger"] >= {"default"}
    assert found["dangling_parts"] == {"ghost"}
    assert found["orphan_object"] == {orphan}
    assert {f.kind for f in report.leftovers} == {"orphan_object", "temp_file"}
    fsck.repair(store, report)
    after = check(store)
    assert after.clean, after.problems
    assert {f.kind for f in after.leftovers} == {"orphan_object"}  # for gc, after its grace
    with store.index.reader() as txn:
        assert store.refs.get(txn, digest).refs == 1
        assert store.tenants.usage(txn, "default").logical_bytes == 2 * CHUNK
    assert store.files_by_blake3(store.file(file_id).blake3) == [file_id]


def test_a_processing_file_found_damaged_ends_its_upload_rejected(tmp_path):
    with Store(tmp_path / "data", durability="none", process_files=True) as store:
        data = os.urandom(2 * CHUNK)
        file_id = upload(store, data)
        file = store.file(file_id)
        assert file.state == FileState.PROCESSING
        stored.lose(store.chunks, store.manifest(file_id)[0][0])
        fsck.repair(store, check(store))
        assert store.file(file_id).state == FileState.DAMAGED
        assert store.session(file.session_id).state == SessionState.REJECTED
        # The plugins' late verdict changes nothing.
        assert store.conclude(file_id, accepted=True).state == FileState.DAMAGED
        assert check(store).clean


def test_live_check_reports_nothing_that_changed_since_its_snapshot(store):
    """A chunk released and collected after the snapshot is not reported missing."""
    session = store.create_session(filename="t.bin", size=CHUNK, chunk_size=CHUNK)
    store.put_chunk(session.id, 0, os.urandom(CHUNK))
    digest = store.received(session.id)[0][0]
    real_read = fsck._read

    def read_then_collect(index, txn):
        snap = real_read(index, txn)
        store.cancel(session.id)
        store.collect_garbage(-1)
        return snap

    fsck._read = read_then_collect
    try:
        live = fsck.check(store.index, store.chunks, live=True)
    finally:
        fsck._read = real_read
    assert live.problems == []
    assert not store.chunks.exists(digest)


def test_chunk_record_flag_is_a_compatible_field():
    old = msgspec.msgpack.encode({"size": 1, "refs": 1, "created": 0.0, "released": None})
    assert records.decode(ChunkRecord, old).missing is False

"""cas/streams.py: byte streams cut into chunks at absolute offsets, tails, concatenation."""

from __future__ import annotations

import hashlib
import os

import blake3
import pytest
from ingestd.cas import (
    IncompleteUpload,
    JobState,
    SessionNotOpen,
    SessionState,
    StorageError,
    Store,
    TooLarge,
    UnknownSession,
)
from ingestd.cas.records import ChunkRecord
from ingestd.cas.streams import (
    PARTIAL,
    SINGLE,
    Appender,
    InvalidConcat,
    InvalidLength,
    NotAStream,
    OffsetMismatch,
    StreamStore,
)
from support.streams import TENANT, append

pytestmark = pytest.mark.unit

CHUNK = 100


@pytest.fixture
def streams(store):
    return StreamStore(store, max_size=10_000)


def create(streams: StreamStore, length: int | None, kind: str = SINGLE, name: str = "f.bin"):
    return streams.create(
        tenant=TENANT,
        kind=kind,
        length=length,
        chunk_size=CHUNK,
        filename=name,
        metadata={"filename": name},
    ).session


def refs(store: Store, data: bytes) -> int:
    with store.index.reader() as txn:
        chunk = store.index.get(txn, "chunks", blake3.blake3(data).digest(), ChunkRecord)
    return 0 if chunk is None else chunk.refs


def content(store: Store, file_id: str) -> bytes:
    with store.open_file(file_id, TENANT) as reader:
        return reader.read()


def test_appender_cuts_at_absolute_offsets(store):
    tail = b"t" * 30
    checksum = hashlib.sha256()
    appender = Appender(store.chunks, CHUNK, 230, tail, checksum)
    sealed = appender.write(b"a" * 150)
    # 230 + 150 = 380: chunk 2 is filled (30 tail + 70 new), chunk 3 gets 80 bytes.
    assert [s.index for s in sealed] == [2]
    last = appender.finish()
    assert last.index == 3
    pieces = [s.commit() for s in [*sealed, last]]
    assert [p.put.size for p in pieces] == [100, 80]
    assert store.chunks.read(pieces[0].put.hash) == tail + b"a" * 70
    assert checksum.digest() == hashlib.sha256(b"a" * 150).digest()  # the request's bytes only
    assert appender.received == 150
    with pytest.raises(ValueError):
        Appender(store.chunks, CHUNK, 230, b"short")


def test_appender_without_new_bytes_keeps_the_old_tail(store):
    appender = Appender(store.chunks, CHUNK, 30, b"t" * 30)
    assert appender.write(b"") == [] and appender.finish() is None
    assert list((store.root / "tmp").iterdir()) == []  # the temp object was dropped
    aligned = Appender(store.chunks, CHUNK, 200)
    assert [s.index for s in aligned.write(b"x" * 200)] == [2, 3] and aligned.finish() is None


def test_stream_with_tails_completes_in_its_last_write(store, streams):
    data = os.urandom(450)
    session = create(streams, len(data))
    offsets = []
    for piece in (data[:30], data[30:130], data[130:131], data[131:449]):
        offsets.append(append(streams, session.id, piece).offset)
    assert offsets == [30, 130, 131, 449]
    state = streams.state(session.id, TENANT)
    assert state.session.state == SessionState.OPEN
    assert state.session.received_bytes == 449 and state.session.received_chunks == 5
    # Replaced tails are released; the current one is held.
    assert refs(store, data[:30]) == 0 and refs(store, data[100:130]) == 0
    assert refs(store, data[400:449]) == 1
    done = append(streams, session.id, data[449:])
    assert done.session.state == SessionState.COMPLETING and done.jobs == (done.session.job_id,)
    assert store.jobs.get(done.jobs[0]).state == JobState.QUEUED
    completion = store.finish_completion(session.id)
    assert completion.file.blake3 == blake3.blake3(data).hexdigest()
    assert [n for _, n in store.manifest(completion.file.id)] == [100, 100, 100, 100, 50]
    assert content(store, completion.file.id) == data


def test_writes_must_continue_the_stream(streams):
    session = create(streams, 300)
    append(streams, session.id, b"a" * 150)
    state = streams.state(session.id, TENANT)
    appender = streams.appender(state.session, 0, b"")
    pieces = [s.commit() for s in appender.write(b"b" * 100)]
    with pytest.raises(OffsetMismatch) as info:
        streams.attach(session.id, TENANT, 0, pieces)
    assert info.value.extra["offset"] == 150
    # A piece that does not start at the offset's chunk is a bug, not a client error.
    appender = streams.appender(state.session, 200, b"")
    pieces = [s.commit() for s in appender.write(b"c" * 100)]
    with pytest.raises(StorageError):
        streams.attach(session.id, TENANT, 150, pieces)
    with pytest.raises(OffsetMismatch):
        streams.read_tail(session.id, TENANT, 140)
    assert streams.state(session.id, TENANT).offset == 150


def test_length_is_enforced_and_deferrable(streams):
    session = create(streams, 120)
    with pytest.raises(TooLarge):
        append(streams, session.id, b"x" * 121)
    deferred = create(streams, None)
    assert streams.state(deferred.id, TENANT).session.size == 0
    append(streams, deferred.id, b"y" * 150)
    with pytest.raises(InvalidLength):
        streams.declare_length(deferred.id, TENANT, 149)
    with pytest.raises(TooLarge):
        streams.declare_length(deferred.id, TENANT, 10_001)
    declared = streams.declare_length(deferred.id, TENANT, 150)
    assert declared.session.size == 150 and declared.session.total_chunks == 2
    assert declared.session.state == SessionState.COMPLETING  # offset == length
    with pytest.raises(InvalidLength):
        streams.declare_length(create(streams, 5).id, TENANT, 6)
    with pytest.raises(TooLarge):
        create(streams, 10_001)


def test_state_of_other_uploads(store, streams):
    plain = store.create_session(filename="v1.bin", size=10, chunk_size=CHUNK)
    with pytest.raises(NotAStream):
        streams.state(plain.id, TENANT)
    session = create(streams, 10)
    with pytest.raises(UnknownSession):
        streams.state(session.id, "other-tenant")
    # The chunk-index APIs refuse a stream, so its parts always follow its offset.
    with pytest.raises(SessionNotOpen):
        store.put_chunk(session.id, 0, b"x" * 10)


def test_an_incomplete_tail_cannot_be_completed_by_chunk_count(store, streams):
    session = create(streams, 250)
    append(streams, session.id, b"z" * 220)  # chunks 0, 1 and a tail at 2: 3 of 3 indices
    with pytest.raises(IncompleteUpload):
        # Completion itself counts bytes, not only chunk indices...
        store.index.write(
            lambda txn: store.completer.begin(txn, store.sessions.get(txn, session.id, TENANT))
        )
    # ...and the chunk APIs cannot complete (or cancel) a stream at all.
    with pytest.raises(SessionNotOpen):
        store.begin_completion(session.id)
    with pytest.raises(SessionNotOpen):
        store.cancel(session.id)


def test_expiry_and_termination_release_the_tail(store, streams, clock):
    data = os.urandom(150)
    session = create(streams, 300)
    append(streams, session.id, data)
    assert refs(store, data[:100]) == 1 and refs(store, data[100:]) == 1
    clock.now += 101
    with pytest.raises(SessionNotOpen) as info:
        append(streams, session.id, b"more")
    assert info.value.extra["state"] == "expired"
    assert store.expire_sessions() == [session.id]
    assert refs(store, data[:100]) == 0 and refs(store, data[100:]) == 0
    other = create(streams, 300)
    append(streams, other.id, data)
    assert streams.terminate(other.id, TENANT).state == SessionState.CANCELLED
    assert refs(store, data[100:]) == 0


def test_state_survives_a_reopen(tmp_path, clock):
    root = tmp_path / "data"
    with Store(root, durability="fsync", clock=clock) as store:
        streams = StreamStore(store)
        session = create(streams, 1000)
        append(streams, session.id, b"q" * 250)
    with Store(root, durability="fsync", clock=clock) as store:
        streams = StreamStore(store)
        assert streams.state(session.id, TENANT).offset == 250
        assert streams.read_tail(session.id, TENANT, 250) == b"q" * 50
        append(streams, session.id, b"r" * 750)
        completion = store.finish_completion(session.id)
        assert content(store, completion.file.id) == b"q" * 250 + b"r" * 750


def test_unattached_pieces_are_orphans_for_the_sweep(store, streams, clock):
    session = create(streams, 300)
    state = streams.state(session.id, TENANT)
    appender = streams.appender(state.session, 0, b"")
    pieces = [s.commit() for s in appender.write(os.urandom(200))]  # never attached
    assert all(store.chunks.exists(p.put.hash) for p in pieces)
    assert store.sweep_orphans(grace=-1) == (2, 200)
    assert not any(store.chunks.exists(p.put.hash) for p in pieces)


# -- concatenation -----------------------------------------------------------------------


def final_of(streams: StreamStore, partials: list[str], name: str = "joined.bin"):
    return streams.create_final(
        tenant=TENANT,
        partials=partials,
        chunk_size=CHUNK,
        filename=name,
        metadata={},
    )


def test_final_of_complete_partials_is_assembled_at_once(store, streams):
    parts = [os.urandom(n) for n in (150, 100, 70)]
    ids = []
    for part in parts:
        session = create(streams, len(part), PARTIAL)
        done = append(streams, session.id, part)
        assert done.session.state == SessionState.OPEN and done.jobs == ()
        ids.append(session.id)
    objects = set(store.chunks.iter_hashes())
    created = final_of(streams, ids)
    assert set(store.chunks.iter_hashes()) == objects  # no byte copied
    assert created.stream.assembled and created.stream.length == 320
    assert created.session.state == SessionState.COMPLETING and len(created.jobs) == 1
    assert refs(store, parts[0][:100]) == 2  # the partial's and the final's
    completion = store.finish_completion(created.session.id)
    assert [n for _, n in store.manifest(completion.file.id)] == [100, 50, 100, 70]
    assert content(store, completion.file.id) == b"".join(parts)


def test_final_waits_for_its_partials(store, streams):
    first = create(streams, 120, PARTIAL)
    second = create(streams, None, PARTIAL)
    append(streams, first.id, b"1" * 120)
    created = final_of(streams, [first.id, second.id, first.id])
    assert not created.stream.assembled and created.jobs == ()
    assert streams.state(created.session.id, TENANT).length is None  # second is deferred
    append(streams, second.id, b"2" * 30)
    assert streams.state(created.session.id, TENANT).length is None
    done = streams.declare_length(second.id, TENANT, 30)
    assert done.jobs == (streams.state(created.session.id, TENANT).session.job_id,)
    completion = store.finish_completion(created.session.id)
    assert content(store, completion.file.id) == b"1" * 120 + b"2" * 30 + b"1" * 120
    # The partials stay open (reusable) until they expire.
    assert streams.state(first.id, TENANT).session.state == SessionState.OPEN


def test_final_refuses_what_is_not_a_usable_partial(store, streams, clock):
    single = create(streams, 10)
    partial = create(streams, 10, PARTIAL)
    for ids in ([single.id], ["0" * 32], []):
        with pytest.raises(InvalidConcat):
            final_of(streams, ids)
    with pytest.raises(InvalidConcat):
        streams.create_final(
            tenant="other", partials=[partial.id], chunk_size=CHUNK, filename="x", metadata={}
        )
    big = create(streams, 6000, PARTIAL)
    with pytest.raises(TooLarge):
        final_of(streams, [big.id, big.id])
    waiting = final_of(streams, [partial.id])
    streams.terminate(partial.id, TENANT)
    state = streams.state(waiting.session.id, TENANT).session
    assert state.state == SessionState.CANCELLED and partial.id in state.reason
    with pytest.raises(InvalidConcat):
        final_of(streams, [partial.id])
    late = create(streams, 10, PARTIAL)
    clock.now += 101
    with pytest.raises(InvalidConcat):
        final_of(streams, [late.id])


def test_terminating_a_completed_upload_deletes_its_file(store, streams):
    session = create(streams, 5)
    append(streams, session.id, b"hello")
    completion = store.finish_completion(session.id)
    ended = streams.terminate(session.id, TENANT)
    assert ended.state == SessionState.COMPLETED
    assert streams.state(session.id, TENANT).stream.terminated
    assert store.files_by_blake3(completion.file.blake3) == []
    assert refs(store, b"hello") == 0

"""Garbage collection with no grace period, racing uploads that share chunks.

Three kinds of upload run at once, as the three APIs store them — fixed-size
chunks (the original REST API and /v1 without a chunk list), a declared chunk
list whose known chunks are attached without their bytes (/v1 dedup) and a
tus byte stream with its replaced tails — while files are deleted and uploads
cancelled, releasing the same chunks, and a collector deletes unreferenced
chunks and orphan objects the moment it sees them. Nothing referenced may
ever go: every file reads back byte for byte, and fsck finds nothing.
"""

from __future__ import annotations

import random
import threading

import blake3
import pytest
from ingestd.cas import ObjectVanished, Store, fsck
from ingestd.cas.streams import SINGLE, StreamStore
from support.streams import TENANT, append

pytestmark = pytest.mark.unit

CHUNK = 100  # what test_cas_streams' helpers cut streams at
ROUNDS = 700  # per uploader: 2,100 uploads against one collector
# Few distinct chunks, so that every upload shares chunks with others that
# are being deleted and collected.
POOL = [random.Random(i).randbytes(CHUNK) for i in range(6)]


def retrying(op):
    """The store refuses an attach whose object was just collected; the client retries."""
    for _ in range(50):
        try:
            return op()
        except ObjectVanished:
            continue
    raise AssertionError("an attach kept losing its object to the collector")


def content(rng: random.Random) -> bytes:
    data = b"".join(rng.choice(POOL) for _ in range(rng.randint(1, 4)))
    return data[: len(data) - rng.randint(0, CHUNK - 1)]  # a short last chunk, at times


def fixed_upload(store: Store, data: bytes) -> str:
    session = store.create_session(filename="fixed", size=len(data), chunk_size=CHUNK)
    for i in range(session.total_chunks):
        retrying(lambda i=i: store.put_chunk(session.id, i, data[i * CHUNK : (i + 1) * CHUNK]))
    return retrying(lambda: store.complete(session.id)).file.id


def declared_upload(store: Store, data: bytes) -> str:
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    listed = [(blake3.blake3(p).hexdigest(), len(p)) for p in pieces]

    def create():
        return store.create_session(
            filename="declared",
            size=len(data),
            chunk_size=CHUNK,
            chunks=listed,
            max_chunk_size=CHUNK,
        )

    session = retrying(create)
    for i in store.missing(session.id):
        retrying(lambda i=i: store.put_chunk(session.id, i, pieces[i]))
    # What the server said it had may be collected before completion: it asks again.
    for _ in range(50):
        try:
            return store.complete(session.id).file.id
        except Exception as exc:  # noqa: BLE001 - chunks_missing or a vanished object
            if getattr(exc, "code", "") not in ("chunks_missing", "try_again"):
                raise
            for i in store.missing(session.id):
                retrying(lambda i=i: store.put_chunk(session.id, i, pieces[i]))
    raise AssertionError("the declared upload never completed")


def stream_upload(store: Store, streams: StreamStore, data: bytes, rng: random.Random) -> str:
    session = streams.create(
        tenant=TENANT,
        kind=SINGLE,
        length=len(data),
        chunk_size=CHUNK,
        filename="stream",
        metadata={},
    ).session
    offset = 0
    while offset < len(data):
        step = rng.randint(1, 150)
        piece = data[offset : offset + step]
        retrying(lambda piece=piece: append(streams, session.id, piece))
        offset += len(piece)
    return retrying(lambda: store.finish_completion(session.id)).file.id


def test_collector_with_no_grace_never_deletes_what_uploads_use(tmp_path):
    with Store(tmp_path / "data", durability="none", materialize="none") as store:
        streams = StreamStore(store, max_size=10_000)
        stop = threading.Event()
        failures: list[BaseException] = []
        kept: dict[str, bytes] = {}
        kept_lock = threading.Lock()
        collections = [0]

        def collector() -> None:
            while not stop.is_set():
                store.collect_garbage(0)
                store.sweep_orphans(0)
                collections[0] += 1

        def uploader(seed: int, kind: str) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(ROUNDS):
                    data = content(rng)
                    if kind == "fixed":
                        file_id = fixed_upload(store, data)
                    elif kind == "declared":
                        file_id = declared_upload(store, data)
                    else:
                        file_id = stream_upload(store, streams, data, rng)
                    with store.open_file(file_id) as reader:
                        assert reader.read() == data
                    roll = rng.random()
                    if roll < 0.5:
                        store.delete_file(file_id)  # its chunks go back to zero uses
                    else:
                        with kept_lock:
                            kept[file_id] = data
                    if roll > 0.8:
                        # An upload cancelled halfway releases its chunks too.
                        s = store.create_session(filename="x", size=2 * CHUNK, chunk_size=CHUNK)
                        retrying(lambda s=s: store.put_chunk(s.id, 0, rng.choice(POOL)))
                        store.cancel(s.id)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                failures.append(exc)

        threads = [threading.Thread(target=collector)] + [
            threading.Thread(target=uploader, args=(i, kind))
            for i, kind in enumerate(("fixed", "declared", "stream"))
        ]
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join(timeout=300)
        stop.set()
        threads[0].join(timeout=30)
        assert not failures, failures[0]
        assert not any(t.is_alive() for t in threads)
        assert collections[0] > 100  # the collector really ran throughout
        for file_id, data in kept.items():
            with store.open_file(file_id) as reader:
                assert reader.read() == data
        store.collect_garbage(0)
        store.sweep_orphans(0)
        # Only the kept files' chunks remain.
        wanted = {d for f in kept for d, _ in store.manifest(f)}
        assert set(store.chunks.iter_hashes()) == wanted
        report = fsck.check(store.index, store.chunks, root=store.root)
        assert report.clean and report.leftovers == [], report.problems


def test_an_attach_that_fails_after_reclaiming_a_tail_keeps_it(tmp_path):
    """A tus write whose old tail is reclaimed, and then a later piece of the
    same write is refused: the write is undone, the old tail is still the
    upload's, so its object must still be there (it was deleted at once)."""
    with Store(tmp_path / "data", durability="none", materialize="none") as store:
        streams = StreamStore(store, max_size=10_000)
        session = streams.create(
            tenant=TENANT, kind=SINGLE, length=300, chunk_size=CHUNK, filename="s", metadata={}
        ).session
        append(streams, session.id, b"a" * 40)  # the tail: 40 bytes
        tail = streams.read_tail(session.id, TENANT, 40)
        appender = streams.appender(streams.state(session.id, TENANT).session, 40, tail)
        sealed = appender.write(b"b" * 100)  # fills chunk 0, starts chunk 1
        sealed.append(appender.finish())
        pieces = [s.commit() for s in sealed]
        store.chunks.delete(pieces[1].put.hash)  # chunk 1's object vanishes before the attach
        with pytest.raises(ObjectVanished):
            streams.attach(session.id, TENANT, 40, pieces)
        assert streams.read_tail(session.id, TENANT, 40) == b"a" * 40
        append(streams, session.id, b"c" * 260)
        file_id = store.finish_completion(session.id).file.id
        with store.open_file(file_id) as reader:
            assert reader.read() == b"a" * 40 + b"c" * 260

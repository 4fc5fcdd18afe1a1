"""`cas.migrate`: a move between backends resumes after an interruption, and
no store opens an index whose move is unfinished."""

from __future__ import annotations

import hashlib
import os

import pytest
from ingestd.cas import LocalPackStore, StorageError, Store, migrate, open_index


def _source(root) -> tuple[dict[str, bytes], str]:
    """A store with three files (one sharing chunks with another) and an open upload."""
    contents = {}
    with Store(root, durability="none") as store:
        shared = os.urandom(3000)
        for name, data in [("a", shared + os.urandom(500)), ("b", shared), ("c", os.urandom(9000))]:
            s = store.create_session(filename=name, size=len(data), chunk_size=1000)
            for i in range(s.total_chunks):
                store.put_chunk(s.id, i, data[i * 1000 : (i + 1) * 1000])
            contents[store.complete(s.id).file.id] = data
        open_one = store.create_session(filename="open", size=4000, chunk_size=1000)
        store.put_chunk(open_one.id, 2, os.urandom(1000))
    return contents, open_one.id


class FailingAfter(LocalPackStore):
    """A target store whose disk fails after `syncs` batches (an interrupted move)."""

    def __init__(self, root, syncs: int) -> None:
        super().__init__(root, durable=False)
        self.syncs_left = syncs

    def sync(self, puts):
        puts = list(puts)
        if puts and self.syncs_left == 0:
            raise StorageError("the target's disk failed")
        if puts:
            self.syncs_left -= 1
        super().sync(puts)


def test_an_interrupted_move_resumes_and_only_then_the_target_opens(
    tmp_path, pg_index, monkeypatch
):
    monkeypatch.setattr(migrate, "BATCH_BYTES", 4000)  # several batches
    contents, open_id = _source(tmp_path / "source")
    source_index = open_index(tmp_path / "source", readonly=True)
    source_chunks = LocalPackStore(tmp_path / "source", readonly=True)
    try:
        target_index = open_index(tmp_path / "target", **pg_index, moving_into=True)
        broken = FailingAfter(tmp_path / "target", syncs=2)
        with pytest.raises(StorageError, match="disk failed"):
            migrate.migrate(source_index, source_chunks, target_index, broken, source_name="here")
        broken.close()
        target_index.close()
        with pytest.raises(StorageError, match="unfinished move from here"):
            Store(tmp_path / "target", durability="none", index=pg_index)

        target_index = open_index(tmp_path / "target", **pg_index, moving_into=True)
        target_chunks = LocalPackStore(tmp_path / "target", durable=False)
        report = migrate.migrate(
            source_index, source_chunks, target_index, target_chunks, source_name="here"
        )
        target_chunks.close()
        target_index.close()
    finally:
        source_chunks.close()
        source_index.close()
    assert report.ok and report.files_verified == 3
    assert report.chunks_present > 0 and report.chunks_copied > 0
    assert report.chunks_unreadable == []

    with Store(tmp_path / "target", durability="none", index=pg_index) as store:
        for file_id, data in contents.items():
            with store.open_file(file_id) as reader:
                assert hashlib.sha256(reader.read()).digest() == hashlib.sha256(data).digest()
        assert store.missing(open_id) == [0, 1, 3]


def test_a_damaged_source_chunk_is_not_copied_and_its_file_fails_verification(tmp_path, pg_index):
    from support.chunks import corrupt

    contents, _ = _source(tmp_path / "source")
    source_chunks = LocalPackStore(tmp_path / "source")
    with Store(tmp_path / "source", durability="none") as store:
        victim = next(iter(contents))
        digest = store.manifest(victim)[-1][0]
    corrupt(source_chunks, digest)
    source_chunks.close()
    source_index = open_index(tmp_path / "source", readonly=True)
    source_chunks = LocalPackStore(tmp_path / "source", readonly=True)
    target_index = open_index(tmp_path / "target", **pg_index)
    target_chunks = LocalPackStore(tmp_path / "target", durable=False)
    try:
        report = migrate.migrate(
            source_index, source_chunks, target_index, target_chunks, source_name="here"
        )
    finally:
        for thing in (target_chunks, target_index, source_chunks, source_index):
            thing.close()
    assert report.chunks_unreadable == [digest]
    assert not report.ok
    assert [file_id for file_id, _ in report.files_failed] == [victim]
    assert report.files_verified == 2

"""LocalChunkStore specifics: the on-disk layout, no rewrite, deferred directory syncs.

What every chunk store must do is in test_chunkstore_conformance.py.
"""

import os

import blake3
import pytest
from ingestd.cas import ChecksumMismatch, LocalChunkStore

pytestmark = pytest.mark.unit


def path(root, digest: str):
    # The layout a data directory has always had; other versions read it.
    return root / "objects" / digest[:2] / digest[2:4] / digest


def test_put_names_object_by_blake3_and_reads_back(tmp_path):
    store = LocalChunkStore(tmp_path)
    data = os.urandom(3000)
    result = store.put(data)
    digest = blake3.blake3(data).hexdigest()
    assert result.hash == digest and result.size == 3000 and not result.existed
    assert path(tmp_path, digest).read_bytes() == data
    assert store.read(digest) == data
    assert store.verify(digest)
    assert list(os.scandir(tmp_path / "tmp")) == []


def test_existing_object_is_never_rewritten(tmp_path):
    store = LocalChunkStore(tmp_path)
    first = store.put(b"same bytes")
    inode = path(tmp_path, first.hash).stat().st_ino
    second = store.put(b"same bytes")
    assert second.existed and second.hash == first.hash
    assert path(tmp_path, first.hash).stat().st_ino == inode
    # The directory still needs syncing: its creator may not have synced it yet.
    assert str(path(tmp_path, first.hash).parent) in second.pending
    assert list(os.scandir(tmp_path / "tmp")) == []


def test_expected_hash_mismatch_stores_nothing(tmp_path):
    store = LocalChunkStore(tmp_path)
    with pytest.raises(ChecksumMismatch):
        store.put(b"abc", expected_hash="0" * 64)
    assert list(store.iter_hashes()) == []
    assert list(os.scandir(tmp_path / "tmp")) == []


def test_verify_detects_corruption_and_absence(tmp_path):
    store = LocalChunkStore(tmp_path)
    digest = store.put(b"payload").hash
    path(tmp_path, digest).write_bytes(b"paylo4d")
    assert not store.verify(digest)
    assert not store.verify("ab" * 32)


def test_incremental_writer_matches_one_shot(tmp_path):
    store = LocalChunkStore(tmp_path)
    data = os.urandom(1 << 18)
    w = store.writer()
    for i in range(0, len(data), 10_000):
        w.write(data[i : i + 10_000])
    assert w.commit().hash == blake3.blake3(data).hexdigest()


def test_stale_temp_files_are_removed_on_open(tmp_path):
    LocalChunkStore(tmp_path)
    (tmp_path / "tmp" / "crashed.part").write_bytes(b"half")
    LocalChunkStore(tmp_path)
    assert list(os.scandir(tmp_path / "tmp")) == []

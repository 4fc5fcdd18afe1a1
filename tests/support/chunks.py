"""Reaching behind the chunk store's back, as a failing disk or an operator would.

The store keeps chunks in packs (`LocalPackStore`), or in the older layout of
one file per chunk; these helpers find a chunk's bytes in either, so that a
test can damage, lose or age one without knowing which.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ingestd.cas import ChunkStore, LocalChunkStore, LocalPackStore
from ingestd.daemon.core.config import Config
from ingestd.daemon.core.services import open_chunks as configured_chunks


def open_chunks(data_dir: Path) -> LocalPackStore:
    """The data directory's chunk store, read-only (a daemon may be running)."""
    return LocalPackStore(data_dir, readonly=True)


def stored_hashes(where: Path | Config) -> set[str]:
    """Every chunk a store holds: a data directory's packs, or those of the
    backends a config names (S3, a pack index in PostgreSQL)."""
    if isinstance(where, Config):
        chunks: ChunkStore = configured_chunks(where, readonly=True)
    else:
        chunks = open_chunks(where)
    try:
        return set(chunks.iter_hashes())
    finally:
        chunks.close()


def _extent(chunks: ChunkStore, digest: str) -> tuple[Path, int, int]:
    found = chunks.extent(digest)
    assert found is not None, f"{digest} is not in a local file"
    return found


def corrupt(chunks: ChunkStore, digest: str, at: int = 10) -> None:
    """Flip one byte of a stored chunk, in place."""
    path, offset, length = _extent(chunks, digest)
    position = offset + min(at, length - 1)
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, position)
        os.pwrite(fd, bytes([byte[0] ^ 0xFF]), position)
    finally:
        os.close(fd)


def lose(chunks: ChunkStore, digest: str) -> None:
    """The store no longer has a chunk (its bytes are gone), whatever records say."""
    chunks.delete(digest)


def make_old(chunks: ChunkStore, digest: str, seconds: float) -> None:
    """Date a chunk's last write `seconds` back, as the orphan sweep judges ages."""
    if isinstance(chunks, LocalPackStore) and chunks._pack_extent(digest) is not None:
        index = chunks._index
        assert index is not None
        layout = struct.Struct(">16sQQd")
        with index.write() as txn:
            key = bytes.fromhex(digest)
            pack_id, offset, length, written = layout.unpack(txn.get(key, db=index.locations))
            txn.put(
                key, layout.pack(pack_id, offset, length, written - seconds), db=index.locations
            )
        chunks._touched.pop(digest, None)
        return
    legacy = chunks.legacy if isinstance(chunks, LocalPackStore) else chunks
    assert isinstance(legacy, LocalChunkStore)
    path = legacy._path(digest)
    old = path.stat().st_mtime - seconds
    os.utime(path, (old, old))

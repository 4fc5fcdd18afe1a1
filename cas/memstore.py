"""A chunk store in memory: for tests, and the reference for the interface."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from .chunkstore import ChunkHandle, ChunkStore, ChunkWriter, PutResult
from .errors import CorruptObject


class MemoryChunkStore(ChunkStore):
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._objects: dict[str, bytes] = {}
        self._written: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock
        # What `quarantine` moved aside.
        self.quarantined: dict[str, bytes] = {}
        # Everything is durable the moment it is committed (as durable as memory is).
        self.durable = False

    def writer(self, expected_hash: str | None = None, lane: object | None = None) -> ChunkWriter:
        return _MemoryWriter(self, expected_hash)

    def _store(self, digest: str, data: bytes) -> bool:
        with self._lock:
            existed = digest in self._objects
            if not existed:
                self._objects[digest] = data
            self._written[digest] = self._clock()
            return existed

    def sync(self, puts: Iterable[PutResult]) -> None:
        pass

    def open(self, digest: str) -> ChunkHandle:
        with self._lock:
            data = self._objects.get(digest)
        if data is None:
            raise CorruptObject(f"object {digest} is missing from the store")
        return _MemoryHandle(data)

    def exists(self, digest: str) -> bool:
        with self._lock:
            return digest in self._objects

    def size(self, digest: str) -> int | None:
        with self._lock:
            data = self._objects.get(digest)
        return None if data is None else len(data)

    def age(self, digest: str, now: float) -> float | None:
        with self._lock:
            written = self._written.get(digest)
        return None if written is None else now - written

    def delete(self, digest: str) -> None:
        with self._lock:
            self._objects.pop(digest, None)
            self._written.pop(digest, None)

    def quarantine(self, digest: str) -> None:
        with self._lock:
            data = self._objects.pop(digest, None)
            self._written.pop(digest, None)
            if data is not None:
                self.quarantined[digest] = data

    def iter_hashes(self) -> Iterator[str]:
        with self._lock:
            digests = sorted(self._objects)
        yield from digests


class _MemoryHandle(ChunkHandle):
    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readinto(self, buffer: memoryview, offset: int) -> int:
        piece = self._data[offset : offset + len(buffer)]
        buffer[: len(piece)] = piece
        return len(piece)

    def close(self) -> None:
        pass


class _MemoryWriter(ChunkWriter):
    def __init__(self, store: MemoryChunkStore, expected_hash: str | None) -> None:
        super().__init__(expected_hash)
        self._store = store
        self._buf = bytearray()

    @property
    def size(self) -> int:
        return len(self._buf)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hasher.update(data)
        self._buf += data

    def commit(self) -> PutResult:
        digest = self._checked_digest()
        size = len(self._buf)
        existed = self._store._store(digest, bytes(self._buf))
        self._buf = bytearray()
        return PutResult(digest, size, existed)

    def abort(self) -> None:
        self._buf = bytearray()

"""The chunk store on the local filesystem: chunks appended to pack files.

Layout under ``<root>/packs/``: ``<id[0:2]>/<id>.pack``, files of chunks
back to back, each written by one writer at a time and never rewritten; and
``index/``, an LMDB of its own (`cas.packindex`; or tables of the
PostgreSQL index) mapping each chunk's hash to (pack, offset, length, when
written) and each pack to its live chunks and bytes. Which
chunks exist is what that index says, never what a listing shows
(docs/storage-layout.md gives the measurements behind the layout).

A chunk is appended to an open pack while it is hashed; committing it names
it in memory only (other threads of this process see it at once), and
`sync` makes a batch durable: one fdatasync per pack touched, then one
commit of their locations, before the main index's commit that refers to
them. A chunk whose bytes the store held already is cut off the pack again,
as is an aborted one; a crash leaves at most unnamed bytes at a pack's end.

A writing process holds an exclusive `flock` on each pack it appends to,
until every chunk it put there is recorded: a pack with no live chunk is
deleted only by whoever can take that lock, so never under a writer, and
never when the writer has died with its bytes unrecorded.

The data directory's older layout (one file per chunk under ``objects/``,
`LocalChunkStore`) stays readable: a chunk absent from the pack index is
looked for there, and deleting or quarantining one works in both.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .chunkstore import ChunkHandle, ChunkStore, ChunkWriter, PutResult
from .errors import CorruptObject, StorageError
from .localstore import LocalChunkStore, fsync_dir
from .packindex import LmdbPackIndex, PgPackIndex

__all__ = ["PACK_BYTES", "LocalPackStore"]

#: A pack is closed to new chunks once it holds this much.
PACK_BYTES = 64 << 20
_PACK_ID_BYTES = 16
# The pack id of chunks of no bytes: they are in no pack.
_NO_PACK = bytes(_PACK_ID_BYTES)
# chunk hash (32 raw bytes) -> pack id, offset, length, written (wall clock)
_LOCATION = struct.Struct(">16sQQd")
# pack id -> live chunks, live bytes
_PACK_USE = struct.Struct(">QQ")


class _Pack:
    """A pack this process appends to: one writer at a time owns it."""

    __slots__ = ("id", "path", "fd", "size", "lane", "unrecorded", "full", "writing")

    def __init__(self, pack_id: bytes, path: Path, fd: int) -> None:
        self.id = pack_id
        self.path = path
        self.fd = fd
        self.size = 0
        # The lane that last wrote here, while it lives: its writers (one
        # request's chunks) keep to this pack, and others keep off it.
        self.lane: weakref.ref[object] | None = None
        # Chunks committed here whose locations are not recorded yet.
        self.unrecorded = 0
        self.full = False
        # A writer has it (taken, not given back): it may not be closed.
        self.writing = True


class _Chunk:
    """A committed chunk whose location is not recorded yet (`PutResult.pending`)."""

    __slots__ = ("digest", "pack", "offset", "length", "written", "recorded", "stored_in")

    def __init__(self, digest: str, pack: _Pack | None, offset: int, length: int) -> None:
        self.digest = digest
        self.pack = pack
        self.offset = offset
        self.length = length
        self.written = time.time()
        self.recorded = False
        # Where `_persist` put the bytes when that is not the pack itself
        # (an object of a remote store): container id, offset in it.
        self.stored_in: tuple[bytes, int] | None = None

    def container(self) -> tuple[bytes, int]:
        """(container id, offset) as the location records it."""
        if self.stored_in is not None:
            return self.stored_in
        return (_NO_PACK if self.pack is None else self.pack.id), self.offset

    def location(self) -> bytes:
        container, offset = self.container()
        return _LOCATION.pack(container, offset, self.length, self.written)


class _Touch:
    """A re-put of a recorded chunk: its age starts again at `sync`."""

    __slots__ = ("digest",)

    def __init__(self, digest: str) -> None:
        self.digest = digest


class LocalPackStore(ChunkStore):
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        durable: bool = True,
        readonly: bool = False,
        worker: str | None = None,
        pack_bytes: int = PACK_BYTES,
        pack_index: Mapping[str, Any] | None = None,
    ) -> None:
        """`readonly`: this process only reads; `worker`: one of several
        processes sharing the directory (see `LocalChunkStore`);
        `pack_index`: the PostgreSQL schema to record locations in (`dsn`,
        `schema`, `pool_size`) instead of an LMDB under packs/index/."""
        self.root = Path(root)
        self.packs_dir = self.root / "packs"
        self.durable = durable
        self.pack_bytes = pack_bytes
        self.legacy = LocalChunkStore(root, durable=durable, readonly=readonly, worker=worker)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._free: list[_Pack] = []
        self._held: set[_Pack] = set()
        self._unrecorded: dict[str, _Chunk] = {}
        # Recorded chunks put again since the last `sync`: when.
        self._touched: dict[str, float] = {}
        index_dir = self.packs_dir / "index"
        self._index: LmdbPackIndex | PgPackIndex | None = None
        if pack_index is not None:
            self._index = PgPackIndex(pack_index, durable=durable, readonly=readonly)
        elif not readonly or index_dir.is_dir():  # (read-only and none: nothing in packs yet)
            self._index = LmdbPackIndex(index_dir, durable=durable, readonly=readonly)
        if self._index is not None:
            self._locations, self._uses = self._index.locations, self._index.packs

    # -- writing ------------------------------------------------------------------

    def writer(self, expected_hash: str | None = None, lane: object | None = None) -> ChunkWriter:
        return _PackWriter(self, expected_hash, lane)

    def _take(self, lane: object | None) -> _Pack:
        """An open pack for one writer, preferably the one its lane wrote last."""
        with self._lock:
            mine = [p for p in self._free if p.lane is not None and p.lane() is lane]
            unclaimed = [p for p in self._free if p.lane is None or p.lane() is None]
            candidates = (mine or unclaimed) if lane is not None else unclaimed
            pack = candidates[-1] if candidates else None
            if pack is not None:
                self._free.remove(pack)
                pack.writing = True
        if pack is None:
            pack = self._new_pack()
        pack.lane = None if lane is None else weakref.ref(lane)
        return pack

    def _new_pack(self) -> _Pack:
        pack_id = secrets.token_bytes(_PACK_ID_BYTES)
        path = self._pack_path(pack_id)
        # Locked under another name first: a sweep may take any unlocked pack.
        fresh = path.with_suffix(".new")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(fresh, path)
            if self.durable:
                fsync_dir(path.parent)  # the pack's name, once per pack
        except OSError as exc:
            raise StorageError(f"could not start a pack: {exc}") from exc
        pack = _Pack(pack_id, path, fd)
        with self._lock:
            self._held.add(pack)
        return pack

    def _give_back(self, pack: _Pack) -> None:
        with self._lock:
            pack.writing = False
            if pack.full or pack.size >= self.pack_bytes:
                pack.full = True
                close = pack.unrecorded == 0
            else:
                self._free.append(pack)
                close = False
        if close:
            self._close_pack(pack)

    def _close_pack(self, pack: _Pack) -> None:
        with self._lock:
            self._held.discard(pack)
        if pack.fd >= 0:
            os.close(pack.fd)  # and with it the lock
            pack.fd = -1

    def _commit(self, writer: _PackWriter, digest: str) -> PutResult:
        pack, start, size = writer._pack, writer._start, writer._size
        # Looked up outside the lock: every commit of this process takes it.
        recorded = self._recorded(digest)
        in_legacy = not recorded and self.legacy.touch(digest)
        with self._lock:
            earlier = self._unrecorded.get(digest)
            chunk = None
            if earlier is not None:
                earlier.written = time.time()
            elif recorded:
                self._touched[digest] = time.time()
            elif not in_legacy:
                chunk = _Chunk(digest, pack if size else None, start, size)
                self._unrecorded[digest] = chunk
                if pack is not None:
                    pack.size = start + size
                    pack.unrecorded += 1
        if chunk is None:
            writer._cut()  # the bytes were here already: take them off the pack
            pending: tuple[object, ...] = ()
            if earlier is not None:
                pending = (earlier,)
            elif recorded:
                pending = (_Touch(digest),)
            return PutResult(digest, size, True, pending)
        if pack is not None:
            self._give_back(pack)
        return PutResult(digest, size, False, (chunk,))

    def sync(self, puts: Iterable[PutResult]) -> None:
        new: dict[str, _Chunk] = {}
        touched: list[str] = []
        for put in puts:
            for item in put.pending:
                if isinstance(item, _Chunk) and not item.recorded:
                    new[item.digest] = item
                elif isinstance(item, _Touch):
                    touched.append(item.digest)
        if not new and not touched:
            return
        assert self._index is not None, "a read-only store does not write"
        with self._sync_lock:
            chunks = [c for c in new.values() if not c.recorded]
            self._persist(chunks)
            self._record(chunks, touched)
            closing = []
            with self._lock:
                for digest in touched:
                    self._touched.pop(digest, None)
                for chunk in chunks:
                    if chunk.recorded:
                        continue  # deleted meanwhile, its pack's count given back then
                    chunk.recorded = True
                    if self._unrecorded.get(chunk.digest) is chunk:
                        del self._unrecorded[chunk.digest]
                    pack = chunk.pack
                    if pack is not None:
                        pack.unrecorded -= 1
                        if pack.full and pack.unrecorded == 0 and not pack.writing:
                            closing.append(pack)
            for pack in closing:
                self._close_pack(pack)

    def _persist(self, chunks: list[_Chunk]) -> None:
        """Make these chunks' bytes durable before their locations are recorded."""
        if self.durable:
            for pack in {c.pack for c in chunks if c.pack is not None}:
                try:
                    os.fdatasync(pack.fd)
                except OSError as exc:
                    raise StorageError(f"could not make a pack durable: {exc}") from exc

    def _record(self, chunks: list[_Chunk], touched: list[str]) -> None:
        assert self._index is not None
        now = time.time()
        with self._index.write() as txn:
            for chunk in chunks:
                key = bytes.fromhex(chunk.digest)
                # A racing process may have stored the same bytes first: its copy stays.
                if txn.put(key, chunk.location(), overwrite=False, db=self._locations):
                    container, _ = chunk.container()
                    if container != _NO_PACK:
                        self._count(txn, container, 1, chunk.length)
            for digest in touched:
                key = bytes.fromhex(digest)
                raw = txn.get(key, db=self._locations)
                if raw is not None:
                    pack_id, offset, length, _ = _LOCATION.unpack(raw)
                    txn.put(key, _LOCATION.pack(pack_id, offset, length, now), db=self._locations)

    def _count(self, txn: Any, pack_id: bytes, chunks: int, size: int) -> int:
        """Add to a pack's live figures; its live chunks after."""
        raw = txn.get(pack_id, db=self._uses)
        live, live_bytes = _PACK_USE.unpack(raw) if raw is not None else (0, 0)
        live, live_bytes = max(live + chunks, 0), max(live_bytes + size, 0)
        txn.put(pack_id, _PACK_USE.pack(live, live_bytes), db=self._uses)
        return live

    # -- reading ------------------------------------------------------------------

    def _location(self, digest: str) -> tuple[bytes, int, int, float] | None:
        if self._index is None:
            return None
        with self._index.read() as txn:
            raw = txn.get(bytes.fromhex(digest), db=self._locations)
        return None if raw is None else _LOCATION.unpack(raw)

    def _recorded(self, digest: str) -> bool:
        """Whether the pack index names this chunk and its pack holds its bytes."""
        found = self._location(digest)
        if found is None:
            return False
        pack_id, offset, length, _ = found
        return pack_id == _NO_PACK or self._holds(pack_id, offset + length)

    def _holds(self, pack_id: bytes, end: int) -> bool:
        """Whether a recorded pack still has its bytes up to `end`."""
        try:
            return self._pack_path(pack_id).stat().st_size >= end
        except FileNotFoundError:
            return False

    def _pack_path(self, pack_id: bytes) -> Path:
        name = pack_id.hex()
        return self.packs_dir / name[:2] / f"{name}.pack"

    def extent(self, digest: str) -> tuple[Path, int, int] | None:
        found = self._pack_extent(digest)
        return self.legacy.extent(digest) if found is None else found

    def _pack_extent(self, digest: str) -> tuple[Path, int, int] | None:
        """Where a chunk's bytes are in a pack: (pack file, offset, length);
        None for a chunk of the older layout, or one that is absent."""
        with self._lock:
            chunk = self._unrecorded.get(digest)
        if chunk is not None:
            pack_id, offset, length = (
                _NO_PACK if chunk.pack is None else chunk.pack.id,
                chunk.offset,
                chunk.length,
            )
        else:
            found = self._location(digest)
            if found is None:
                return None
            pack_id, offset, length, _ = found
        return self._pack_path(pack_id), offset, length

    def open(self, digest: str) -> ChunkHandle:
        found = self._pack_extent(digest)
        if found is None:
            return self.legacy.open(digest)
        path, offset, length = found
        if length == 0:
            return _PackHandle(-1, 0, 0)
        try:
            return _PackHandle(os.open(path, os.O_RDONLY | os.O_CLOEXEC), offset, length)
        except FileNotFoundError:
            raise CorruptObject(f"object {digest} is missing from the store") from None

    def exists(self, digest: str) -> bool:
        with self._lock:
            if digest in self._unrecorded:
                return True
        return self._recorded(digest) or self.legacy.exists(digest)

    def size(self, digest: str) -> int | None:
        found = self._pack_extent(digest)
        return self.legacy.size(digest) if found is None else found[2]

    def age(self, digest: str, now: float) -> float | None:
        with self._lock:
            chunk = self._unrecorded.get(digest)
            touched = self._touched.get(digest)
        if chunk is not None:
            return now - chunk.written
        found = self._location(digest)
        if found is None:
            return self.legacy.age(digest, now)
        return now - max(found[3], touched or 0.0)

    def iter_hashes(self) -> Iterator[str]:
        seen: set[str] = set()
        with self._lock:
            seen.update(self._unrecorded)
        yield from list(seen)
        if self._index is not None:
            with self._index.read() as txn:
                recorded = [
                    k.hex() for k, _ in self._index.items(txn, self._locations, values=False)
                ]
            for digest in recorded:
                if digest not in seen:
                    seen.add(digest)
                    yield digest
        for digest in self.legacy.iter_hashes():
            if digest not in seen:
                yield digest

    # -- deleting -----------------------------------------------------------------

    def delete(self, digest: str) -> None:
        with self._lock:
            chunk = self._unrecorded.pop(digest, None)
            pack = None if chunk is None else chunk.pack
            if chunk is not None:
                chunk.recorded = True  # never to be recorded now
            if pack is not None:
                pack.unrecorded -= 1
                if not (pack.full and pack.unrecorded == 0 and not pack.writing):
                    pack = None
        if pack is not None:
            self._close_pack(pack)
        emptied = None
        if self._index is not None:
            with self._index.write() as txn:
                key = bytes.fromhex(digest)
                raw = txn.get(key, db=self._locations)
                if raw is not None:
                    txn.delete(key, db=self._locations)
                    pack_id, _, length, _ = _LOCATION.unpack(raw)
                    if pack_id != _NO_PACK and self._count(txn, pack_id, -1, -length) == 0:
                        emptied = pack_id
        self.legacy.delete(digest)
        if emptied is not None:
            self._emptied(emptied)

    def _emptied(self, pack_id: bytes) -> None:
        """The last live chunk of a recorded pack was deleted."""
        self._remove_if_dead(pack_id)

    def _remove_if_dead(self, pack_id: bytes) -> bool:
        """Delete a pack no live chunk is in, unless a writer holds it."""
        assert self._index is not None
        path = self._pack_path(pack_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # still being written: its writer's sweep comes later
            with self._index.write() as txn:
                raw = txn.get(pack_id, db=self._uses)
                if raw is not None and _PACK_USE.unpack(raw)[0] > 0:
                    return False
                txn.delete(pack_id, db=self._uses)
                if fd >= 0:
                    os.unlink(path)
            if fd >= 0 and self.durable:
                fsync_dir(path.parent)
            return fd >= 0
        finally:
            if fd >= 0:
                os.close(fd)

    def sweep(self, grace: float, now: float) -> tuple[int, int]:
        """Delete packs with no live chunk (left by writers that died, or
        emptied while still written), older than `grace`: (packs, bytes)."""
        if self._index is None or not self.packs_dir.is_dir():
            return 0, 0
        with self._index.read() as txn:
            live = {k: _PACK_USE.unpack(v)[0] for k, v in self._index.items(txn, self._uses)}
        count = freed = 0
        for entry in self.packs_dir.glob("??/*.pack"):
            try:
                pack_id = bytes.fromhex(entry.stem)
                stat = entry.stat()
            except (ValueError, FileNotFoundError):
                continue
            if live.get(pack_id, 0) == 0 and now - stat.st_mtime > grace:
                if self._remove_if_dead(pack_id):
                    count += 1
                    freed += stat.st_size
        return count, freed

    def quarantine(self, digest: str) -> None:
        if self._pack_extent(digest) is None:
            self.legacy.quarantine(digest)
            return
        target = self.root / "quarantine" / digest
        target.parent.mkdir(exist_ok=True)
        data = self.read(digest)
        with open(target, "wb") as out:
            out.write(data)
            if self.durable:
                os.fsync(out.fileno())
        if self.durable:
            fsync_dir(target.parent)
        self.delete(digest)

    def close(self) -> None:
        with self._lock:
            packs = list(self._held)
            self._free.clear()
        for pack in packs:
            self._close_pack(pack)
        if self._index is not None:
            self._index.close()
            self._index = None


class _PackHandle(ChunkHandle):
    __slots__ = ("_fd", "_base", "_length")

    def __init__(self, fd: int, base: int, length: int) -> None:
        self._fd = fd
        self._base = base
        self._length = length

    def readinto(self, buffer: memoryview, offset: int) -> int:
        n = min(len(buffer), self._length - offset)
        if n <= 0:
            return 0
        return os.preadv(self._fd, [buffer[:n]], self._base + offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _PackWriter(ChunkWriter):
    def __init__(self, store: LocalPackStore, expected_hash: str | None, lane: object | None):
        super().__init__(expected_hash)
        self._store = store
        self._lane = lane
        self._pack: _Pack | None = None
        self._start = 0
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if not view:
            return
        if self._pack is None:
            self._pack = self._store._take(self._lane)
            self._start = self._pack.size
        self._hasher.update(view)
        position = self._start + self._size
        try:
            while view:
                written = os.pwrite(self._pack.fd, view, position)
                position += written
                view = view[written:]
        except OSError as exc:  # a full disk, typically: the store's fault, not the client's
            raise StorageError(f"could not write a chunk: {exc}") from exc
        self._size = position - self._start

    def commit(self) -> PutResult:
        digest = self._checked_digest()
        self._done = True
        return self._store._commit(self, digest)

    def _cut(self) -> None:
        """Take this writer's bytes off its pack and give the pack back."""
        pack, self._pack = self._pack, None
        if pack is None:
            return
        try:
            if self._size:
                os.ftruncate(pack.fd, self._start)
        finally:
            self._store._give_back(pack)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._cut()

"""The chunk store on the local filesystem: the data directory's ``objects/`` tree.

Layout: ``<root>/objects/<h[0:2]>/<h[2:4]>/<h>``. An object is streamed into
a temp file under ``<root>/tmp`` (same filesystem) while it is hashed, then
fdatasynced and hard-linked into place — `link` never replaces a name, so an
object already stored is never rewritten, even by a racing writer. The
directory fsyncs that make the new names durable are deferred to `sync`, so
that the index's group commit syncs each directory once per batch.

This module is the only one that knows object paths.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from .chunkstore import ChunkHandle, ChunkStore, ChunkWriter, PutResult, is_hash
from .errors import CorruptObject, StorageError


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_temp(root: str | os.PathLike[str]) -> None:
    """Remove every temp file under ``<root>/tmp`` (no process may be writing)."""
    tmp = Path(root) / "tmp"
    if not tmp.is_dir():
        return
    _remove_files(tmp)
    for entry in os.scandir(tmp):
        if entry.is_dir(follow_symlinks=False):
            _remove_files(Path(entry.path))


def _remove_files(directory: Path) -> None:
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)


class LocalChunkStore(ChunkStore):
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        durable: bool = True,
        readonly: bool = False,
        worker: str | None = None,
    ) -> None:
        """`readonly`: another process only reads objects (no set-up, no clean-up).
        `worker`: one of several processes sharing the directory, with temp
        files of its own under ``tmp/<worker>`` (the only ones it clears)."""
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp" if worker is None else self.root / "tmp" / worker
        self.durable = durable
        if readonly:
            return
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Temp files are only ever half-written objects from a crashed process.
        if worker is None:
            clear_temp(self.root)
        else:
            _remove_files(self.tmp_dir)

    def _path(self, digest: str) -> Path:
        return self.objects_dir / digest[0:2] / digest[2:4] / digest

    def writer(self, expected_hash: str | None = None, lane: object | None = None) -> ChunkWriter:
        return _FileWriter(self, expected_hash)

    def sync(self, puts: Iterable[PutResult]) -> None:
        if not self.durable:
            return
        for directory in sorted({d for p in puts for d in p.pending}):
            fsync_dir(directory)

    def open(self, digest: str) -> ChunkHandle:
        try:
            return _FileHandle(os.open(self._path(digest), os.O_RDONLY))
        except FileNotFoundError:
            raise CorruptObject(f"object {digest} is missing from the store") from None

    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def size(self, digest: str) -> int | None:
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def extent(self, digest: str) -> tuple[Path, int, int] | None:
        path = self._path(digest)
        try:
            return path, 0, path.stat().st_size
        except FileNotFoundError:
            return None

    def age(self, digest: str, now: float) -> float | None:
        try:
            return now - self._path(digest).stat().st_mtime
        except FileNotFoundError:
            return None

    def touch(self, digest: str) -> bool:
        """Restart an object's age (it is about to be attached again); False if absent."""
        try:
            os.utime(self._path(digest))
        except FileNotFoundError:
            return False
        return True

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self._path(digest))
        except FileNotFoundError:
            pass

    def quarantine(self, digest: str) -> None:
        # Under <root>/quarantine/, named by the hash it should have had.
        target = self.root / "quarantine" / digest
        target.parent.mkdir(exist_ok=True)
        try:
            os.replace(self._path(digest), target)
        except FileNotFoundError:
            return
        if self.durable:
            fsync_dir(target.parent)
            fsync_dir(self._path(digest).parent)

    def iter_hashes(self) -> Iterator[str]:
        for first in sorted(os.scandir(self.objects_dir), key=lambda e: e.name):
            if not first.is_dir():
                continue
            for second in os.scandir(first.path):
                if second.is_dir():
                    for obj in os.scandir(second.path):
                        if is_hash(obj.name):
                            yield obj.name


class _FileHandle(ChunkHandle):
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def readinto(self, buffer: memoryview, offset: int) -> int:
        return os.preadv(self._fd, [buffer], offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _FileWriter(ChunkWriter):
    def __init__(self, store: LocalChunkStore, expected_hash: str | None) -> None:
        super().__init__(expected_hash)
        self._store = store
        self._size = 0
        self._tmp = store.tmp_dir / f"{secrets.token_hex(12)}.part"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self._hasher.update(view)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:  # a full disk, typically: the store's fault, not the client's
            raise StorageError(f"could not write a chunk: {exc}") from exc
        self._size += len(data)

    def commit(self) -> PutResult:
        digest = self._checked_digest()
        final = self._store._path(digest)
        # The directory is synced even when the object existed: the writer
        # that created it may not have synced it yet.
        dirty: list[str] = [str(final.parent)]
        try:
            if self._store.durable:
                # fdatasync flushes the bytes and the size/allocation needed to
                # read them back; timestamps are not worth a journal commit.
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1
            if not final.parent.is_dir():
                final.parent.mkdir(parents=True, exist_ok=True)
                dirty += [str(final.parent.parent), str(final.parent.parent.parent)]
            try:
                os.link(self._tmp, final)
                existed = False
            except FileExistsError:
                existed = True
                # Refresh the age the orphan sweep judges by: this object is
                # about to be attached again.
                os.utime(final)
            os.unlink(self._tmp)
        except OSError as exc:
            self.abort()
            raise StorageError(f"could not store object {digest}: {exc}") from exc
        self._done = True
        return PutResult(digest, self._size, existed, tuple(dirty))

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self._done:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass

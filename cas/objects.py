"""Chunk objects on disk, named by the BLAKE3 of their bytes.

Layout: ``<root>/objects/<h[0:2]>/<h[2:4]>/<h>``. A chunk is streamed into a
temp file on the same filesystem while it is hashed, fsynced, then renamed
into place. Directory fsyncs are left to the caller (the index's group
commit batches them), so `ObjectWriter.commit` returns the directories whose
entries changed.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import blake3

from .errors import ChunkHashMismatch, CorruptObject, StorageError

HASH_HEX_LEN = 64
_READ_SIZE = 1 << 20


def is_hash(value: str) -> bool:
    return len(value) == HASH_HEX_LEN and all(c in "0123456789abcdef" for c in value)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class PutResult:
    hash: str
    size: int
    existed: bool
    # Directories whose entries changed and must be fsynced before the chunk
    # is acknowledged.
    dirty_dirs: tuple[str, ...]


class ObjectStore:
    def __init__(
        self, root: str | os.PathLike[str], *, durable: bool = True, reader: bool = False
    ) -> None:
        """`reader`: another process only reads objects (no set-up, no clean-up)."""
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        self.durable = durable
        if reader:
            return
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._clear_tmp()

    def _clear_tmp(self) -> None:
        # Temp files are only ever half-written objects from a crashed process.
        for entry in os.scandir(self.tmp_dir):
            if entry.is_file():
                os.unlink(entry.path)

    def path(self, digest: str) -> Path:
        return self.objects_dir / digest[0:2] / digest[2:4] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self, expected_hash: str | None = None) -> ObjectWriter:
        return ObjectWriter(self, expected_hash)

    def put(self, data: bytes | memoryview, expected_hash: str | None = None) -> PutResult:
        w = self.writer(expected_hash)
        try:
            w.write(data)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    def read(self, digest: str) -> bytes:
        try:
            with open(self.path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise CorruptObject(f"object {digest} is missing from the store") from None

    def verify(self, digest: str) -> bool:
        """Re-hash an object; False if it is missing or its bytes changed."""
        h = blake3.blake3()
        try:
            with open(self.path(digest), "rb") as f:
                while block := f.read(_READ_SIZE):
                    h.update(block)
        except FileNotFoundError:
            return False
        return h.hexdigest() == digest

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def age(self, digest: str, now: float) -> float | None:
        """Seconds since the object was last written, or None if it is absent."""
        try:
            return now - self.path(digest).stat().st_mtime
        except FileNotFoundError:
            return None

    def iter_hashes(self):
        for first in sorted(os.scandir(self.objects_dir), key=lambda e: e.name):
            if not first.is_dir():
                continue
            for second in os.scandir(first.path):
                if second.is_dir():
                    for obj in os.scandir(second.path):
                        if is_hash(obj.name):
                            yield obj.name


class ObjectWriter:
    """Streams one chunk into a temp file while hashing it.

    Not thread-safe; use from one thread at a time. `commit` or `abort` must
    be called exactly once.
    """

    def __init__(self, store: ObjectStore, expected_hash: str | None) -> None:
        self._store = store
        self._expected = expected_hash
        self._hasher = blake3.blake3()
        self._size = 0
        self._tmp = store.tmp_dir / f"{secrets.token_hex(12)}.part"
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self._hasher.update(view)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def commit(self) -> PutResult:
        digest = self._hasher.hexdigest()
        if self._expected is not None and digest != self._expected:
            self.abort()
            raise ChunkHashMismatch(
                f"chunk hashes to {digest}, not the declared {self._expected}",
                actual=digest,
                expected=self._expected,
            )
        final = self._store.path(digest)
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
                # link() refuses to replace an existing name, so an object
                # already stored is never rewritten, even by a racing writer.
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
        # The directory is in the fsync set even when the object existed: the
        # writer that created it may not have synced it yet.
        return PutResult(digest, self._size, existed, tuple(dirty))

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

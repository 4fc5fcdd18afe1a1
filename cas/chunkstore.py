"""The chunk-store interface: immutable objects named by the BLAKE3 of their bytes.

Everything above this interface (sessions, files, completion, readers, GC)
deals in hashes only; where and how bytes are kept is the implementation's
business, durability included. Implementations: `LocalPackStore` (the data
directory's packs, the default), `LocalChunkStore` (the older ``objects/``
tree of one file per chunk) and `MemoryChunkStore` (tests). Each must pass
the conformance suite in ``tests/cas/test_chunkstore_conformance.py``.

The contract:

- `writer(expected_hash)` streams one object in; `ChunkWriter.commit` checks
  the hash (refusing a mismatch and keeping nothing), and names the object.
  Committing bytes that are already stored rewrites nothing. A writer that is
  aborted, or never committed, leaves nothing behind that `exists` or
  `iter_hashes` would report.
- A committed object may not be durable yet, nor seen by other processes:
  `sync(puts)` makes the given commits durable and recorded, as one batch
  (the index calls it once per group commit, before the commit that refers
  to them, whether or not the store is `durable`).
- `open(digest)` gives a handle for ranged reads; reads past the end are short.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

from .errors import ChunkHashMismatch, CorruptObject

HASH_HEX_LEN = 64
READ_BLOCK = 1 << 20
_HEX = frozenset("0123456789abcdef")


def is_hash(value: str) -> bool:
    """Whether `value` is a lowercase hex BLAKE3 digest."""
    return len(value) == HASH_HEX_LEN and _HEX.issuperset(value)


@dataclass(frozen=True, slots=True)
class PutResult:
    hash: str
    size: int
    # True when the store already held the object (nothing was written).
    existed: bool
    # What the implementation needs to make this commit durable in `sync`;
    # opaque to everyone else.
    pending: tuple[object, ...] = ()


class ChunkWriter(abc.ABC):
    """Streams one object into the store. Use from one thread at a time;
    `commit` or `abort` ends it (abort after commit is harmless).

    The hashing and the check against the expected hash are the same for
    every store: implementations feed `_hasher` and call `_checked_digest`."""

    def __init__(self, expected_hash: str | None) -> None:
        self._expected = expected_hash
        self._hasher = blake3.blake3()

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Bytes written so far."""

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def hexdigest(self) -> str:
        """The BLAKE3 of the bytes written so far."""
        return self._hasher.hexdigest()

    @abc.abstractmethod
    def commit(self) -> PutResult:
        """Name the object by its hash. Raises `ChunkHashMismatch` (nothing kept)
        when an expected hash was given and differs, `StorageError` on failure."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Forget the bytes written."""

    def _checked_digest(self) -> str:
        """The digest of what was written; aborts and raises if it is not the expected one."""
        digest = self._hasher.hexdigest()
        if self._expected is not None and digest != self._expected:
            self.abort()
            raise ChunkHashMismatch(
                f"chunk hashes to {digest}, not the declared {self._expected}",
                actual=digest,
                expected=self._expected,
            )
        return digest


class Lane:
    """Names one stream of writers (a request's chunks, one after the other)
    for `ChunkStore.writer`; a store may keep their bytes together while the
    lane lives."""

    __slots__ = ("__weakref__",)


class ChunkHandle(abc.ABC):
    """An open object, for reads at any offset."""

    @abc.abstractmethod
    def readinto(self, buffer: memoryview, offset: int) -> int:
        """Fill `buffer` from `offset`; fewer bytes only at the object's end."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ChunkHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChunkStore(abc.ABC):
    #: Whether commits are made durable (fsync) at all.
    durable: bool = False

    @abc.abstractmethod
    def writer(self, expected_hash: str | None = None, lane: object | None = None) -> ChunkWriter:
        """`lane` (a `Lane`, or any object that takes weak references):
        writers given the same lane are one stream of bytes."""

    @abc.abstractmethod
    def sync(self, puts: Iterable[PutResult]) -> None:
        """Make these commits durable, together (a no-op if they already are)."""

    @abc.abstractmethod
    def open(self, digest: str) -> ChunkHandle:
        """Raises `CorruptObject` when the object is missing."""

    @abc.abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abc.abstractmethod
    def size(self, digest: str) -> int | None:
        """The object's length, or None when it is absent."""

    @abc.abstractmethod
    def age(self, digest: str, now: float) -> float | None:
        """Seconds (wall clock) since the object was last written or re-put;
        None when it is absent. The orphan sweep judges by it."""

    @abc.abstractmethod
    def delete(self, digest: str) -> None:
        """Remove an object; a missing one is not an error."""

    @abc.abstractmethod
    def iter_hashes(self) -> Iterator[str]: ...

    @abc.abstractmethod
    def quarantine(self, digest: str) -> None:
        """Move an object whose bytes do not match its name out of the store,
        kept for an operator to inspect (fsck --repair); it no longer `exists`."""

    # -- conveniences built on the above; implementations may do better ------

    def put(
        self, data: bytes | bytearray | memoryview, expected_hash: str | None = None
    ) -> PutResult:
        w = self.writer(expected_hash)
        try:
            w.write(data)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes [offset, offset + length) of an object (to its end without `length`)."""
        if length is None:
            size = self.size(digest)
            if size is None:
                raise CorruptObject(f"object {digest} is missing from the store")
            length = max(size - offset, 0)
        buf = bytearray(length)
        view = memoryview(buf)
        filled = 0
        with self.open(digest) as handle:
            while filled < length:
                n = handle.readinto(view[filled:], offset + filled)
                if n == 0:
                    break
                filled += n
        del view
        del buf[filled:]
        return bytes(buf)

    def verify(self, digest: str) -> bool:
        """Re-hash an object; False if it is missing or its bytes changed."""
        h = blake3.blake3()
        buf = bytearray(READ_BLOCK)
        view = memoryview(buf)
        try:
            with self.open(digest) as handle:
                offset = 0
                while n := handle.readinto(view, offset):
                    h.update(view[:n])
                    offset += n
        except CorruptObject:
            return False
        return h.hexdigest() == digest

    def extent(self, digest: str) -> tuple[Path, int, int] | None:
        """Where an object's bytes lie in a local file: (path, offset, length),
        so that a copy can be made by the kernel. None when the store keeps
        them elsewhere (the default) or the object is absent."""
        return None

    def sweep(self, grace: float, now: float) -> tuple[int, int]:
        """Free space the store keeps beyond its objects (empty packs, say)
        left for `grace` seconds: (containers removed, bytes). None by default."""
        return 0, 0

    def close(self) -> None:  # noqa: B027 - optional for implementations
        """Release what the store holds open (nothing, by default)."""

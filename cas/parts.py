"""The parts ledger: which chunk each index of an open session holds.

Key ``<session id>/<index, 4 bytes big-endian>`` in two databases: "parts",
the chunks attached so far, and "declared", the chunk list a client announced
(for a declared layout). Every part holds one chunk reference (`ChunkRefs`);
the session's `received_chunks`/`received_bytes` are kept here, in the same
transaction as the parts they count.

All methods run inside a write (or read) transaction the caller holds, so a
part and what depends on it change together.
"""

from __future__ import annotations

from collections.abc import Iterator

import lmdb

from . import records
from .chunkstore import is_hash
from .errors import ChunkConflict, InvalidLayout
from .index import Index
from .records import Session
from .refs import ChunkRefs
from .sessions import Sessions

Entry = tuple[str, int]  # (BLAKE3 hex, length)


def part_key(session_id: str, index: int) -> bytes:
    return session_prefix(session_id) + index.to_bytes(4, "big")


def session_prefix(session_id: str) -> bytes:
    return session_id.encode() + b"/"


class Parts:
    def __init__(self, index: Index, refs: ChunkRefs, sessions: Sessions) -> None:
        self._index = index
        self._parts = index.db["parts"]
        self._declared = index.db["declared"]
        self._refs = refs
        self._sessions = sessions

    # -- reading ---------------------------------------------------------------

    def get(self, txn: lmdb.Transaction, session_id: str, index: int) -> Entry | None:
        raw = txn.get(part_key(session_id, index), db=self._parts)
        return None if raw is None else records.unpack_entry(raw)

    def scan(self, txn: lmdb.Transaction, session_id: str) -> Iterator[tuple[int, Entry]]:
        """The attached parts in index order: (index, (hash, length))."""
        for suffix, raw in self._index.scan(txn, "parts", session_prefix(session_id)):
            yield int.from_bytes(suffix, "big"), records.unpack_entry(raw)

    def present(self, txn: lmdb.Transaction, session_id: str) -> set[int]:
        prefix = session_prefix(session_id)
        return {
            int.from_bytes(suffix, "big")
            for suffix, _ in self._index.scan(txn, "parts", prefix, values=False)
        }

    def entries(self, txn: lmdb.Transaction, session_id: str) -> list[Entry]:
        """The attached parts in order, without their indices."""
        return [entry for _, entry in self.scan(txn, session_id)]

    def declared(self, txn: lmdb.Transaction, session_id: str) -> Iterator[tuple[int, Entry]]:
        for suffix, raw in self._index.scan(txn, "declared", session_prefix(session_id)):
            yield int.from_bytes(suffix, "big"), records.unpack_entry(raw)

    def declared_at(self, txn: lmdb.Transaction, session_id: str, index: int) -> Entry | None:
        raw = txn.get(part_key(session_id, index), db=self._declared)
        return None if raw is None else records.unpack_entry(raw)

    # -- changing --------------------------------------------------------------

    def declare(self, txn: lmdb.Transaction, session_id: str, entries: list[Entry]) -> None:
        """Record the chunk list a client announced for a session."""
        for i, (digest, length) in enumerate(entries):
            txn.put(part_key(session_id, i), records.pack_entry(digest, length), db=self._declared)

    def attach(
        self, txn: lmdb.Transaction, session: Session, index: int, digest: str, length: int
    ) -> tuple[Session, bool]:
        """Make `index` hold this chunk (one more reference to it).

        Returns the updated session and whether anything changed: the same
        chunk again is an idempotent no-op; a different one raises
        `ChunkConflict`."""
        key = part_key(session.id, index)
        existing = txn.get(key, db=self._parts)
        if existing is not None:
            stored, _ = records.unpack_entry(existing)
            if stored != digest:
                raise ChunkConflict(
                    f"chunk {index} is already stored with different bytes",
                    stored_hash=stored,
                    sent_hash=digest,
                )
            return session, False
        self._refs.add(txn, digest, length, session.tenant)
        txn.put(key, records.pack_entry(digest, length), db=self._parts)
        session = self._sessions.update(
            txn,
            session,
            received_chunks=session.received_chunks + 1,
            received_bytes=session.received_bytes + length,
        )
        return session, True

    def replace(
        self, txn: lmdb.Transaction, session: Session, index: int, digest: str, length: int
    ) -> Session:
        """Make `index` hold this chunk instead of whatever it held (a stream's
        growing tail); the old chunk's reference is released, and the chunk
        deleted at once if nothing else uses it (a run of tiny PATCHes would
        otherwise leave one object per PATCH until the grace period ends)."""
        key = part_key(session.id, index)
        old = txn.get(key, db=self._parts)
        # Add before release: the same chunk again keeps its reference.
        self._refs.add(txn, digest, length, session.tenant)
        chunks, size = session.received_chunks + 1, session.received_bytes + length
        if old is not None:
            old_digest, old_length = records.unpack_entry(old)
            self._refs.release(txn, old_digest, session.tenant)
            if old_digest != digest:
                self._refs.reclaim(txn, old_digest)
            chunks, size = chunks - 1, size - old_length
        txn.put(key, records.pack_entry(digest, length), db=self._parts)
        return self._sessions.update(txn, session, received_chunks=chunks, received_bytes=size)

    def release(self, txn: lmdb.Transaction, session: Session) -> None:
        """Forget every part and the declared list, releasing the parts' references."""
        for digest in self._delete(txn, "parts", session.id):
            self._refs.release(txn, digest, session.tenant)
        self._delete(txn, "declared", session.id)

    def hand_over(self, txn: lmdb.Transaction, session_id: str) -> None:
        """Forget every part without releasing: their references now belong to
        the file recorded from them."""
        self._delete(txn, "parts", session_id)
        self._delete(txn, "declared", session_id)

    def _delete(self, txn: lmdb.Transaction, name: str, session_id: str) -> list[str]:
        prefix = session_prefix(session_id)
        found = list(self._index.scan(txn, name, prefix))
        for suffix, _ in found:
            txn.delete(prefix + suffix, db=self._index.db[name])
        return [records.unpack_entry(raw)[0] for _, raw in found]


def check_layout(size: int, chunks: list[tuple[str, int]], min_size: int, max_size: int) -> None:
    """Refuse a declared chunk list that does not fit an upload of `size` bytes."""
    total = 0
    for i, (digest, length) in enumerate(chunks):
        if not is_hash(digest):
            raise InvalidLayout(f"chunk {i}: {digest!r} is not a lowercase BLAKE3 hex digest")
        last = i == len(chunks) - 1
        if not (1 if last else min_size) <= length <= max_size:
            raise InvalidLayout(
                f"chunk {i} is {length} bytes; chunks must be {min_size}..{max_size} bytes "
                f"(the last one 1..{max_size})",
                index=i,
            )
        total += length
    if total != size:
        raise InvalidLayout(f"the chunk sizes add up to {total}, not the upload size {size}")

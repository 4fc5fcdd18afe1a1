"""Chunk references: how many manifest entries (of sessions and files) use each chunk.

The "chunks" database maps a raw 32-byte BLAKE3 to a `ChunkRecord`. A chunk
whose count drops to zero records when; garbage collection deletes it after a
grace period, unless it is attached again first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lmdb
import msgspec

from . import records
from .chunkstore import ChunkStore
from .errors import ObjectVanished
from .index import Index
from .records import ChunkRecord
from .tenants import TenantLedger

DEDUP_SCOPES = ("tenant", "global")


class ChunkRefs:
    def __init__(
        self,
        index: Index,
        chunks: ChunkStore,
        clock: Callable[[], float],
        ledger: TenantLedger,
        dedup_scope: str = "tenant",
    ) -> None:
        """`dedup_scope`: "tenant", a chunk is attached without its bytes only
        for a tenant that holds it; "global", for any tenant."""
        if dedup_scope not in DEDUP_SCOPES:
            raise ValueError(f"dedup_scope must be one of {DEDUP_SCOPES}")
        self._index = index
        self._db = index.db["chunks"]
        self._chunks = chunks
        self._clock = clock
        self._ledger = ledger
        self._global = dedup_scope == "global"

    def get(self, txn: lmdb.Transaction, digest: str) -> ChunkRecord | None:
        raw = txn.get(bytes.fromhex(digest), db=self._db)
        return None if raw is None else records.decode(ChunkRecord, raw)

    def live(self, txn: lmdb.Transaction, digest: str, length: int) -> bool:
        """Whether the store holds this chunk and can attach it without its bytes."""
        chunk = self.get(txn, digest)
        if chunk is None or chunk.size != length:
            return False
        # An unreferenced chunk may be collected at any moment after its grace
        # period, and fsck may have found one missing: then it is live only
        # while (or once again) its object is there.
        if chunk.refs > 0 and not chunk.missing:
            return True
        return self._chunks.exists(digest)

    def attachable(self, txn: lmdb.Transaction, digest: str, length: int, tenant: str) -> bool:
        """Whether `tenant` may use this chunk without sending its bytes. With
        the tenant scope, only one it holds: what another tenant stored is
        never confirmed (the bytes are sent, verified, and the object kept)."""
        if not (self._global or self._ledger.holds(txn, tenant, digest)):
            return False
        return self.live(txn, digest, length)

    def add(self, txn: lmdb.Transaction, digest: str, size: int, tenant: str) -> None:
        chunk = self.get(txn, digest)
        if chunk is None or chunk.refs == 0 or chunk.missing:
            # A chunk coming back from zero references may have just been
            # collected (or be one fsck found missing); its object must be there.
            if not self._chunks.exists(digest):
                raise ObjectVanished(f"object {digest} vanished before it was attached; retry")
        if chunk is None:
            chunk = ChunkRecord(size=size, refs=1, created=self._clock())
        else:
            # Its bytes are back (sent again) if it was missing.
            chunk = msgspec.structs.replace(
                chunk, refs=chunk.refs + 1, released=None, missing=False
            )
        self._index.put(txn, "chunks", bytes.fromhex(digest), chunk)
        self._ledger.hold(txn, tenant, digest, size)

    def release(self, txn: lmdb.Transaction, digest: str, tenant: str) -> None:
        self._ledger.let_go(txn, tenant, digest)
        chunk = self.get(txn, digest)
        if chunk is None:
            return
        refs = max(chunk.refs - 1, 0)
        chunk = msgspec.structs.replace(
            chunk, refs=refs, released=self._clock() if refs == 0 else None
        )
        self._index.put(txn, "chunks", bytes.fromhex(digest), chunk)

    def reclaim(self, txn: lmdb.Transaction, digest: str) -> int:
        """Delete a chunk nothing uses any more, now rather than after the grace
        period (a stream's tail that a longer one replaced); its size, or 0 if
        something still uses it. In the caller's write transaction, as garbage
        collection does: an upload that attaches it meanwhile is refused
        (`ObjectVanished`) and retries."""
        chunk = self.get(txn, digest)
        if chunk is None or chunk.refs > 0:
            return 0
        self.forget(txn, digest)
        return chunk.size

    def forget(self, txn: lmdb.Transaction, digest: str) -> None:
        """Drop the record and delete the object once that is committed."""
        txn.delete(bytes.fromhex(digest), db=self._db)
        self.delete_unrecorded(digest)

    def delete_unrecorded(self, digest: str) -> None:
        """From a write operation: delete the object after the commit, if no
        record names it then (one attached it again in the same batch)."""

        def delete(txn: lmdb.Transaction) -> None:
            if not self.known(txn, digest):
                self._chunks.delete(digest)

        self._index.after_commit(delete)

    def all(self, txn: lmdb.Transaction) -> Iterator[tuple[str, ChunkRecord]]:
        for key, raw in self._index.scan(txn, "chunks"):
            yield key.hex(), records.decode(ChunkRecord, raw)

    def known(self, txn: lmdb.Transaction, digest: str) -> bool:
        return txn.get(bytes.fromhex(digest), db=self._db) is not None

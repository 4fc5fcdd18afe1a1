"""Garbage collection: expired sessions, unreferenced chunks, orphan objects.

Nothing a live session or file references is ever deleted: a chunk goes only
when its reference count has been zero for a grace period, judged inside the
write transaction that forgets it; its object is deleted after that commit,
on the writer thread, so no upload can attach it meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lmdb

from .chunkstore import ChunkStore
from .index import Index
from .records import Session, SessionState
from .refs import ChunkRefs
from .sessions import Sessions


class GarbageCollector:
    def __init__(
        self,
        *,
        index: Index,
        chunks: ChunkStore,
        sessions: Sessions,
        refs: ChunkRefs,
        end_session: Callable[[lmdb.Transaction, Session, SessionState, str], Session],
        clock: Callable[[], float],
    ) -> None:
        self._index = index
        self._chunks = chunks
        self._sessions = sessions
        self._refs = refs
        self._end_session = end_session
        self._clock = clock

    def expire_sessions(self) -> list[str]:
        """End open sessions past their expiry and release their chunks."""
        now = self._clock()
        with self._index.reader() as txn:
            due = [
                s.id
                for s in self._sessions.all(txn)
                if s.state == SessionState.OPEN and s.expires <= now
            ]

        def op(txn: lmdb.Transaction) -> list[str]:
            expired = []
            for session_id in due:
                session = self._sessions.find(txn, session_id)
                # Re-checked: it may have completed since the scan.
                if session is not None and session.state == SessionState.OPEN:
                    self._end_session(
                        txn, session, SessionState.EXPIRED, "expired before completion"
                    )
                    expired.append(session_id)
            return expired

        return self._index.write(op) if due else []

    def collect(self, grace: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Delete chunks no session or file has used for `grace` seconds
        (`dry_run`: only count them). Returns (objects, bytes)."""
        cutoff = self._clock() - grace

        def op(txn: lmdb.Transaction) -> tuple[int, int]:
            count = freed = 0
            for digest, chunk in list(self._refs.all(txn)):
                if chunk.refs == 0 and chunk.released is not None and chunk.released <= cutoff:
                    if not dry_run:
                        self._refs.forget(txn, digest)
                    count += 1
                    freed += chunk.size
            return count, freed

        if dry_run:
            with self._index.reader() as txn:
                return op(txn)
        return self._index.write(op)

    def sweep_orphans(self, grace: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Delete objects that no chunk record names, older than `grace`.

        An object is written before it is attached to a session; if the attach
        is refused (a conflicting re-send) or the process dies in between, the
        object has no record. The walk runs outside the writer; each candidate
        is re-checked inside one write operation before it goes.
        Returns (objects deleted, bytes freed).
        """
        now = time.time()  # object ages are wall-clock times
        candidates = []
        with self._index.reader() as txn:
            for digest in self._chunks.iter_hashes():
                if not self._refs.known(txn, digest):
                    age = self._chunks.age(digest, now)
                    if age is not None and age > grace:
                        candidates.append(digest)
        if not dry_run:
            # Containers the store keeps (packs) that no live object is in.
            self._chunks.sweep(grace, now)
        if not candidates:
            return 0, 0
        if dry_run:
            return len(candidates), sum(self._chunks.size(d) or 0 for d in candidates)

        def op(txn: lmdb.Transaction) -> tuple[int, int]:
            count = freed = 0
            for digest in candidates:
                if self._refs.known(txn, digest):
                    continue
                age = self._chunks.age(digest, time.time())
                size = self._chunks.size(digest)
                if age is not None and size is not None and age > grace:
                    self._refs.delete_unrecorded(digest)
                    count += 1
                    freed += size
            return count, freed

        return self._index.write(op)

"""Upload sessions and the one table of their allowed state changes.

Every change of `Session.state`, wherever it is decided, goes through
`Sessions.transition`, which refuses what `TRANSITIONS` does not allow. That
is what makes races between requests safe by construction: a completion that
finishes after its upload was cancelled finds the session `cancelled`, and
`cancelled → processing` is not in the table, so no file is recorded.

    open ──► completing ──► processing ──► completed
      │          │   │            │    └──► rejected
      │          │   └──► completed | rejected   (no plugins; checksum mismatch)
      │          └──► open        (completion failed, to be retried)
      ├──► cancelled ◄── completing | processing (client cancel, file deleted)
      └──► expired
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import lmdb
import msgspec

from . import records
from .errors import SessionNotOpen, UnknownSession
from .index import Index
from .records import Session, SessionState
from .tenants import QuotaFor, TenantLedger, no_quota

S = SessionState

TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    S.OPEN: frozenset({S.COMPLETING, S.CANCELLED, S.EXPIRED}),
    S.COMPLETING: frozenset({S.OPEN, S.PROCESSING, S.COMPLETED, S.REJECTED, S.CANCELLED}),
    S.PROCESSING: frozenset({S.COMPLETED, S.REJECTED, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
    S.EXPIRED: frozenset(),
}

# States whose file is (being) recorded: the upload's bytes are all there.
FINISHED_UPLOAD = frozenset({S.COMPLETING, S.PROCESSING, S.COMPLETED})


def new_id() -> str:
    """128 random bits, lowercase hex: URL-safe and never starts with '-'."""
    return secrets.token_hex(16)


def allowed(current: SessionState, target: SessionState) -> bool:
    return target in TRANSITIONS[current]


class Sessions:
    def __init__(
        self,
        index: Index,
        *,
        ttl: float,
        clock: Callable[[], float],
        ledger: TenantLedger | None = None,
        quota_for: QuotaFor = no_quota,
    ) -> None:
        """`ledger`: where each tenant's open uploads are counted; `quota_for`:
        a tenant's limits, checked as uploads open and grow."""
        self._index = index
        self._db = index.db["sessions"]
        self.ttl = ttl
        self._clock = clock
        self._ledger = ledger
        self._quota_for = quota_for

    def new(
        self,
        *,
        tenant: str,
        filename: str,
        size: int,
        chunk_size: int,
        total_chunks: int,
        **fields: object,
    ) -> Session:
        """A new `open` session record (not yet stored: `insert` it)."""
        now = self._clock()
        return Session(
            id=new_id(),
            tenant=tenant,
            filename=filename,
            size=size,
            chunk_size=chunk_size,
            total_chunks=total_chunks,
            state=S.OPEN,
            created=now,
            updated=now,
            expires=now + self.ttl,
            **fields,
        )

    def insert(self, txn: lmdb.Transaction, session: Session) -> None:
        if session.state != S.OPEN:
            raise ValueError("a session starts open")
        if self._ledger is not None:
            usage = self._ledger.usage(txn, session.tenant)
            self._quota_for(session.tenant).check_new(usage, session.size)
        self._put(txn, session, None)

    def find(self, txn: lmdb.Transaction, session_id: str) -> Session | None:
        """Any tenant's session, or None."""
        raw = txn.get(session_id.encode(), db=self._db)
        return None if raw is None else records.decode(Session, raw)

    def get(self, txn: lmdb.Transaction, session_id: str, tenant: str) -> Session:
        session = self.find(txn, session_id)
        if session is None or session.tenant != tenant:
            # Another tenant's session is reported exactly like a missing one.
            raise UnknownSession(f"no upload with id {session_id!r}")
        return session

    def update(self, txn: lmdb.Transaction, session: Session, **changes: object) -> Session:
        """Change fields other than the state (sizes, counters, ids)."""
        if "state" in changes:
            raise ValueError("state changes go through transition()")
        before = session
        session = msgspec.structs.replace(session, updated=self._clock(), **changes)
        self._put(txn, session, before)
        return session

    def check_growth(self, txn: lmdb.Transaction, session: Session, size: int) -> None:
        """Refuse to let an open upload grow to `size` bytes past its tenant's
        limit (a deferred length being declared)."""
        if self._ledger is not None:
            usage = self._ledger.usage(txn, session.tenant)
            self._quota_for(session.tenant).check_growth(usage, size - session.size)

    def transition(
        self, txn: lmdb.Transaction, session: Session, target: SessionState, **changes: object
    ) -> Session:
        """Move `session` to `target` (with other field changes), if the table allows it."""
        if not allowed(session.state, target):
            raise SessionNotOpen(
                f"upload {session.id} is {session.state}", state=str(session.state)
            )
        before = session
        session = msgspec.structs.replace(session, state=target, updated=self._clock(), **changes)
        self._put(txn, session, before)
        return session

    def all(self, txn: lmdb.Transaction) -> Iterator[Session]:
        for _, raw in self._index.scan(txn, "sessions"):
            yield records.decode(Session, raw)

    def _put(self, txn: lmdb.Transaction, session: Session, before: Session | None) -> None:
        self._index.put(txn, "sessions", session.id.encode(), session)
        if self._ledger is not None:
            # Count what an open upload reserves: one upload and its size.
            was, now = _open_share(before), _open_share(session)
            if was != now:
                self._ledger.add(
                    txn, session.tenant, open_uploads=now[0] - was[0], open_bytes=now[1] - was[1]
                )


def _open_share(session: Session | None) -> tuple[int, int]:
    if session is None or session.state != S.OPEN:
        return 0, 0
    return 1, session.size

"""Tenants' holdings and usage: which chunks each tenant's uploads and files
use, and the figures its quotas are checked against.

"tenant_chunks" maps ``<tenant>\\0<raw BLAKE3>`` to how many of the tenant's
manifest entries (in its live sessions and files) use the chunk. A tenant
*holds* a chunk while that count is above zero: it sent the bytes, or proved
it had them, and has not let go of every use since. Holdings are what keeps
deduplication from being an oracle: with the tenant scope, a chunk can be
attached without its bytes only by a tenant that holds it (`ChunkRefs`).

"tenants" maps a tenant to its `TenantUsage`: logical bytes (the sizes of
its live files, what it uploaded), physical bytes (each chunk it holds
counted once: what its content occupies after deduplication within the
tenant; the store underneath is shared, so tenants holding the same chunk
each count it) and its open uploads. Every change is made in the write
transaction of the change it counts, by `ChunkRefs`, `Sessions` and `Files`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lmdb
import msgspec

from . import records
from .errors import QuotaExceeded, TooManyOpenUploads
from .index import Index
from .records import FileState, SessionState, TenantUsage

_HOLDING = struct.Struct(">IQ")  # uses, chunk size
_LEDGER_BUILT = b"tenant_ledger"


@dataclass(frozen=True, slots=True)
class Quota:
    """A tenant's limits; None is no limit."""

    # Logical bytes: its files' sizes plus the declared sizes of its open uploads.
    max_bytes: int | None = None
    max_open_uploads: int | None = None

    def check_new(self, usage: TenantUsage, size: int) -> None:
        """Refuse a new open upload of `size` bytes that would pass a limit."""
        if self.max_open_uploads is not None and usage.open_uploads >= self.max_open_uploads:
            raise TooManyOpenUploads(
                f"the tenant has {usage.open_uploads} open uploads, its limit is "
                f"{self.max_open_uploads}; complete or cancel one first",
                limit=self.max_open_uploads,
                current=usage.open_uploads,
            )
        self.check_growth(usage, size)

    def check_growth(self, usage: TenantUsage, extra: int) -> None:
        """Refuse `extra` more logical bytes that would pass the byte limit."""
        if self.max_bytes is None or extra <= 0:
            return
        current = usage.logical_bytes + usage.open_bytes
        if current + extra > self.max_bytes:
            raise QuotaExceeded(
                f"the tenant stores or has reserved {current} bytes; {extra} more would pass "
                f"its limit of {self.max_bytes} bytes",
                limit=self.max_bytes,
                current=current,
                requested=extra,
            )


QuotaFor = Callable[[str], Quota]


def no_quota(tenant: str) -> Quota:
    return Quota()


def _key(tenant: str, digest: str) -> bytes:
    return tenant.encode() + b"\0" + bytes.fromhex(digest)


class TenantLedger:
    def __init__(self, index: Index) -> None:
        self._index = index
        self._holdings = index.db["tenant_chunks"]

    # -- reading ---------------------------------------------------------------

    def holds(self, txn: lmdb.Transaction, tenant: str, digest: str) -> bool:
        return txn.get(_key(tenant, digest), db=self._holdings) is not None

    def usage(self, txn: lmdb.Transaction, tenant: str) -> TenantUsage:
        found = self._index.get(txn, "tenants", tenant.encode(), TenantUsage)
        return found or TenantUsage()

    def all(self, txn: lmdb.Transaction) -> Iterator[tuple[str, TenantUsage]]:
        for key, raw in self._index.scan(txn, "tenants"):
            yield key.decode(), records.decode(TenantUsage, raw)

    # -- changing (inside the caller's write transaction) ---------------------

    def hold(self, txn: lmdb.Transaction, tenant: str, digest: str, size: int) -> None:
        """One more use of a chunk by the tenant's uploads or files."""
        key = _key(tenant, digest)
        raw = txn.get(key, db=self._holdings)
        uses = 0 if raw is None else _HOLDING.unpack(raw)[0]
        txn.put(key, _HOLDING.pack(uses + 1, size), db=self._holdings)
        if uses == 0:
            self.add(txn, tenant, physical_bytes=size, chunks=1)

    def let_go(self, txn: lmdb.Transaction, tenant: str, digest: str) -> None:
        """One use fewer; the last one ends the holding."""
        key = _key(tenant, digest)
        raw = txn.get(key, db=self._holdings)
        if raw is None:
            return
        uses, size = _HOLDING.unpack(raw)
        if uses > 1:
            txn.put(key, _HOLDING.pack(uses - 1, size), db=self._holdings)
            return
        txn.delete(key, db=self._holdings)
        self.add(txn, tenant, physical_bytes=-size, chunks=-1)

    def add(self, txn: lmdb.Transaction, tenant: str, **deltas: int) -> None:
        """Add `deltas` to the tenant's usage figures."""
        usage = self.usage(txn, tenant)
        changed = {name: getattr(usage, name) + delta for name, delta in deltas.items() if delta}
        if changed:
            self._index.put(
                txn, "tenants", tenant.encode(), msgspec.structs.replace(usage, **changed)
            )

    # -- derived data ------------------------------------------------------------

    def ensure_built(self) -> None:
        """Build the ledger from the sessions, parts and files of a data
        directory that an earlier version wrote (once; later changes keep it)."""
        with self._index.reader() as txn:
            if self._built(txn):
                return

        def op(txn: lmdb.Transaction) -> None:
            if not self._built(txn):  # another worker may have just built it
                self.rebuild(txn)

        self._index.write(op)

    def _built(self, txn: lmdb.Transaction) -> bool:
        return txn.get(_LEDGER_BUILT, db=self._index.db["meta"]) is not None

    def rebuild(self, txn: lmdb.Transaction) -> None:
        """Recompute every holding and usage figure from the manifests."""
        holdings, usage = self.compute(txn)
        txn.drop(self._holdings, delete=False)
        txn.drop(self._index.db["tenants"], delete=False)
        for (tenant, digest), (uses, size) in holdings.items():
            txn.put(_key(tenant, digest), _HOLDING.pack(uses, size), db=self._holdings)
        for tenant, figures in usage.items():
            self._index.put(txn, "tenants", tenant.encode(), figures)
        txn.put(_LEDGER_BUILT, b"1", db=self._index.db["meta"])

    def stored(
        self, txn: lmdb.Transaction
    ) -> tuple[dict[tuple[str, str], tuple[int, int]], dict[str, TenantUsage]]:
        """The holdings ((tenant, digest) -> (uses, size)) and usage as recorded."""
        holdings = {}
        for key, raw in self._index.scan(txn, "tenant_chunks"):
            tenant, digest = key[:-33].decode(), key[-32:].hex()
            holdings[(tenant, digest)] = _HOLDING.unpack(raw)
        return holdings, dict(self.all(txn))

    def compute(
        self, txn: lmdb.Transaction
    ) -> tuple[dict[tuple[str, str], tuple[int, int]], dict[str, TenantUsage]]:
        """What `stored` should hold, derived from the sessions, parts and files
        (for `rebuild`, and for fsck to compare)."""
        holdings: dict[tuple[str, str], tuple[int, int]] = {}
        usage: dict[str, dict[str, int]] = {}

        def add(tenant: str, **deltas: int) -> None:
            figures = usage.setdefault(tenant, {})
            for name, delta in deltas.items():
                figures[name] = figures.get(name, 0) + delta

        def hold(tenant: str, digest: str, size: int) -> None:
            uses, _ = holdings.get((tenant, digest), (0, size))
            holdings[(tenant, digest)] = (uses + 1, size)
            if uses == 0:
                add(tenant, physical_bytes=size, chunks=1)

        tenants: dict[str, str] = {}
        for _, raw in self._index.scan(txn, "sessions"):
            session = records.decode(records.Session, raw)
            tenants[session.id] = session.tenant
            if session.state == SessionState.OPEN:
                add(session.tenant, open_uploads=1, open_bytes=session.size)
        for key, raw in self._index.scan(txn, "parts"):
            session_id = key.split(b"/", 1)[0].decode()
            digest, size = records.unpack_entry(raw)
            if session_id in tenants:
                hold(tenants[session_id], digest, size)
        for _, raw in self._index.scan(txn, "files"):
            file = records.decode(records.FileRecord, raw)
            packed = txn.get(file.id.encode(), db=self._index.db["manifests"])
            if packed is None or file.state == FileState.REJECTED:
                continue
            add(file.tenant, logical_bytes=file.size, files=1)
            for digest, size in records.unpack_manifest(packed):
                hold(file.tenant, digest, size)
        figures = {tenant: TenantUsage(**deltas) for tenant, deltas in usage.items()}
        return holdings, figures

"""Files: completed uploads, their manifests, and the indexes that find them.

A file's manifest (packed `(hash, length)` entries, "manifests") holds one
reference per entry to its chunks. "file_hashes" finds files by the BLAKE3 of
their content, "manifest_files" by the BLAKE3 of their packed manifest (the
same manifest means the same bytes: a re-upload is recognised without
reading it). A rejected file keeps its record, for the record, but not its
content.
"""

from __future__ import annotations

from collections.abc import Iterator

import blake3
import lmdb
import msgspec

from . import records
from .errors import UnknownFile
from .index import Index
from .records import FileRecord, FileState, SessionState
from .refs import ChunkRefs
from .sessions import Sessions
from .tenants import TenantLedger

# Files whose content is whole: a re-upload may reuse what they hold.
LIVE_STATES = frozenset({FileState.PROCESSING, FileState.ACCEPTED})


def content_key(blake3_hex: str, file_id: str) -> bytes:
    return bytes.fromhex(blake3_hex) + file_id.encode()


def manifest_key(packed_manifest: bytes, file_id: str) -> bytes:
    return blake3.blake3(packed_manifest).digest() + file_id.encode()


class Files:
    def __init__(
        self,
        index: Index,
        refs: ChunkRefs | None,
        sessions: Sessions | None,
        ledger: TenantLedger | None = None,
    ) -> None:
        """`refs`/`sessions`/`ledger` None: a read-only view (another process's index)."""
        self._index = index
        self._refs = refs
        self._sessions = sessions
        self._ledger = ledger

    # -- reading ---------------------------------------------------------------

    def find(self, txn: lmdb.Transaction, file_id: str) -> FileRecord | None:
        return self._index.get(txn, "files", file_id.encode(), FileRecord)

    def get(self, txn: lmdb.Transaction, file_id: str, tenant: str) -> FileRecord:
        file = self.find(txn, file_id)
        if file is None or file.tenant != tenant:
            raise UnknownFile(f"no file with id {file_id!r}")
        return file

    def manifest(self, txn: lmdb.Transaction, file_id: str) -> list[tuple[str, int]]:
        raw = txn.get(file_id.encode(), db=self._index.db["manifests"])
        if raw is None:
            raise UnknownFile(f"no file with id {file_id!r}")
        return records.unpack_manifest(raw)

    def listing(
        self, txn: lmdb.Transaction, tenant: str, *, prefix: str, after: str, limit: int
    ) -> list[FileRecord]:
        """A tenant's files in id order, after `after`, names starting with `prefix`.

        A scan of the files database: fine for thousands of files; a name
        index is the next step if tenants keep millions.
        """
        out: list[FileRecord] = []
        for _, raw in self._index.scan(txn, "files", after=after.encode() if after else None):
            file = records.decode(FileRecord, raw)
            if file.tenant == tenant and file.filename.startswith(prefix):
                out.append(file)
                if len(out) >= limit:
                    break
        return out

    def by_blake3(self, txn: lmdb.Transaction, digest: str, tenant: str) -> list[str]:
        """Ids of the tenant's live files with this content, oldest first."""
        found = [
            file
            for suffix, _ in self._index.scan(
                txn, "file_hashes", bytes.fromhex(digest), values=False
            )
            if (file := self.find(txn, suffix.decode())) is not None and file.tenant == tenant
        ]
        return [f.id for f in sorted(found, key=lambda f: f.created)]

    def twin(
        self, txn: lmdb.Transaction, packed: bytes, tenant: str, *, with_copy: bool = False
    ) -> FileRecord | None:
        """A live file of the tenant with exactly this manifest, if any (with
        `with_copy`: one whose materialised copy is written)."""
        prefix = manifest_key(packed, "")
        for suffix, _ in self._index.scan(txn, "manifest_files", prefix, values=False):
            file = self.find(txn, suffix.decode())
            if file is None or file.tenant != tenant or file.state not in LIVE_STATES:
                continue
            if not with_copy or file.path is not None:
                return file
        return None

    def all(self, txn: lmdb.Transaction) -> Iterator[FileRecord]:
        for _, raw in self._index.scan(txn, "files"):
            yield records.decode(FileRecord, raw)

    # -- changing --------------------------------------------------------------

    def record(
        self, txn: lmdb.Transaction, file: FileRecord, packed: bytes, *, copy_due: bool = False
    ) -> None:
        """Store a new file; the references of its manifest come with it (handed
        over by its session's parts). `copy_due`: its materialised copy is to be
        written later (`copies_due`, `set_copy`)."""
        self._index.put(txn, "files", file.id.encode(), file)
        if copy_due:
            txn.put(file.id.encode(), b"", db=self._index.db["copies_due"])
        txn.put(content_key(file.blake3, file.id), b"", db=self._index.db["file_hashes"])
        txn.put(file.id.encode(), packed, db=self._index.db["manifests"])
        txn.put(manifest_key(packed, file.id), b"", db=self._index.db["manifest_files"])
        self._ledger.add(txn, file.tenant, logical_bytes=file.size, files=1)

    def delete(self, txn: lmdb.Transaction, file_id: str, tenant: str) -> FileRecord:
        """Forget a file; its chunks are released. A session still processing
        it is cancelled (its job then ends without a file)."""
        file = self.get(txn, file_id, tenant)
        self._drop_content(txn, file)
        txn.delete(file_id.encode(), db=self._index.db["files"])
        session = self._sessions.find(txn, file.session_id)
        if session is not None and session.state == SessionState.PROCESSING:
            self._sessions.transition(
                txn, session, SessionState.CANCELLED, reason="its file was deleted"
            )
        return file

    def conclude(
        self,
        txn: lmdb.Transaction,
        file_id: str,
        *,
        accepted: bool,
        reason: str,
        described: dict[str, object],
        detection: dict[str, object] | None,
        parents: list[str],
    ) -> FileRecord:
        """Record the plugins' verdict on a file in `processing` (and on its session).

        Rejected: the record stays, its content is released. A file already
        decided is returned as it is; a deleted one raises `UnknownFile`."""
        file = self.find(txn, file_id)
        if file is None:
            raise UnknownFile(f"file {file_id!r} was deleted during processing")
        if file.state != FileState.PROCESSING:
            return file
        file = msgspec.structs.replace(
            file,
            state=FileState.ACCEPTED if accepted else FileState.REJECTED,
            reason=None if accepted else reason,
            described=described,
            detection=detection,
            parents=parents,
            path=file.path if accepted else None,
        )
        self._index.put(txn, "files", file_id.encode(), file)
        session = self._sessions.find(txn, file.session_id)
        if session is not None and session.state == SessionState.PROCESSING:
            target = SessionState.COMPLETED if accepted else SessionState.REJECTED
            self._sessions.transition(txn, session, target, reason=None if accepted else reason)
        if not accepted:
            self._drop_content(txn, file)
        return file

    def copies_due(self, txn: lmdb.Transaction) -> list[str]:
        """Ids of files whose copy is still to be written."""
        return [k.decode() for k, _ in self._index.scan(txn, "copies_due", values=False)]

    def copy_is_due(self, txn: lmdb.Transaction, file_id: str) -> bool:
        return txn.get(file_id.encode(), db=self._index.db["copies_due"]) is not None

    def set_copy(self, txn: lmdb.Transaction, file_id: str, path: str) -> bool:
        """Record the written copy of an accepted file; False (nothing changed)
        if the file is gone, rejected or has a copy already."""
        if not txn.delete(file_id.encode(), db=self._index.db["copies_due"]):
            return False
        file = self.find(txn, file_id)
        if file is None or file.state == FileState.REJECTED or file.path is not None:
            return False
        self._index.put(txn, "files", file_id.encode(), msgspec.structs.replace(file, path=path))
        return True

    def _drop_content(self, txn: lmdb.Transaction, file: FileRecord) -> None:
        """Release the file's chunks and remove it from the content indexes."""
        txn.delete(file.id.encode(), db=self._index.db["copies_due"])
        packed = txn.pop(file.id.encode(), db=self._index.db["manifests"])
        if packed is None:
            return  # dropped already (a rejected file, deleted now)
        self._ledger.add(txn, file.tenant, logical_bytes=-file.size, files=-1)
        for digest, _ in records.unpack_manifest(packed):
            self._refs.release(txn, digest, file.tenant)
        if packed:
            txn.delete(manifest_key(packed, file.id), db=self._index.db["manifest_files"])
        txn.delete(content_key(file.blake3, file.id), db=self._index.db["file_hashes"])

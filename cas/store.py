"""The store: one object that wires the concepts together, and its public API.

`Store` owns a chunk store (objects), the LMDB index and, over them, the
sessions with their transition table (`sessions`), the parts ledger
(`parts`), chunk references (`refs`), files (`files`), completion
(`completer`), garbage collection (`gc`), the durable queues (`jobs`,
`outbox`, used directly) and byte-stream uploads (`streams`). A chunk comes
in through `receive_chunk` (`intake`). Its methods are the operations on uploads and
files a caller needs, each one durable when it returns. Synchronous and
thread-safe; an async server calls it from worker threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from .backends import open_index
from .chunkstore import ChunkStore, Lane, PutResult
from .completion import Completer, Completion
from .errors import (
    ChunkOutOfRange,
    ClientError,
    DamagedFile,
    SessionNotOpen,
    StorageError,
    TooLarge,
    UnknownFile,
)
from .files import Files
from .gc import GarbageCollector
from .index import DEFAULT_MAP_SIZE
from .intake import ChunkIntake, ChunkRun
from .locks import LockDir
from .materialize import remove_copy
from .packstore import LocalPackStore
from .parts import Parts, check_layout
from .queues import Jobs, Outbox
from .reader import ManifestReader
from .records import (
    DEFAULT_TENANT,
    FileRecord,
    FileState,
    Session,
    SessionState,
    TenantUsage,
)
from .refs import ChunkRefs
from .sessions import Sessions
from .streams import StreamStore
from .tenants import QuotaFor, TenantLedger, no_quota
from .tokens import Tokens

DURABILITY_MODES = ("fsync", "none")

__all__ = ["ChunkAck", "Completion", "Store"]


@dataclass(frozen=True, slots=True)
class ChunkAck:
    index: int
    hash: str
    size: int
    # False when the index already held exactly these bytes (an idempotent retry).
    stored: bool
    received_chunks: int


class Store:
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        durability: str = "fsync",
        materialize: str = "copy",
        completed_dir: str | os.PathLike[str] | None = None,
        session_ttl: float = 7 * 24 * 3600,
        map_size: int = DEFAULT_MAP_SIZE,
        group_commit: bool = True,
        clock: Callable[[], float] = time.time,
        process_files: bool = False,
        chunks: ChunkStore | None = None,
        worker: str | None = None,
        dedup_scope: str = "tenant",
        quota_for: QuotaFor = no_quota,
        max_stream_size: int | None = None,
        index: Mapping[str, Any] | None = None,
    ) -> None:
        """`process_files`: completed files wait in `processing` for `conclude`
        (the daemon's plugins decide); otherwise they are accepted at once.
        `chunks`: where objects live (default: the data directory's files).
        `worker`: this process is one of several sharing the directory (its
        name keeps its temp files apart). `dedup_scope`: "tenant" (a chunk
        is attached by its hash alone only for a tenant that holds it) or
        "global". `quota_for`: each tenant's limits (`Quota`). `index`: where
        the index lives, `cas.open_index`'s `backend` and `postgres`
        (default: LMDB in the data directory)."""
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {DURABILITY_MODES}")
        self.root = Path(root)
        self.durable = durability == "fsync"
        self.clock = clock
        # The parts read the clock through the store, so that it can be swapped.
        clock = self._now
        self.chunks = chunks or LocalPackStore(self.root, durable=self.durable, worker=worker)
        self.index = open_index(
            self.root,
            **(index or {}),
            durable=self.durable,
            map_size=map_size,
            group_commit=group_commit,
            sync_objects=self.chunks.sync,
        )
        self.locks = LockDir(self.root / "locks")
        self.tenants = TenantLedger(self.index)
        self.tenants.ensure_built()
        self.tokens = Tokens(self.index, clock)
        self.sessions = Sessions(
            self.index, ttl=session_ttl, clock=clock, ledger=self.tenants, quota_for=quota_for
        )
        self.refs = ChunkRefs(self.index, self.chunks, clock, self.tenants, dedup_scope)
        self.parts = Parts(self.index, self.refs, self.sessions)
        self.files = Files(self.index, self.refs, self.sessions, self.tenants)
        self.jobs = Jobs(self.index, clock)
        self.outbox = Outbox(self.index, clock)
        self.completer = Completer(
            index=self.index,
            chunks=self.chunks,
            sessions=self.sessions,
            parts=self.parts,
            refs=self.refs,
            files=self.files,
            jobs=self.jobs,
            clock=clock,
            end_session=self.end_session,
            durable=self.durable,
            materialize_mode=materialize,
            completed_dir=Path(completed_dir) if completed_dir else self.root / "completed",
            process_files=process_files,
            locks=self.locks,
        )
        self.gc = GarbageCollector(
            index=self.index,
            chunks=self.chunks,
            sessions=self.sessions,
            refs=self.refs,
            end_session=self.end_session,
            clock=clock,
        )
        # Byte-stream uploads (tus) over the same sessions, parts and chunks.
        self.streams = StreamStore(self, max_size=max_stream_size)

    def _now(self) -> float:
        return self.clock()

    @property
    def completed_dir(self) -> Path:
        return self.completer.completed_dir

    def close(self) -> None:
        self.completer.close()
        self.index.close()
        self.chunks.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions ---------------------------------------------------------

    def create_session(
        self,
        *,
        filename: str,
        size: int,
        chunk_size: int,
        tenant: str = DEFAULT_TENANT,
        sha256: str | None = None,
        metadata: dict[str, object] | None = None,
        chunks: list[tuple[str, int]] | None = None,
        min_chunk_size: int = 1,
        max_chunk_size: int | None = None,
    ) -> Session:
        """Open an upload session.

        Without `chunks` the layout is fixed: `chunk_size` bytes per chunk, the
        last one shorter. With `chunks` — the client's list of (BLAKE3, length)
        — the layout is that list; every chunk but the last must be within
        `min_chunk_size..max_chunk_size`. Chunks of the list that the store
        already holds are attached at once, in the same transaction, so the
        client never sends them (see `missing`).
        """
        if size < 0:
            raise TooLarge("size must not be negative")
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if chunks is not None:
            check_layout(size, chunks, min_chunk_size, max_chunk_size or size or 1)
        session = self.sessions.new(
            tenant=tenant,
            filename=filename,
            size=size,
            chunk_size=chunk_size,
            total_chunks=len(chunks) if chunks is not None else -(-size // chunk_size),
            declared=chunks is not None,
            sha256=sha256.lower() if sha256 else None,
            metadata=metadata or {},
        )

        def op(txn: lmdb.Transaction) -> Session:
            self.sessions.insert(txn, session)
            current = session
            if chunks is not None:
                self.parts.declare(txn, session.id, chunks)
                for i, (digest, length) in enumerate(chunks):
                    if self.refs.attachable(txn, digest, length, tenant):
                        current, _ = self.parts.attach(txn, current, i, digest, length)
            return current

        return self.index.write(op)

    def session(self, session_id: str, tenant: str = DEFAULT_TENANT) -> Session:
        with self.index.reader() as txn:
            return self.sessions.get(txn, session_id, tenant)

    def received(self, session_id: str) -> dict[int, tuple[str, int]]:
        """The chunks attached so far: index → (hash, length)."""
        with self.index.reader() as txn:
            return dict(self.parts.scan(txn, session_id))

    def missing(self, session_id: str, tenant: str = DEFAULT_TENANT) -> list[int]:
        """Indices whose bytes the client still has to send.

        For a declared layout, an index is not missing when its chunk is
        already in the store (it is attached at completion), and of several
        indices with the same unknown chunk only the first is listed.
        """
        with self.index.reader() as txn:
            session = self.sessions.get(txn, session_id, tenant)
            present = self.parts.present(txn, session_id)
            if not session.declared:
                return [i for i in range(session.total_chunks) if i not in present]
            out: list[int] = []
            wanted: set[str] = set()
            for i, (digest, length) in self.parts.declared(txn, session_id):
                if i in present or digest in wanted:
                    continue
                if not self.refs.attachable(txn, digest, length, session.tenant):
                    wanted.add(digest)
                    out.append(i)
            return out

    def expected_chunk(
        self, session_id: str, index: int, tenant: str = DEFAULT_TENANT
    ) -> tuple[str | None, int]:
        """(declared BLAKE3 or None, length) of chunk `index`; refuses what cannot fit."""
        with self.index.reader() as txn:
            session = self.sessions.get(txn, session_id, tenant)
            return self._expected(txn, session, index)

    def _expected(
        self, txn: lmdb.Transaction, session: Session, index: int
    ) -> tuple[str | None, int]:
        if session.state != SessionState.OPEN:
            raise SessionNotOpen(f"upload {session.id} is {session.state}", state=session.state)
        _not_a_stream(session, "send its bytes with tus PATCH requests")
        if not 0 <= index < session.total_chunks:
            raise ChunkOutOfRange(
                f"chunk index {index} is outside 0..{session.total_chunks - 1}",
                total_chunks=session.total_chunks,
            )
        if session.declared:
            entry = self.parts.declared_at(txn, session.id, index)
            if entry is None:
                raise StorageError(f"declared chunk {index} of {session.id} is missing")
            return entry
        if index < session.total_chunks - 1:
            return None, session.chunk_size
        return None, session.size - session.chunk_size * (session.total_chunks - 1)

    def receive_chunk(
        self,
        session_id: str,
        index: int,
        tenant: str = DEFAULT_TENANT,
        *,
        claimed_hash: str | None = None,
    ) -> ChunkIntake:
        """Chunk `index` of a session, ready for its bytes (see `ChunkIntake`):
        `write` them, then `finish` to store and attach it, durably; its
        answer is a `ChunkAck`. Refuses at once a chunk that cannot fit."""
        declared, length = self.expected_chunk(session_id, index, tenant)
        return ChunkIntake(
            self.chunks,
            index,
            declared,
            length,
            lambda put: self._attach_chunk(session_id, index, put, tenant),
            claimed_hash=claimed_hash,
        )

    def receive_chunks(
        self, session_id: str, first: int, count: int, tenant: str = DEFAULT_TENANT
    ) -> ChunkRun:
        """Chunks `first` .. `first + count - 1` of a session, ready for their
        bytes back to back (see `ChunkRun`); `finish` stores and attaches
        them, durably, its answer a `ChunkAck` each. Refuses at once a run
        that does not fit the upload."""
        if count < 1:
            raise ChunkOutOfRange(f"a run of {count} chunks is empty")
        with self.index.reader() as txn:
            session = self.sessions.get(txn, session_id, tenant)
            expected = [self._expected(txn, session, i) for i in range(first, first + count)]
        lane = Lane()  # the run's chunks are one stream of bytes
        intakes = [
            ChunkIntake(self.chunks, first + i, declared, length, lane=lane)
            for i, (declared, length) in enumerate(expected)
        ]
        return ChunkRun(intakes, lambda puts: self._attach_chunks(session_id, puts, tenant))

    def put_chunk(
        self,
        session_id: str,
        index: int,
        data: bytes | memoryview,
        tenant: str = DEFAULT_TENANT,
    ) -> ChunkAck:
        """Store `data` as chunk `index`: checked, written, attached, durable."""
        intake = self.receive_chunk(session_id, index, tenant)
        try:
            return intake.finish([data])
        finally:
            intake.abort()

    def _attach_chunks(
        self, session_id: str, puts: list[tuple[int, PutResult]], tenant: str
    ) -> tuple[list[ChunkAck], ClientError | None]:
        """Record committed objects as chunks of one session, in order, in one
        durable index write; stops at the first the session refuses (a
        conflicting chunk), keeping those before it: (acks, that refusal).
        Lengths and hashes were checked on the way in (`ChunkIntake`); this
        checks what may have changed since: the session's state."""

        def op(txn: lmdb.Transaction) -> tuple[list[ChunkAck], ClientError | None]:
            session = self.sessions.get(txn, session_id, tenant)
            attached, refusal = [], None
            for index, put in puts:
                self._expected(txn, session, index)
                try:
                    session, stored = self.parts.attach(txn, session, index, put.hash, put.size)
                except ClientError as exc:
                    refusal = exc
                    break
                attached.append((index, put, stored))
            received = session.received_chunks
            return [ChunkAck(i, p.hash, p.size, new, received) for i, p, new in attached], refusal

        return self.index.write(op, [put for _, put in puts])

    def _attach_chunk(self, session_id: str, index: int, put: PutResult, tenant: str) -> ChunkAck:
        acks, refusal = self._attach_chunks(session_id, [(index, put)], tenant)
        if refusal is not None:
            raise refusal
        return acks[0]

    # -- completion -------------------------------------------------------

    def complete(
        self,
        session_id: str,
        tenant: str = DEFAULT_TENANT,
        metadata: dict[str, object] | None = None,
        *,
        copy_now: bool = False,
    ) -> Completion:
        """Verify a session's chunks, record the file and queue its job.

        `begin_completion` then `finish_completion`, in one call. Idempotent:
        completing a completed session returns the same result. `copy_now`:
        the materialised copy is written before this returns, even when the
        file waits for its plugins (the caller answers with its path).
        """
        self.begin_completion(session_id, tenant)
        return self.finish_completion(session_id, metadata, copy_now=copy_now)

    def begin_completion(self, session_id: str, tenant: str = DEFAULT_TENANT) -> Session:
        """Check that every chunk is there and move the session to `completing`,
        with its job queued. Quick: no bytes are read."""

        def op(txn: lmdb.Transaction) -> Session:
            session = self.sessions.get(txn, session_id, tenant)
            _not_a_stream(session, "it completes when its last byte arrives")
            return self.completer.begin(txn, session)

        return self.index.write(op)

    def finish_completion(
        self, session_id: str, metadata: dict[str, object] | None = None, *, copy_now: bool = False
    ) -> Completion:
        """Hash, verify and record the file of a `completing` session; its
        materialised copy now or, when plugins decide it and not `copy_now`,
        once it is accepted (`write_copy`)."""
        return self.completer.finish(session_id, metadata, copy_now=copy_now)

    def completing_sessions(self) -> list[str]:
        """Sessions whose completion was accepted but not finished (e.g. by a crash)."""
        with self.index.reader() as txn:
            return [s.id for s in self.sessions.all(txn) if s.state == SessionState.COMPLETING]

    # -- ending sessions, garbage -----------------------------------------

    def cancel(self, session_id: str, tenant: str = DEFAULT_TENANT) -> Session:
        """Cancel an upload and release its chunks.

        An open upload, or one whose completion has begun but recorded no
        file yet: its job then ends failed and no file is recorded. Once the
        file is recorded the upload cannot be cancelled (delete the file)."""

        def op(txn: lmdb.Transaction) -> Session:
            session = self.sessions.get(txn, session_id, tenant)
            if session.state == SessionState.PROCESSING:
                raise SessionNotOpen(
                    f"upload {session_id} is processing its file {session.file_id}; "
                    "delete the file instead",
                    state=session.state,
                )
            _not_a_stream(session, "terminate it with a tus DELETE")
            return self.end_session(txn, session, SessionState.CANCELLED, "cancelled by the client")

        return self.index.write(op)

    def end_session(
        self, txn: lmdb.Transaction, session: Session, target: SessionState, reason: str
    ) -> Session:
        """The one way an upload ends without a file (cancelled, expired, rejected),
        inside the caller's write transaction: its parts are released, its state
        moves (if the transition table allows it) and its job, if any, fails."""
        session = self.sessions.transition(txn, session, target, reason=reason)
        self.parts.release(txn, session)
        self.jobs.fail(txn, session.job_id, reason)
        return session

    def expire_sessions(self) -> list[str]:
        """End open sessions past their expiry and release their chunks."""
        return self.gc.expire_sessions()

    def collect_garbage(self, grace: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Delete chunks no session or file has used for `grace` seconds
        (`dry_run`: count them only); (objects, bytes)."""
        return self.gc.collect(grace, dry_run=dry_run)

    def sweep_orphans(self, grace: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Delete objects that no chunk record names, older than `grace`."""
        return self.gc.sweep_orphans(grace, dry_run=dry_run)

    # -- files ------------------------------------------------------------

    def file(self, file_id: str, tenant: str = DEFAULT_TENANT) -> FileRecord:
        with self.index.reader() as txn:
            return self.files.get(txn, file_id, tenant)

    def file_any(self, file_id: str) -> FileRecord:
        """A file of any tenant (background work that already knows it)."""
        with self.index.reader() as txn:
            file = self.files.find(txn, file_id)
        if file is None:
            raise UnknownFile(f"no file with id {file_id!r}")
        return file

    def copies_due(self) -> list[str]:
        """Ids of files whose materialised copy is still to be written."""
        with self.index.reader() as txn:
            return self.files.copies_due(txn)

    def write_copy(self, file_id: str) -> str | None:
        """Write the materialised copy of an accepted file whose copy is due, and
        record its path once it is durable; None if there is nothing to do (not
        due, not accepted yet, gone)."""
        with self.locks.hold(f"copy-{file_id}"):
            with self.index.reader() as txn:
                due = self.files.copy_is_due(txn, file_id)
                file = self.files.find(txn, file_id)
            if not due or file is None or file.state != FileState.ACCEPTED:
                return None
            path = str(self.completer.write_copy(file, self.manifest(file_id)))
            if not self.index.write(lambda txn: self.files.set_copy(txn, file_id, path)):
                remove_copy(path)  # deleted meanwhile
                return None
            return path

    def manifest(self, file_id: str) -> list[tuple[str, int]]:
        with self.index.reader() as txn:
            return self.files.manifest(txn, file_id)

    def open_file(self, file_id: str, tenant: str = DEFAULT_TENANT) -> ManifestReader:
        """The file's bytes; `DamagedFile` if fsck found some of them gone."""
        with self.index.reader() as txn:
            file = self.files.get(txn, file_id, tenant)
            if file.state == FileState.DAMAGED:
                raise DamagedFile(
                    f"file {file_id} is damaged: {file.reason}; upload it again",
                    file_id=file_id,
                )
            return ManifestReader(self.chunks, self.files.manifest(txn, file_id))

    def open_parts(self, session_id: str, tenant: str = DEFAULT_TENANT) -> ManifestReader:
        """The bytes attached to an upload so far, in order (a stream's content
        before its file is recorded)."""
        with self.index.reader() as txn:
            self.sessions.get(txn, session_id, tenant)
            return ManifestReader(self.chunks, self.parts.entries(txn, session_id))

    def list_files(
        self,
        tenant: str = DEFAULT_TENANT,
        *,
        prefix: str = "",
        after: str = "",
        limit: int = 100,
    ) -> list[FileRecord]:
        """A tenant's files in id order, those after `after`, names starting with `prefix`."""
        with self.index.reader() as txn:
            return self.files.listing(txn, tenant, prefix=prefix, after=after, limit=limit)

    def delete_file(self, file_id: str, tenant: str = DEFAULT_TENANT) -> FileRecord:
        """Forget a file; its chunks are released, and collected once nothing uses them."""
        file = self.index.write(lambda txn: self.files.delete(txn, file_id, tenant))
        remove_copy(file.path)
        return file

    def conclude(
        self,
        file_id: str,
        *,
        accepted: bool,
        reason: str = "",
        described: dict[str, object] | None = None,
        detection: dict[str, object] | None = None,
        parents: list[str] | None = None,
    ) -> FileRecord:
        """Record the plugins' decision on a file in `processing`.

        Accepted: the file and its session become accepted/completed.
        Rejected: the session is rejected with `reason`, the file record stays
        (state "rejected", for the record) but its chunks are released and its
        content is gone. A file deleted meanwhile raises `UnknownFile`.
        """

        def op(txn: lmdb.Transaction) -> tuple[FileRecord, str | None]:
            before = self.files.find(txn, file_id)
            deciding = before is not None and before.state == FileState.PROCESSING
            file = self.files.conclude(
                txn,
                file_id,
                accepted=accepted,
                reason=reason,
                described=described or {},
                detection=detection,
                parents=parents or [],
            )
            # Only a rejection decided now drops the copy (not a repeated call).
            return file, (before.path if deciding and not accepted else None)

        file, stale_copy = self.index.write(op)
        remove_copy(stale_copy)
        return file

    def usage(self, tenant: str) -> TenantUsage:
        """The tenant's stored bytes (logical and physical) and open uploads."""
        with self.index.reader() as txn:
            return self.tenants.usage(txn, tenant)

    def all_usage(self) -> dict[str, TenantUsage]:
        with self.index.reader() as txn:
            return dict(self.tenants.all(txn))

    def files_by_blake3(self, digest: str, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Ids of the tenant's live files with this content, oldest first."""
        with self.index.reader() as txn:
            return self.files.by_blake3(txn, digest, tenant)


def _not_a_stream(session: Session, instead: str) -> None:
    """The chunk-index operations refuse a tus upload: its parts follow its offset,
    it completes in the write of its last byte, and its concatenations depend
    on how it ends (`cas.streams`)."""
    if session.stream:
        raise SessionNotOpen(f"upload {session.id} is a tus upload; {instead}", state=session.state)

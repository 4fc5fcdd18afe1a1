"""The store: upload sessions, chunks and files on top of objects and the index.

Synchronous and thread-safe; an async server calls it from worker threads.
Every state change is one LMDB write operation through the group committer,
so it is durable when the call returns.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import lmdb
import msgspec

from . import records
from .errors import (
    ChecksumMismatch,
    ChunkConflict,
    ChunkOutOfRange,
    IncompleteUpload,
    SessionNotOpen,
    StorageError,
    TooLarge,
    UnknownFile,
    UnknownSession,
    WrongChunkSize,
)
from .index import DEFAULT_MAP_SIZE, Index
from .materialize import materialize, safe_filename
from .objects import ObjectStore, PutResult
from .reader import ManifestReader
from .records import (
    DEFAULT_TENANT,
    ChunkRecord,
    FileRecord,
    Job,
    JobState,
    Session,
    SessionState,
)

DURABILITY_MODES = ("fsync", "none")
MATERIALIZE_MODES = ("copy", "none")
_HASH_BLOCK = 1 << 20


def new_id() -> str:
    """128 random bits, lowercase hex: URL-safe and never starts with '-'."""
    return secrets.token_hex(16)


def _part_key(session_id: str, index: int) -> bytes:
    return session_id.encode() + b"/" + index.to_bytes(4, "big")


def _part_prefix(session_id: str) -> bytes:
    return session_id.encode() + b"/"


@dataclass(frozen=True, slots=True)
class ChunkAck:
    index: int
    hash: str
    size: int
    # False when the index already held exactly these bytes (an idempotent retry).
    stored: bool
    received_chunks: int


@dataclass(frozen=True, slots=True)
class Completion:
    session: Session
    file: FileRecord
    job: Job


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
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {DURABILITY_MODES}")
        if materialize not in MATERIALIZE_MODES:
            raise ValueError(f"materialize must be one of {MATERIALIZE_MODES}")
        self.root = Path(root)
        self.durable = durability == "fsync"
        self.materialize_mode = materialize
        self.completed_dir = Path(completed_dir) if completed_dir else self.root / "completed"
        self.session_ttl = session_ttl
        self.clock = clock
        self.objects = ObjectStore(self.root, durable=self.durable)
        self.index = Index(
            self.root / "index.lmdb",
            durable=self.durable,
            map_size=map_size,
            group_commit=group_commit,
        )
        self._recover()

    def close(self) -> None:
        self.index.close()

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
    ) -> Session:
        if size < 0:
            raise TooLarge("size must not be negative")
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        now = self.clock()
        session = Session(
            id=new_id(),
            tenant=tenant,
            filename=filename,
            size=size,
            chunk_size=chunk_size,
            total_chunks=-(-size // chunk_size),
            state=SessionState.OPEN,
            created=now,
            updated=now,
            expires=now + self.session_ttl,
            sha256=sha256.lower() if sha256 else None,
            metadata=metadata or {},
        )
        self.index.write(lambda txn: self.index.put(txn, "sessions", session.id.encode(), session))
        return session

    def session(self, session_id: str, tenant: str = DEFAULT_TENANT) -> Session:
        with self.index.reader() as txn:
            return self._session(txn, session_id, tenant)

    def _session(self, txn: lmdb.Transaction, session_id: str, tenant: str) -> Session:
        session = self.index.get(txn, "sessions", session_id.encode(), Session)
        if session is None or session.tenant != tenant:
            # Another tenant's session is reported exactly like a missing one.
            raise UnknownSession(f"no upload with id {session_id!r}")
        return session

    def received(self, session_id: str) -> dict[int, tuple[str, int]]:
        """The chunks attached so far: index → (hash, length)."""
        prefix = _part_prefix(session_id)
        out: dict[int, tuple[str, int]] = {}
        with self.index.reader() as txn:
            cursor = txn.cursor(db=self.index.db["parts"])
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    out[int.from_bytes(key[len(prefix) :], "big")] = records.unpack_entry(value)
        return out

    @staticmethod
    def expected_length(session: Session, index: int) -> int:
        if not 0 <= index < session.total_chunks:
            raise ChunkOutOfRange(
                f"chunk index {index} is outside 0..{session.total_chunks - 1}",
                total_chunks=session.total_chunks,
            )
        if index < session.total_chunks - 1:
            return session.chunk_size
        return session.size - session.chunk_size * (session.total_chunks - 1)

    def check_chunk(self, session: Session, index: int, length: int) -> None:
        """Refuse a chunk before its bytes are stored, when that is already clear."""
        if session.state != SessionState.OPEN:
            raise SessionNotOpen(f"upload {session.id} is {session.state}", state=session.state)
        expected = self.expected_length(session, index)
        if length != expected:
            raise WrongChunkSize(
                f"chunk {index} must be {expected} bytes, got {length}",
                expected=expected,
                actual=length,
            )

    def put_chunk(
        self,
        session_id: str,
        index: int,
        data: bytes | memoryview,
        tenant: str = DEFAULT_TENANT,
    ) -> ChunkAck:
        session = self.session(session_id, tenant)
        self.check_chunk(session, index, len(data))
        return self.attach_chunk(session_id, index, self.objects.put(data), tenant)

    def attach_chunk(
        self, session_id: str, index: int, put: PutResult, tenant: str = DEFAULT_TENANT
    ) -> ChunkAck:
        """Record a stored object as chunk `index` of a session, durably."""

        def op(txn: lmdb.Transaction) -> ChunkAck:
            session = self._session(txn, session_id, tenant)
            self.check_chunk(session, index, put.size)
            key = _part_key(session_id, index)
            existing = txn.get(key, db=self.index.db["parts"])
            if existing is not None:
                digest, _ = records.unpack_entry(existing)
                if digest != put.hash:
                    raise ChunkConflict(
                        f"chunk {index} is already stored with different bytes",
                        stored_hash=digest,
                        sent_hash=put.hash,
                    )
                return ChunkAck(index, put.hash, put.size, False, session.received_chunks)
            self._add_ref(txn, put.hash, put.size)
            txn.put(key, records.pack_entry(put.hash, put.size), db=self.index.db["parts"])
            session = msgspec.structs.replace(
                session,
                received_chunks=session.received_chunks + 1,
                received_bytes=session.received_bytes + put.size,
                updated=self.clock(),
            )
            self.index.put(txn, "sessions", session_id.encode(), session)
            return ChunkAck(index, put.hash, put.size, True, session.received_chunks)

        return self.index.write(op, put.dirty_dirs)

    # -- completion -------------------------------------------------------

    def complete(
        self,
        session_id: str,
        tenant: str = DEFAULT_TENANT,
        metadata: dict[str, object] | None = None,
    ) -> Completion:
        """Verify a session's chunks, record the file and queue its job.

        Idempotent: completing a completed session returns the same result.
        """

        def begin(txn: lmdb.Transaction) -> Session:
            session = self._session(txn, session_id, tenant)
            if session.state == SessionState.COMPLETED:
                return session
            if session.state != SessionState.OPEN:
                raise SessionNotOpen(f"upload {session_id} is {session.state}", state=session.state)
            if session.received_chunks != session.total_chunks:
                missing = self._missing(txn, session)
                raise IncompleteUpload(
                    f"{len(missing)} of {session.total_chunks} chunks are missing",
                    missing=missing,
                )
            session = msgspec.structs.replace(
                session,
                state=SessionState.COMPLETING,
                file_id=session.file_id or new_id(),
                job_id=session.job_id or new_id(),
                updated=self.clock(),
            )
            self.index.put(txn, "sessions", session_id.encode(), session)
            return session

        session = self.index.write(begin)
        if session.state == SessionState.COMPLETED:
            return self._completion(session)
        try:
            received = self.received(session_id)
            entries = [received[i] for i in range(session.total_chunks)]
            if sum(n for _, n in entries) != session.size:
                raise StorageError(f"manifest of {session_id} does not add up to its size")
            digest, sha256 = self._hash(entries, with_sha256=session.sha256 is not None)
            if session.sha256 is not None and sha256 != session.sha256:
                reason = f"content sha256 is {sha256}, the upload declared {session.sha256}"
                self._end_session(session_id, SessionState.REJECTED, reason)
                raise ChecksumMismatch(reason, expected=session.sha256, actual=sha256)
            path = None
            if self.materialize_mode == "copy":
                path = str(self._materialize(session, entries))
        except ChecksumMismatch:
            raise
        except BaseException:
            self.index.write(lambda txn: self._reopen(txn, session_id))
            raise

        now = self.clock()
        file = FileRecord(
            id=session.file_id,
            tenant=session.tenant,
            session_id=session.id,
            filename=session.filename,
            size=session.size,
            blake3=digest,
            chunk_count=len(entries),
            created=now,
            sha256=sha256,
            path=path,
            metadata={**session.metadata, **(metadata or {})},
        )
        job = Job(
            id=session.job_id,
            tenant=session.tenant,
            session_id=session.id,
            file_id=file.id,
            state=JobState.QUEUED,
            created=now,
            updated=now,
        )

        def finish(txn: lmdb.Transaction) -> Session:
            # The session's references to its chunks pass to the file as they are.
            self.index.put(txn, "files", file.id.encode(), file)
            txn.put(file.id.encode(), records.pack_manifest(entries), db=self.index.db["manifests"])
            self.index.put(txn, "jobs", job.id.encode(), job)
            self._delete_parts(txn, session_id)
            done = msgspec.structs.replace(session, state=SessionState.COMPLETED, updated=now)
            self.index.put(txn, "sessions", session_id.encode(), done)
            return done

        return Completion(self.index.write(finish), file, job)

    def _completion(self, session: Session) -> Completion:
        return Completion(
            session, self.file(session.file_id, session.tenant), self.job(session.job_id)
        )

    def _missing(self, txn: lmdb.Transaction, session: Session) -> list[int]:
        prefix = _part_prefix(session.id)
        present = set()
        cursor = txn.cursor(db=self.index.db["parts"])
        if cursor.set_range(prefix):
            for key in cursor.iternext(keys=True, values=False):
                if not key.startswith(prefix):
                    break
                present.add(int.from_bytes(key[len(prefix) :], "big"))
        return [i for i in range(session.total_chunks) if i not in present]

    def _hash(self, entries: list[tuple[str, int]], *, with_sha256: bool) -> tuple[str, str | None]:
        whole = blake3.blake3(max_threads=blake3.blake3.AUTO)
        sha = hashlib.sha256() if with_sha256 else None
        with ManifestReader(self.objects, entries) as reader:
            buf = bytearray(_HASH_BLOCK)
            view = memoryview(buf)
            while n := reader.readinto(buf):
                whole.update(view[:n])
                if sha is not None:
                    sha.update(view[:n])
        return whole.hexdigest(), sha.hexdigest() if sha else None

    def _materialize(self, session: Session, entries: list[tuple[str, int]]) -> Path:
        dest = (
            self.completed_dir / session.tenant / session.file_id / safe_filename(session.filename)
        )
        return materialize(self.objects, entries, dest, within=self.completed_dir)

    def _reopen(self, txn: lmdb.Transaction, session_id: str) -> None:
        session = self.index.get(txn, "sessions", session_id.encode(), Session)
        if session is not None and session.state == SessionState.COMPLETING:
            session = msgspec.structs.replace(session, state=SessionState.OPEN)
            self.index.put(txn, "sessions", session_id.encode(), session)

    def _recover(self) -> None:
        """Sessions caught mid-completion by a crash go back to open."""
        with self.index.reader() as txn:
            stuck = [
                s.id
                for _, raw in txn.cursor(db=self.index.db["sessions"])
                if (s := records.decode(Session, raw)).state == SessionState.COMPLETING
            ]
        for session_id in stuck:
            self.index.write(lambda txn, sid=session_id: self._reopen(txn, sid))

    # -- ending sessions, references and garbage ---------------------------

    def cancel(self, session_id: str, tenant: str = DEFAULT_TENANT) -> Session:
        with self.index.reader() as txn:
            self._session(txn, session_id, tenant)
        return self._end_session(session_id, SessionState.CANCELLED, "cancelled by the client")

    def _end_session(self, session_id: str, state: SessionState, reason: str) -> Session:
        def op(txn: lmdb.Transaction) -> Session:
            session = self.index.get(txn, "sessions", session_id.encode(), Session)
            if session.state not in (SessionState.OPEN, SessionState.COMPLETING):
                raise SessionNotOpen(f"upload {session_id} is {session.state}", state=session.state)
            self._delete_parts(txn, session_id, release=True)
            session = msgspec.structs.replace(
                session, state=state, reason=reason, updated=self.clock()
            )
            self.index.put(txn, "sessions", session_id.encode(), session)
            return session

        return self.index.write(op)

    def expire_sessions(self) -> list[str]:
        """End open sessions past their expiry and release their chunks."""
        now = self.clock()
        with self.index.reader() as txn:
            due = [
                s.id
                for _, raw in txn.cursor(db=self.index.db["sessions"])
                if (s := records.decode(Session, raw)).state == SessionState.OPEN
                and s.expires <= now
            ]
        for session_id in due:
            self._end_session(session_id, SessionState.EXPIRED, "expired before completion")
        return due

    def collect_garbage(self, grace: float) -> tuple[int, int]:
        """Delete chunks no session or file has used for `grace` seconds.

        Returns (objects deleted, bytes freed). Runs inside one write operation,
        so no chunk can be attached while it is judged unreferenced.
        """
        cutoff = self.clock() - grace

        def op(txn: lmdb.Transaction) -> tuple[int, int]:
            count = freed = 0
            cursor = txn.cursor(db=self.index.db["chunks"])
            for key, raw in list(cursor):
                chunk = records.decode(ChunkRecord, raw)
                if chunk.refs == 0 and chunk.released is not None and chunk.released <= cutoff:
                    txn.delete(key, db=self.index.db["chunks"])
                    self.objects.delete(key.hex())
                    count += 1
                    freed += chunk.size
            return count, freed

        return self.index.write(op)

    def sweep_orphans(self, grace: float) -> tuple[int, int]:
        """Delete objects on disk that no chunk record names, older than `grace`.

        An object is written before it is attached to a session; if the attach
        is refused (a conflicting re-send) or the process dies in between, the
        object has no record. The disk walk runs outside the writer; each
        candidate is re-checked inside one write operation before it goes.
        Returns (objects deleted, bytes freed).
        """
        now = time.time()  # object ages are file mtimes, i.e. wall-clock time
        chunks = self.index.db["chunks"]
        candidates = []
        with self.index.reader() as txn:
            for digest in self.objects.iter_hashes():
                if txn.get(bytes.fromhex(digest), db=chunks) is None:
                    age = self.objects.age(digest, now)
                    if age is not None and age > grace:
                        candidates.append(digest)
        if not candidates:
            return 0, 0

        def op(txn: lmdb.Transaction) -> tuple[int, int]:
            count = freed = 0
            for digest in candidates:
                if txn.get(bytes.fromhex(digest), db=chunks) is not None:
                    continue
                try:
                    st = self.objects.path(digest).stat()
                except FileNotFoundError:
                    continue
                if time.time() - st.st_mtime > grace:
                    self.objects.delete(digest)
                    count += 1
                    freed += st.st_size
            return count, freed

        return self.index.write(op)

    def _add_ref(self, txn: lmdb.Transaction, digest: str, size: int) -> None:
        key = bytes.fromhex(digest)
        chunk = self.index.get(txn, "chunks", key, ChunkRecord)
        if chunk is None or chunk.refs == 0:
            # A chunk coming back from zero references may have just been
            # collected; its object must still be on disk.
            if not self.objects.exists(digest):
                raise StorageError(f"object {digest} vanished before it was attached; retry")
        if chunk is None:
            chunk = ChunkRecord(size=size, refs=1, created=self.clock())
        else:
            chunk = msgspec.structs.replace(chunk, refs=chunk.refs + 1, released=None)
        self.index.put(txn, "chunks", key, chunk)

    def _release_ref(self, txn: lmdb.Transaction, digest: str) -> None:
        key = bytes.fromhex(digest)
        chunk = self.index.get(txn, "chunks", key, ChunkRecord)
        if chunk is None:
            return
        refs = max(chunk.refs - 1, 0)
        chunk = msgspec.structs.replace(
            chunk, refs=refs, released=self.clock() if refs == 0 else None
        )
        self.index.put(txn, "chunks", key, chunk)

    def _delete_parts(self, txn: lmdb.Transaction, session_id: str, release: bool = False) -> None:
        prefix = _part_prefix(session_id)
        db = self.index.db["parts"]
        cursor = txn.cursor(db=db)
        keys = []
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                keys.append(key)
                if release:
                    self._release_ref(txn, records.unpack_entry(value)[0])
        for key in keys:
            txn.delete(key, db=db)

    # -- files and jobs ---------------------------------------------------

    def file(self, file_id: str, tenant: str = DEFAULT_TENANT) -> FileRecord:
        with self.index.reader() as txn:
            file = self.index.get(txn, "files", file_id.encode(), FileRecord)
        if file is None or file.tenant != tenant:
            raise UnknownFile(f"no file with id {file_id!r}")
        return file

    def manifest(self, file_id: str) -> list[tuple[str, int]]:
        with self.index.reader() as txn:
            raw = txn.get(file_id.encode(), db=self.index.db["manifests"])
        if raw is None:
            raise UnknownFile(f"no file with id {file_id!r}")
        return records.unpack_manifest(raw)

    def open_file(self, file_id: str, tenant: str = DEFAULT_TENANT) -> ManifestReader:
        self.file(file_id, tenant)
        return ManifestReader(self.objects, self.manifest(file_id))

    def job(self, job_id: str) -> Job:
        with self.index.reader() as txn:
            job = self.index.get(txn, "jobs", job_id.encode(), Job)
        if job is None:
            raise StorageError(f"job {job_id} is missing from the index")
        return job

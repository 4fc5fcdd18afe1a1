"""The store: upload sessions, chunks and files on top of objects and the index.

Synchronous and thread-safe; an async server calls it from worker threads.
Every state change is one LMDB write operation through the group committer,
so it is durable when the call returns.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import secrets
import threading
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
    ChunkHashMismatch,
    ChunkOutOfRange,
    IncompleteUpload,
    InvalidLayout,
    SessionNotOpen,
    StorageError,
    TooLarge,
    UnknownFile,
    UnknownJob,
    UnknownSession,
    WrongChunkSize,
)
from .index import DEFAULT_MAP_SIZE, Index
from .materialize import materialize, safe_filename
from .objects import ObjectStore, PutResult, is_hash
from .reader import ManifestReader
from .records import (
    DEFAULT_TENANT,
    ChunkRecord,
    FileRecord,
    Job,
    JobState,
    OutboxEntry,
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


def _lower_thread_priority() -> None:
    # Linux gives each thread its own nice value.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _hash_key(blake3_hex: str, file_id: str) -> bytes:
    return bytes.fromhex(blake3_hex) + file_id.encode()


def _manifest_key(packed_manifest: bytes, file_id: str) -> bytes:
    return blake3.blake3(packed_manifest).digest() + file_id.encode()


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
        process_files: bool = False,
    ) -> None:
        """`process_files`: completed files wait in `processing` for `conclude`
        (the daemon's plugins decide); otherwise they are accepted at once."""
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
        self.process_files = process_files
        self.objects = ObjectStore(self.root, durable=self.durable)
        self.index = Index(
            self.root / "index.lmdb",
            durable=self.durable,
            map_size=map_size,
            group_commit=group_commit,
        )
        # Completion reads whole files (hash, copy): background work, run at a
        # lower CPU priority so that chunks still arriving come first.
        self._completer = concurrent.futures.ThreadPoolExecutor(
            4, "ingestd-complete", initializer=_lower_thread_priority
        )
        self._locks_guard = threading.Lock()
        self._completion_locks: dict[str, tuple[threading.Lock, int]] = {}

    def close(self) -> None:
        self._completer.shutdown()
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
            self._check_layout(size, chunks, min_chunk_size, max_chunk_size or size or 1)
        now = self.clock()
        session = Session(
            id=new_id(),
            tenant=tenant,
            filename=filename,
            size=size,
            chunk_size=chunk_size,
            total_chunks=len(chunks) if chunks is not None else -(-size // chunk_size),
            state=SessionState.OPEN,
            created=now,
            updated=now,
            expires=now + self.session_ttl,
            declared=chunks is not None,
            sha256=sha256.lower() if sha256 else None,
            metadata=metadata or {},
        )

        def op(txn: lmdb.Transaction) -> Session:
            nonlocal session
            if chunks is not None:
                declared = self.index.db["declared"]
                attached = attached_bytes = 0
                for i, (digest, length) in enumerate(chunks):
                    key = _part_key(session.id, i)
                    txn.put(key, records.pack_entry(digest, length), db=declared)
                    if self._live_chunk(txn, digest, length):
                        self._add_ref(txn, digest, length)
                        txn.put(key, records.pack_entry(digest, length), db=self.index.db["parts"])
                        attached += 1
                        attached_bytes += length
                session = msgspec.structs.replace(
                    session, received_chunks=attached, received_bytes=attached_bytes
                )
            self.index.put(txn, "sessions", session.id.encode(), session)
            return session

        return self.index.write(op)

    @staticmethod
    def _check_layout(
        size: int, chunks: list[tuple[str, int]], min_size: int, max_size: int
    ) -> None:
        total = 0
        for i, (digest, length) in enumerate(chunks):
            if not is_hash(digest):
                raise InvalidLayout(f"chunk {i}: {digest!r} is not a lowercase BLAKE3 hex digest")
            last = i == len(chunks) - 1
            if not (1 if last else min_size) <= length <= max_size:
                raise InvalidLayout(
                    f"chunk {i} is {length} bytes; chunks must be {min_size}..{max_size} bytes "
                    "(the last one 1.."
                    f"{max_size})",
                    index=i,
                )
            total += length
        if total != size:
            raise InvalidLayout(f"the chunk sizes add up to {total}, not the upload size {size}")

    def _live_chunk(self, txn: lmdb.Transaction, digest: str, length: int) -> bool:
        """Whether the store holds this chunk and can attach it without its bytes."""
        chunk = self.index.get(txn, "chunks", bytes.fromhex(digest), ChunkRecord)
        if chunk is None or chunk.size != length:
            return False
        # An unreferenced chunk may be collected at any moment after its grace
        # period; it is live only while its object is still on disk.
        return chunk.refs > 0 or self.objects.exists(digest)

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

    def missing(self, session_id: str, tenant: str = DEFAULT_TENANT) -> list[int]:
        """Indices whose bytes the client still has to send.

        For a declared layout, an index is not missing when its chunk is
        already in the store (it is attached at completion), and of several
        indices with the same unknown chunk only the first is listed.
        """
        with self.index.reader() as txn:
            session = self._session(txn, session_id, tenant)
            present = self._present(txn, session_id)
            if not session.declared:
                return [i for i in range(session.total_chunks) if i not in present]
            out: list[int] = []
            wanted: set[str] = set()
            for i, (digest, length) in self._declared(txn, session_id):
                if i in present or digest in wanted:
                    continue
                if not self._live_chunk(txn, digest, length):
                    wanted.add(digest)
                    out.append(i)
            return out

    def expected_chunk(
        self, session_id: str, index: int, tenant: str = DEFAULT_TENANT
    ) -> tuple[str | None, int]:
        """(declared BLAKE3 or None, length) of chunk `index`; refuses what cannot fit."""
        with self.index.reader() as txn:
            session = self._session(txn, session_id, tenant)
            return self._expected(txn, session, index)

    def _expected(
        self, txn: lmdb.Transaction, session: Session, index: int
    ) -> tuple[str | None, int]:
        if session.state != SessionState.OPEN:
            raise SessionNotOpen(f"upload {session.id} is {session.state}", state=session.state)
        if session.stream:
            # Its parts follow the stream's offset; a chunk by index would break it.
            raise SessionNotOpen(
                f"upload {session.id} is a tus upload; send its bytes with tus PATCH requests",
                state=session.state,
            )
        if not 0 <= index < session.total_chunks:
            raise ChunkOutOfRange(
                f"chunk index {index} is outside 0..{session.total_chunks - 1}",
                total_chunks=session.total_chunks,
            )
        if session.declared:
            raw = txn.get(_part_key(session.id, index), db=self.index.db["declared"])
            if raw is None:
                raise StorageError(f"declared chunk {index} of {session.id} is missing")
            return records.unpack_entry(raw)
        if index < session.total_chunks - 1:
            return None, session.chunk_size
        return None, session.size - session.chunk_size * (session.total_chunks - 1)

    def check_chunk(self, session: Session, index: int, length: int) -> None:
        """Refuse a chunk before its bytes are stored, when that is already clear."""
        with self.index.reader() as txn:
            self._check_length(txn, session, index, length)

    def _check_length(
        self, txn: lmdb.Transaction, session: Session, index: int, length: int
    ) -> str | None:
        digest, expected = self._expected(txn, session, index)
        if length != expected:
            raise WrongChunkSize(
                f"chunk {index} must be {expected} bytes, got {length}",
                expected=expected,
                actual=length,
            )
        return digest

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
            declared = self._check_length(txn, session, index, put.size)
            if declared is not None and declared != put.hash:
                raise ChunkHashMismatch(
                    f"chunk {index} hashes to {put.hash}, not the declared {declared}",
                    expected=declared,
                    actual=put.hash,
                )
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

        `begin_completion` then `finish_completion`, in one call. Idempotent:
        completing a completed session returns the same result.
        """
        self.begin_completion(session_id, tenant)
        return self.finish_completion(session_id, metadata)

    def begin_completion(self, session_id: str, tenant: str = DEFAULT_TENANT) -> Session:
        """Check that every chunk is there and move the session to `completing`.

        Quick: no bytes are read. Creates the session's job (state `queued`).
        Chunks of a declared layout that the store holds by now (another index
        of the same upload brought them) are attached here.
        """
        return self.index.write(lambda txn: self._begin_completion(txn, session_id, tenant))

    def _begin_completion(self, txn: lmdb.Transaction, session_id: str, tenant: str) -> Session:
        """`begin_completion` inside a write transaction (streams complete in the
        same transaction as their last bytes)."""
        session = self._session(txn, session_id, tenant)
        if session.state in (
            SessionState.COMPLETING,
            SessionState.PROCESSING,
            SessionState.COMPLETED,
        ):
            return session
        if session.state != SessionState.OPEN:
            raise SessionNotOpen(f"upload {session_id} is {session.state}", state=session.state)
        if session.received_chunks != session.total_chunks and session.declared:
            session = self._attach_known(txn, session)
        if session.received_chunks != session.total_chunks:
            present = self._present(txn, session_id)
            missing = [i for i in range(session.total_chunks) if i not in present]
            raise IncompleteUpload(
                f"{len(missing)} of {session.total_chunks} chunks are missing",
                missing=missing,
            )
        if session.received_bytes != session.size:
            # Only a stream's last part can be short of its length (a tail
            # still growing); every chunk index is present, yet bytes are not.
            raise IncompleteUpload(
                f"{session.size - session.received_bytes} of {session.size} bytes are missing",
                missing=[session.total_chunks - 1],
            )
        now = self.clock()
        session = msgspec.structs.replace(
            session,
            state=SessionState.COMPLETING,
            file_id=session.file_id or new_id(),
            job_id=session.job_id or new_id(),
            updated=now,
        )
        self.index.put(txn, "sessions", session_id.encode(), session)
        job = Job(
            id=session.job_id,
            tenant=session.tenant,
            session_id=session.id,
            file_id=session.file_id,
            state=JobState.QUEUED,
            created=now,
            updated=now,
        )
        self.index.put(txn, "jobs", job.id.encode(), job)
        return session

    def _attach_known(self, txn: lmdb.Transaction, session: Session) -> Session:
        present = self._present(txn, session.id)
        added = added_bytes = 0
        for i, (digest, length) in self._declared(txn, session.id):
            if i not in present and self._live_chunk(txn, digest, length):
                self._add_ref(txn, digest, length)
                txn.put(
                    _part_key(session.id, i),
                    records.pack_entry(digest, length),
                    db=self.index.db["parts"],
                )
                added += 1
                added_bytes += length
        return msgspec.structs.replace(
            session,
            received_chunks=session.received_chunks + added,
            received_bytes=session.received_bytes + added_bytes,
        )

    def finish_completion(
        self, session_id: str, metadata: dict[str, object] | None = None
    ) -> Completion:
        """Hash the content, check the declared sha256, materialise, record the file.

        Runs on a `completing` session (after `begin_completion`, or after a
        crash interrupted an earlier call). A sha256 mismatch rejects the
        session and fails its job; any other failure puts the session back to
        `open` so that completion can be retried.
        """
        with self._completion_lock(session_id):
            session = self._session_any(session_id)
            if session.state in (SessionState.PROCESSING, SessionState.COMPLETED):
                return self._completion(session)
            if session.state != SessionState.COMPLETING:
                raise SessionNotOpen(f"upload {session_id} is {session.state}", state=session.state)
            try:
                received = self.received(session_id)
                entries = [received[i] for i in range(session.total_chunks)]
                if sum(n for _, n in entries) != session.size:
                    raise StorageError(f"manifest of {session_id} does not add up to its size")
                packed = records.pack_manifest(entries)
                twin = self._twin(packed, session.tenant)
                if twin is not None and not (twin.sha256 or session.sha256 is None):
                    twin = None
                copying = None
                if self.materialize_mode == "copy":
                    # The copy and the hashing both read every chunk; run them
                    # side by side rather than one after the other.
                    same_as = twin.path if twin is not None else None
                    copying = self._completer.submit(self._materialize, session, entries, same_as)
                try:
                    if twin is not None:
                        # Identical manifest, identical bytes: the hashes are known.
                        digest, sha256 = twin.blake3, twin.sha256
                    else:
                        with_sha256 = session.sha256 is not None
                        hashing = self._completer.submit(
                            self._hash, entries, with_sha256=with_sha256
                        )
                        digest, sha256 = hashing.result()
                finally:
                    path = str(copying.result()) if copying is not None else None
                if session.sha256 is not None and sha256 != session.sha256:
                    reason = f"content sha256 is {sha256}, the upload declared {session.sha256}"
                    self._end_session(session_id, SessionState.REJECTED, reason)
                    self.update_job(session.job_id, JobState.FAILED, error=reason)
                    self._remove_copy(path)
                    raise ChecksumMismatch(reason, expected=session.sha256, actual=sha256)
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
                state="processing" if self.process_files else "accepted",
            )

            def finish(txn: lmdb.Transaction) -> Session:
                # The session's references to its chunks pass to the file as they are.
                self.index.put(txn, "files", file.id.encode(), file)
                txn.put(_hash_key(file.blake3, file.id), b"", db=self.index.db["file_hashes"])
                txn.put(file.id.encode(), packed, db=self.index.db["manifests"])
                txn.put(_manifest_key(packed, file.id), b"", db=self.index.db["manifest_files"])
                self._delete_parts(txn, session_id)
                state = SessionState.PROCESSING if self.process_files else SessionState.COMPLETED
                done = msgspec.structs.replace(session, state=state, updated=now)
                self.index.put(txn, "sessions", session_id.encode(), done)
                return done

            return Completion(self.index.write(finish), file, self.job(session.job_id))

    @contextlib.contextmanager
    def _completion_lock(self, session_id: str):
        # Two callers finishing the same session (a retried request, the job
        # runner) must not both hash and record it; the second waits and
        # then finds it completed. Entries live only while someone holds them.
        with self._locks_guard:
            lock, users = self._completion_locks.get(session_id, (threading.Lock(), 0))
            self._completion_locks[session_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._locks_guard:
                lock, users = self._completion_locks[session_id]
                if users == 1:
                    del self._completion_locks[session_id]
                else:
                    self._completion_locks[session_id] = (lock, users - 1)

    def _session_any(self, session_id: str) -> Session:
        with self.index.reader() as txn:
            session = self.index.get(txn, "sessions", session_id.encode(), Session)
        if session is None:
            raise UnknownSession(f"no upload with id {session_id!r}")
        return session

    def completing_sessions(self) -> list[str]:
        """Sessions whose completion was accepted but not finished (e.g. by a crash)."""
        with self.index.reader() as txn:
            return [
                s.id
                for _, raw in txn.cursor(db=self.index.db["sessions"])
                if (s := records.decode(Session, raw)).state == SessionState.COMPLETING
            ]

    def _completion(self, session: Session) -> Completion:
        return Completion(
            session, self.file(session.file_id, session.tenant), self.job(session.job_id)
        )

    def _present(self, txn: lmdb.Transaction, session_id: str) -> set[int]:
        prefix = _part_prefix(session_id)
        present = set()
        cursor = txn.cursor(db=self.index.db["parts"])
        if cursor.set_range(prefix):
            for key in cursor.iternext(keys=True, values=False):
                if not key.startswith(prefix):
                    break
                present.add(int.from_bytes(key[len(prefix) :], "big"))
        return present

    def _declared(self, txn: lmdb.Transaction, session_id: str):
        prefix = _part_prefix(session_id)
        cursor = txn.cursor(db=self.index.db["declared"])
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                yield int.from_bytes(key[len(prefix) :], "big"), records.unpack_entry(value)

    def _hash(self, entries: list[tuple[str, int]], *, with_sha256: bool) -> tuple[str, str | None]:
        # One thread: completion must leave a core to the uploads still running.
        whole = blake3.blake3()
        sha = hashlib.sha256() if with_sha256 else None
        with ManifestReader(self.objects, entries) as reader:
            buf = bytearray(_HASH_BLOCK)
            view = memoryview(buf)
            while n := reader.readinto(buf):
                whole.update(view[:n])
                if sha is not None:
                    sha.update(view[:n])
        return whole.hexdigest(), sha.hexdigest() if sha else None

    def _materialize(
        self, session: Session, entries: list[tuple[str, int]], same_as: str | None = None
    ) -> Path:
        dest = (
            self.completed_dir / session.tenant / session.file_id / safe_filename(session.filename)
        )
        return materialize(self.objects, entries, dest, within=self.completed_dir, same_as=same_as)

    def _twin(self, packed_manifest: bytes, tenant: str) -> FileRecord | None:
        """A live file of the tenant with exactly this manifest, if any."""
        prefix = _manifest_key(packed_manifest, "")
        with self.index.reader() as txn:
            cursor = txn.cursor(db=self.index.db["manifest_files"])
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    file = self.index.get(txn, "files", key[len(prefix) :], FileRecord)
                    if file is not None and file.tenant == tenant and file.state != "rejected":
                        return file
        return None

    def _reopen(self, txn: lmdb.Transaction, session_id: str) -> None:
        session = self.index.get(txn, "sessions", session_id.encode(), Session)
        if session is not None and session.state == SessionState.COMPLETING:
            session = msgspec.structs.replace(session, state=SessionState.OPEN)
            self.index.put(txn, "sessions", session_id.encode(), session)

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
        """Drop a session's attached and declared chunk lists, optionally releasing refs."""
        prefix = _part_prefix(session_id)
        for digest in self._delete_prefix(txn, "parts", prefix):
            if release:
                self._release_ref(txn, digest)
        self._delete_prefix(txn, "declared", prefix)

    def _delete_prefix(self, txn: lmdb.Transaction, db_name: str, prefix: bytes) -> list[str]:
        db = self.index.db[db_name]
        cursor = txn.cursor(db=db)
        keys, digests = [], []
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                keys.append(key)
                digests.append(records.unpack_entry(value)[0])
        for key in keys:
            txn.delete(key, db=db)
        return digests

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

    def files(
        self,
        tenant: str = DEFAULT_TENANT,
        *,
        prefix: str = "",
        after: str = "",
        limit: int = 100,
    ) -> list[FileRecord]:
        """A tenant's files in id order, those after `after`, names starting with `prefix`.

        A scan of the files database: fine for thousands of files; a name
        index is the next step if tenants keep millions.
        """
        out: list[FileRecord] = []
        with self.index.reader() as txn:
            cursor = txn.cursor(db=self.index.db["files"])
            start = after.encode() + b"\0" if after else b""
            if not cursor.set_range(start):
                return out
            for _, raw in cursor:
                file = records.decode(FileRecord, raw)
                if file.tenant == tenant and file.filename.startswith(prefix):
                    out.append(file)
                    if len(out) >= limit:
                        break
        return out

    def delete_file(self, file_id: str, tenant: str = DEFAULT_TENANT) -> FileRecord:
        """Forget a file; its chunks are released, and collected once nothing uses them."""

        def op(txn: lmdb.Transaction) -> FileRecord:
            file = self.index.get(txn, "files", file_id.encode(), FileRecord)
            if file is None or file.tenant != tenant:
                raise UnknownFile(f"no file with id {file_id!r}")
            raw = txn.pop(file_id.encode(), db=self.index.db["manifests"]) or b""
            self._forget_manifest(txn, file_id, raw)
            txn.delete(file_id.encode(), db=self.index.db["files"])
            txn.delete(_hash_key(file.blake3, file.id), db=self.index.db["file_hashes"])
            return file

        file = self.index.write(op)
        self._remove_copy(file.path)
        return file

    def _forget_manifest(self, txn: lmdb.Transaction, file_id: str, packed: bytes) -> None:
        """Release a file's chunks and drop it from the manifest index."""
        for digest, _ in records.unpack_manifest(packed):
            self._release_ref(txn, digest)
        if packed:
            txn.delete(_manifest_key(packed, file_id), db=self.index.db["manifest_files"])

    @staticmethod
    def _remove_copy(path: str | None) -> None:
        if path:
            # The materialised copy is derived data; remove it and its folder.
            with contextlib.suppress(OSError):
                os.unlink(path)
                os.rmdir(os.path.dirname(path))

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
        content is gone.
        """

        def op(txn: lmdb.Transaction) -> FileRecord:
            file = self.index.get(txn, "files", file_id.encode(), FileRecord)
            if file is None:
                raise UnknownFile(f"no file with id {file_id!r}")
            if file.state != "processing":
                return file
            file = msgspec.structs.replace(
                file,
                state="accepted" if accepted else "rejected",
                reason=None if accepted else reason,
                described=described or {},
                detection=detection,
                parents=parents or [],
                path=file.path if accepted else None,
            )
            self.index.put(txn, "files", file_id.encode(), file)
            session = self.index.get(txn, "sessions", file.session_id.encode(), Session)
            if session is not None and session.state == SessionState.PROCESSING:
                session = msgspec.structs.replace(
                    session,
                    state=SessionState.COMPLETED if accepted else SessionState.REJECTED,
                    reason=None if accepted else reason,
                    updated=self.clock(),
                )
                self.index.put(txn, "sessions", session.id.encode(), session)
            if not accepted:
                raw = txn.pop(file_id.encode(), db=self.index.db["manifests"]) or b""
                self._forget_manifest(txn, file_id, raw)
                txn.delete(_hash_key(file.blake3, file.id), db=self.index.db["file_hashes"])
            return file

        before = self.file_any(file_id)
        file = self.index.write(op)
        if not accepted:
            self._remove_copy(before.path)
        return file

    def file_any(self, file_id: str) -> FileRecord:
        with self.index.reader() as txn:
            file = self.index.get(txn, "files", file_id.encode(), FileRecord)
        if file is None:
            raise UnknownFile(f"no file with id {file_id!r}")
        return file

    def files_by_blake3(self, digest: str, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Ids of the tenant's live files with this content, oldest first."""
        prefix = bytes.fromhex(digest)
        found: list[FileRecord] = []
        with self.index.reader() as txn:
            cursor = txn.cursor(db=self.index.db["file_hashes"])
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    file = self.index.get(txn, "files", key[len(prefix) :], FileRecord)
                    if file is not None and file.tenant == tenant:
                        found.append(file)
        return [f.id for f in sorted(found, key=lambda f: f.created)]

    # -- outbox -----------------------------------------------------------

    def outbox_put(self, plugin: str, payload: dict[str, object], key: str | None = None) -> str:
        """Queue a message for delivery; the same `key` is queued once."""
        message_id = key or new_id()

        def op(txn: lmdb.Transaction) -> str:
            if txn.get(message_id.encode(), db=self.index.db["outbox"]) is None:
                now = self.clock()
                entry = OutboxEntry(message_id, plugin, payload, now, now)
                self.index.put(txn, "outbox", message_id.encode(), entry)
            return message_id

        return self.index.write(op)

    def outbox_due(self, limit: int = 100) -> list[OutboxEntry]:
        now = self.clock()
        with self.index.reader() as txn:
            due = [
                entry
                for _, raw in txn.cursor(db=self.index.db["outbox"])
                if (entry := records.decode(OutboxEntry, raw)).state == "pending"
                and entry.next_attempt <= now
            ]
        return sorted(due, key=lambda e: e.next_attempt)[:limit]

    def outbox_next_time(self) -> float | None:
        with self.index.reader() as txn:
            times = [
                entry.next_attempt
                for _, raw in txn.cursor(db=self.index.db["outbox"])
                if (entry := records.decode(OutboxEntry, raw)).state == "pending"
            ]
        return min(times, default=None)

    def outbox_done(self, message_id: str) -> None:
        self.index.write(lambda txn: txn.delete(message_id.encode(), db=self.index.db["outbox"]))

    def outbox_failed(self, message_id: str, error: str, retry_at: float | None) -> OutboxEntry:
        """Record a failed attempt; `retry_at` None means give up (state "dead")."""

        def op(txn: lmdb.Transaction) -> OutboxEntry:
            entry = self.index.get(txn, "outbox", message_id.encode(), OutboxEntry)
            if entry is None:
                raise StorageError(f"outbox message {message_id} vanished")
            entry = msgspec.structs.replace(
                entry,
                attempt=entry.attempt + 1,
                last_error=error,
                next_attempt=retry_at if retry_at is not None else entry.next_attempt,
                state="pending" if retry_at is not None else "dead",
            )
            self.index.put(txn, "outbox", message_id.encode(), entry)
            return entry

        return self.index.write(op)

    def outbox(self) -> list[OutboxEntry]:
        with self.index.reader() as txn:
            return [
                records.decode(OutboxEntry, raw)
                for _, raw in txn.cursor(db=self.index.db["outbox"])
            ]

    def job(self, job_id: str, tenant: str | None = None) -> Job:
        """A job by id; with `tenant`, another tenant's job is reported as unknown."""
        with self.index.reader() as txn:
            job = self.index.get(txn, "jobs", job_id.encode(), Job)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise UnknownJob(f"no job with id {job_id!r}")
        return job

    def update_job(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        results: dict[str, object] | None = None,
        verdict: str | None = None,
        timings: dict[str, dict[str, float]] | None = None,
    ) -> Job:
        def op(txn: lmdb.Transaction) -> Job:
            job = self.index.get(txn, "jobs", job_id.encode(), Job)
            if job is None:
                raise UnknownJob(f"no job with id {job_id!r}")
            job = msgspec.structs.replace(
                job,
                state=state,
                error=error,
                results=job.results if results is None else results,
                verdict=verdict if verdict is not None else job.verdict,
                timings=job.timings if timings is None else timings,
                updated=self.clock(),
            )
            self.index.put(txn, "jobs", job_id.encode(), job)
            return job

        return self.index.write(op)

    def unfinished_jobs(self) -> list[Job]:
        """Jobs queued or running, e.g. when a crash interrupted them."""
        with self.index.reader() as txn:
            return [
                job
                for _, raw in txn.cursor(db=self.index.db["jobs"])
                if (job := records.decode(Job, raw)).state in (JobState.QUEUED, JobState.RUNNING)
            ]

"""Completion: from a session whose chunks are all there to a recorded file.

Two steps. `begin` (inside a write transaction; quick, no bytes read) checks
that every chunk is attached, moves the session to `completing` and creates
its job. `finish` hashes the content (and materialises a copy in the same pass),
checks a declared sha256, and records the file in one write that hands the
session's chunk references over to it — only if the session is still
`completing` then: a session cancelled meanwhile gets no file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import lmdb

from . import records
from .chunkstore import ChunkStore
from .errors import ChecksumMismatch, IncompleteUpload, SessionNotOpen, StorageError
from .files import Files
from .index import Index
from .locks import LockDir
from .materialize import materialize, read_blocks, remove_copy, safe_filename
from .parts import Parts
from .queues import Jobs
from .records import FileRecord, FileState, Job, Session, SessionState
from .refs import ChunkRefs
from .sessions import FINISHED_UPLOAD, Sessions, new_id

MATERIALIZE_MODES = ("copy", "none")
_HASH_BLOCK = 4 << 20


@dataclass(frozen=True, slots=True)
class Completion:
    session: Session
    file: FileRecord
    job: Job


def _lower_thread_priority() -> None:
    # Linux gives each thread its own nice value.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class Completer:
    def __init__(
        self,
        *,
        index: Index,
        chunks: ChunkStore,
        sessions: Sessions,
        parts: Parts,
        refs: ChunkRefs,
        files: Files,
        jobs: Jobs,
        clock: Callable[[], float],
        end_session: Callable[[lmdb.Transaction, Session, SessionState, str], Session],
        durable: bool,
        materialize_mode: str,
        completed_dir: Path,
        process_files: bool,
        locks: LockDir,
    ) -> None:
        if materialize_mode not in MATERIALIZE_MODES:
            raise ValueError(f"materialize must be one of {MATERIALIZE_MODES}")
        self._index = index
        self._chunks = chunks
        self._sessions = sessions
        self._parts = parts
        self._refs = refs
        self._files = files
        self._jobs = jobs
        self._clock = clock
        self._end_session = end_session
        self._durable = durable
        self.materialize_mode = materialize_mode
        self.completed_dir = completed_dir
        self.process_files = process_files
        # Completion reads whole files (hash, copy): background work, run at a
        # lower CPU priority so that chunks still arriving come first.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            4, "ingestd-complete", initializer=_lower_thread_priority
        )
        self._locks = locks

    def close(self) -> None:
        self._pool.shutdown()

    # -- begin -----------------------------------------------------------------

    def begin(self, txn: lmdb.Transaction, session: Session) -> Session:
        """Check that every chunk is there; `open → completing`, with a queued job.

        Chunks of a declared layout that the store holds by now (another index
        of the same upload brought them) are attached here. Idempotent for a
        session whose completion has begun already.
        """
        if session.state in FINISHED_UPLOAD:
            return session
        if session.state != SessionState.OPEN:
            raise SessionNotOpen(f"upload {session.id} is {session.state}", state=session.state)
        if session.received_chunks != session.total_chunks and session.declared:
            session = self._attach_known(txn, session)
        if session.received_chunks != session.total_chunks:
            present = self._parts.present(txn, session.id)
            missing = [i for i in range(session.total_chunks) if i not in present]
            raise IncompleteUpload(
                f"{len(missing)} of {session.total_chunks} chunks are missing", missing=missing
            )
        if session.received_bytes != session.size:
            # Only a stream's last part can be short of its length (a tail
            # still growing); every chunk index is present, yet bytes are not.
            raise IncompleteUpload(
                f"{session.size - session.received_bytes} of {session.size} bytes are missing",
                missing=[session.total_chunks - 1],
            )
        session = self._sessions.transition(
            txn,
            session,
            SessionState.COMPLETING,
            file_id=session.file_id or new_id(),
            # A new job each time: one that failed (a completion retried after
            # an error) stays failed, with its reason.
            job_id=new_id(),
        )
        self._jobs.create(
            txn,
            job_id=session.job_id,
            tenant=session.tenant,
            session_id=session.id,
            file_id=session.file_id,
        )
        return session

    def _attach_known(self, txn: lmdb.Transaction, session: Session) -> Session:
        present = self._parts.present(txn, session.id)
        for i, (digest, length) in list(self._parts.declared(txn, session.id)):
            if i not in present and self._refs.attachable(txn, digest, length, session.tenant):
                session, _ = self._parts.attach(txn, session, i, digest, length)
        return session

    # -- finish ----------------------------------------------------------------

    def finish(
        self, session_id: str, metadata: dict[str, object] | None = None, *, copy_now: bool = False
    ) -> Completion:
        """Hash the content, check the declared sha256, materialise, record the file.

        Runs on a `completing` session (after `begin`, or after a crash
        interrupted an earlier call). A sha256 mismatch rejects the session
        and fails its job; any other failure (reading, copying, recording)
        fails the job and puts the session back to `open`, so that completion
        can be retried.
        """
        # Two callers finishing the same session (a retried request, the job
        # runner, in this process or another) must not both hash and record
        # it; the second waits and then finds it completed.
        with self._locks.hold(f"complete-{session_id}"):
            with self._index.reader() as txn:
                session = self._find(txn, session_id)
                if session.state in (SessionState.PROCESSING, SessionState.COMPLETED):
                    return self._completion(txn, session)
                if session.state != SessionState.COMPLETING:
                    raise SessionNotOpen(
                        f"upload {session_id} is {session.state}", state=session.state
                    )
                entries = [entry for _, entry in self._parts.scan(txn, session_id)]
                packed = records.pack_manifest(entries)
                twin = self._files.twin(txn, packed, session.tenant)
            path: str | None = None
            copy_due = False
            try:
                if len(entries) != session.total_chunks or sum(n for _, n in entries) != (
                    session.size
                ):
                    raise StorageError(f"manifest of {session_id} does not add up to its size")
                if twin is not None and twin.sha256 is None and session.sha256 is not None:
                    twin = None  # its sha256 is unknown; this upload needs it
                digest, sha256, path = self._read_through(
                    session, entries, twin, copy_now or not self.process_files
                )
                copy_due = self.materialize_mode == "copy" and path is None
                if session.sha256 is not None and sha256 != session.sha256:
                    reason = f"content sha256 is {sha256}, the upload declared {session.sha256}"
                    self._index.write(
                        lambda txn: self._end_session(
                            txn, self._find(txn, session_id), SessionState.REJECTED, reason
                        )
                    )
                    remove_copy(path)
                    raise ChecksumMismatch(reason, expected=session.sha256, actual=sha256)
            except ChecksumMismatch:
                raise
            except BaseException as exc:
                remove_copy(path)
                self._reopen(session_id, exc)
                raise
            file = FileRecord(
                id=session.file_id,
                tenant=session.tenant,
                session_id=session.id,
                filename=session.filename,
                size=session.size,
                blake3=digest,
                chunk_count=len(entries),
                created=self._clock(),
                sha256=sha256,
                path=path,
                metadata={**session.metadata, **(metadata or {})},
                state=FileState.PROCESSING if self.process_files else FileState.ACCEPTED,
            )

            def record(txn: lmdb.Transaction) -> Completion:
                current = self._find(txn, session_id)
                target = SessionState.PROCESSING if self.process_files else SessionState.COMPLETED
                # Refused unless still `completing` (a cancel may have won the race).
                done = self._sessions.transition(txn, current, target)
                self._files.record(txn, file, packed, copy_due=copy_due)
                self._parts.hand_over(txn, session_id)
                return Completion(done, file, self._jobs.find(txn, session.job_id))

            try:
                return self._index.write(record)
            except SessionNotOpen:
                remove_copy(path)  # cancelled meanwhile: the cancel won
                raise
            except BaseException as exc:
                remove_copy(path)
                self._reopen(session_id, exc)
                raise

    def _read_through(
        self,
        session: Session,
        entries: list[tuple[str, int]],
        twin: FileRecord | None,
        copy_now: bool,
    ) -> tuple[str, str | None, str | None]:
        """(BLAKE3, sha256 or None, materialised path or None) of the content.

        Unless `copy_now`, the copy is left to `write_copy` once the file is
        accepted, off the client's wait; a hard link to an identical file's
        copy is made at once."""
        copying = self.materialize_mode == "copy"
        if twin is not None:
            # Identical manifest, identical bytes: the hashes are known, and
            # the twin's copy can be linked rather than written again.
            if copying and (twin.path is not None or copy_now):
                return twin.blake3, twin.sha256, str(self._materialize(session, entries, twin.path))
            return twin.blake3, twin.sha256, None
        # On the pool's threads: completion runs at a lower CPU priority.
        return self._pool.submit(
            self.hash,
            entries,
            with_sha256=session.sha256 is not None,
            copy_to=self._destination(session) if copying and copy_now else None,
        ).result()

    def write_copy(self, file: FileRecord, entries: list[tuple[str, int]]) -> Path:
        """Materialise an accepted file's copy (a link if an identical file has one)."""
        with self._index.reader() as txn:
            twin = self._files.twin(
                txn, records.pack_manifest(entries), file.tenant, with_copy=True
            )
        same_as = twin.path if twin is not None else None
        return self._pool.submit(self._materialize, file, entries, same_as).result()

    def hash(
        self,
        entries: list[tuple[str, int]],
        *,
        with_sha256: bool,
        copy_to: Path | None = None,
    ) -> tuple[str, str | None, str | None]:
        """BLAKE3 (and sha256) of a manifest's bytes, and the path of the copy
        written to `copy_to` in the same pass; one thread, so that completion
        leaves a core to the uploads still running."""
        whole = blake3.blake3()
        sha = hashlib.sha256() if with_sha256 else None
        observers = [whole.update] + ([sha.update] if sha is not None else [])
        path = None
        if copy_to is not None:
            path = str(
                materialize(
                    self._chunks,
                    entries,
                    copy_to,
                    within=self.completed_dir,
                    durable=self._durable,
                    observers=observers,
                )
            )
        else:
            for block in read_blocks(self._chunks, entries, _HASH_BLOCK):
                for observe in observers:
                    observe(block)
        return whole.hexdigest(), sha.hexdigest() if sha else None, path

    def _destination(self, upload: Session | FileRecord) -> Path:
        file_id = upload.file_id if isinstance(upload, Session) else upload.id
        return self.completed_dir / upload.tenant / file_id / safe_filename(upload.filename)

    def _materialize(
        self, session: Session | FileRecord, entries: list[tuple[str, int]], same_as: str | None
    ) -> Path:
        return materialize(
            self._chunks,
            entries,
            self._destination(session),
            within=self.completed_dir,
            durable=self._durable,
            same_as=same_as,
        )

    def _reopen(self, session_id: str, exc: BaseException) -> None:
        """`completing → open` after a failure, with its job failed in the same
        write, so that the client can complete it again (a new job)."""
        error = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"

        def op(txn: lmdb.Transaction) -> None:
            session = self._sessions.find(txn, session_id)
            if session is not None and session.state == SessionState.COMPLETING:
                self._sessions.transition(txn, session, SessionState.OPEN)
                self._jobs.fail(txn, session.job_id, f"completion failed: {error}")

        self._index.write(op)

    def _find(self, txn: lmdb.Transaction, session_id: str) -> Session:
        session = self._sessions.find(txn, session_id)
        if session is None:
            raise StorageError(f"upload {session_id} vanished during its completion")
        return session

    def _completion(self, txn: lmdb.Transaction, session: Session) -> Completion:
        file = self._files.get(txn, session.file_id, session.tenant)
        return Completion(session, file, self._jobs.find(txn, session.job_id))

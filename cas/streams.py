"""Sessions that receive one ordered byte stream: the storage side of tus.

A stream session is an ordinary session (`Session.stream` is set) plus a
`records.Stream` in the "streams" database. Its bytes are cut at absolute
offsets into the session's fixed `chunk_size`, so part i always holds bytes
[i * chunk_size, (i + 1) * chunk_size) and identical files give identical
chunks (deduplicated like any upload):

- full chunks are attached as they complete, in group-committed index writes,
  so a long request that is cut off keeps what arrived;
- the bytes past the last full chunk (the *tail*) are a part of their own,
  shorter than a chunk, refcounted like any other; the next request starts
  by reading them back and writing them first, and the longer piece it makes
  replaces the tail in the same index write that attaches it.

The stream's offset is therefore exactly what the attached parts hold (the
session's `received_bytes`, kept by the parts ledger): it never counts a
byte that a crash could lose. A write transaction that brings a stream to
its length also starts its completion (`Completer.begin`, same
transaction), so a crash cannot leave a full upload uncompleted.

Concatenation (tus "final" uploads) copies no bytes: a final upload's parts
are its partial uploads' parts, in order, attached (refcounted) once every
partial is complete — at creation, or in the transaction that completes the
last partial. Partial uploads are never completed into files themselves;
they expire (releasing their chunks) like any open session, so that they can
be reused by several final uploads meanwhile.

Synchronous and thread-safe like `Store`; the daemon calls it from worker
threads. Built on the store's public parts: sessions and their transition
table, the parts ledger, completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
import lmdb
import msgspec

from .chunkstore import ChunkStore, ChunkWriter, PutResult
from .errors import (
    ClientError,
    CorruptObject,
    InvalidConcat,
    InvalidLength,
    NotAStream,
    OffsetMismatch,
    SessionNotOpen,
    StorageError,
    TooLarge,
)
from .materialize import remove_copy
from .records import Session, SessionState, Stream

if TYPE_CHECKING:  # the store builds its StreamStore: no import cycle at run time
    from .store import Store

SINGLE = "single"
PARTIAL = "partial"
FINAL = "final"
KINDS = (SINGLE, PARTIAL, FINAL)


@dataclass(frozen=True, slots=True)
class StreamState:
    session: Session
    stream: Stream
    # The upload's length if known: for a final upload not yet assembled, the
    # sum of its partials' lengths once all of them are known.
    length: int | None

    @property
    def offset(self) -> int:
        """The bytes the attached parts hold (durable ones only)."""
        return self.session.received_bytes


@dataclass(frozen=True, slots=True)
class Appended:
    session: Session
    stream: Stream
    # Jobs this write queued by completing uploads: the stream itself, or the
    # final uploads that were waiting for this partial.
    jobs: tuple[str, ...]

    @property
    def offset(self) -> int:
        return self.session.received_bytes

    @property
    def state(self) -> StreamState:
        """The stream after this write (a final upload's length only once assembled)."""
        return StreamState(self.session, self.stream, self.stream.length)


@dataclass(frozen=True, slots=True)
class Piece:
    """A stored object that becomes part `index` of a stream."""

    index: int
    put: PutResult


class Sealed:
    """A chunk's bytes, all written, not yet committed (fsynced and named)."""

    __slots__ = ("index", "_writer")

    def __init__(self, index: int, writer: ChunkWriter) -> None:
        self.index = index
        self._writer = writer

    def commit(self) -> Piece:
        return Piece(self.index, self._writer.commit())

    def abort(self) -> None:
        self._writer.abort()


class Appender:
    """Cuts one request's bytes into chunk objects aligned with the stream.

    Starts at `offset`; inside a chunk, the tail's bytes (read back with
    `StreamStore.read_tail`) are written first, so that the piece replacing
    the tail holds the whole chunk so far. `write` returns the pieces that
    became full chunks — sealed but not committed, so that the caller can
    fsync one while this writes the next — and `finish` the last, shorter
    piece. `checksum` (a hashlib-style object) sees this request's bytes only.
    Use from one thread at a time.
    """

    def __init__(
        self,
        chunks: ChunkStore,
        chunk_size: int,
        offset: int,
        tail: bytes = b"",
        checksum=None,
    ) -> None:
        if len(tail) != offset % chunk_size:
            raise ValueError("the tail must hold the bytes since the last chunk boundary")
        self._chunks = chunks
        self.chunk_size = chunk_size
        self.checksum = checksum
        self.received = 0
        self._index = offset // chunk_size
        self._writer: ChunkWriter | None = None
        self._fill = 0
        # Bytes of this request in the current writer (the rest is the old tail).
        self._fresh = 0
        if tail:
            self._writer = chunks.writer(lane=self)
            self._writer.write(tail)
            self._fill = len(tail)

    def write(self, data: bytes | bytearray | memoryview) -> list[Sealed]:
        view = memoryview(data).cast("B")
        if self.checksum is not None:
            self.checksum.update(view)
        self.received += len(view)
        sealed: list[Sealed] = []
        while view:
            if self._writer is None:
                self._writer = self._chunks.writer(lane=self)
            piece = view[: self.chunk_size - self._fill]
            self._writer.write(piece)
            self._fill += len(piece)
            self._fresh += len(piece)
            view = view[len(piece) :]
            if self._fill == self.chunk_size:
                sealed.append(Sealed(self._index, self._writer))
                self._writer, self._fill, self._fresh = None, 0, 0
                self._index += 1
        return sealed

    def finish(self) -> Sealed | None:
        """The piece past the last full chunk, if this request added bytes to it."""
        writer, self._writer = self._writer, None
        if writer is None:
            return None
        if not self._fresh:
            writer.abort()  # only the old tail: it is attached already
            return None
        return Sealed(self._index, writer)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


class StreamStore:
    def __init__(self, store: Store, *, max_size: int | None = None) -> None:
        """`max_size`: the largest stream (a final upload included) in bytes."""
        self.store = store
        self._index = store.index
        self._chunks = store.chunks
        self._sessions = store.sessions
        self._parts = store.parts
        self.max_size = max_size

    # -- reading --------------------------------------------------------------

    def state(self, session_id: str, tenant: str) -> StreamState:
        with self._index.reader() as txn:
            session = self._sessions.get(txn, session_id, tenant)
            stream = self._stream(txn, session_id)
            length = stream.length
            if stream.kind == FINAL and not stream.assembled:
                length = self._final_length(txn, stream)
            return StreamState(session, stream, length)

    def read_tail(self, session_id: str, tenant: str, offset: int) -> bytes:
        """The bytes since the last chunk boundary before `offset` (b"" on a boundary)."""
        with self._index.reader() as txn:
            session = self._sessions.get(txn, session_id, tenant)
            within = offset % session.chunk_size
            if within == 0:
                return b""
            entry = self._parts.get(txn, session_id, offset // session.chunk_size)
        if entry is None:
            raise OffsetMismatch(f"upload {session_id} has no bytes at offset {offset}")
        digest, length = entry
        if length != within:
            raise OffsetMismatch(f"upload {session_id} is no longer at offset {offset}")
        data = self._chunks.read(digest)
        # The tail is rewritten into a new object; a damaged one must not be.
        if blake3.blake3(data).hexdigest() != digest:
            raise CorruptObject(f"object {digest} does not match its hash")
        return data

    def appender(self, session: Session, offset: int, tail: bytes, checksum=None) -> Appender:
        return Appender(self._chunks, session.chunk_size, offset, tail, checksum)

    # -- creating -------------------------------------------------------------

    def create(
        self,
        *,
        tenant: str,
        kind: str,
        length: int | None,
        chunk_size: int,
        filename: str,
        metadata: dict[str, object],
        metadata_header: str | None = None,
    ) -> Appended:
        """A single or partial upload; `length` None defers it."""
        if kind not in (SINGLE, PARTIAL):
            raise ValueError(f"kind must be {SINGLE!r} or {PARTIAL!r}")
        if length is not None:
            self._check_size(length)
        session = self._sessions.new(
            tenant=tenant,
            filename=filename,
            size=length or 0,
            chunk_size=chunk_size,
            total_chunks=-(-(length or 0) // chunk_size),
            metadata=metadata,
            stream=True,
        )
        stream = Stream(
            id=session.id,
            tenant=tenant,
            kind=kind,
            length=length,
            metadata_header=metadata_header,
        )

        def op(txn: lmdb.Transaction) -> Appended:
            self._sessions.insert(txn, session)
            self._put_stream(txn, stream)
            return self._appended(txn, session.id, self._settle(txn, session.id))

        return self._index.write(op)

    def create_final(
        self,
        *,
        tenant: str,
        partials: list[str],
        chunk_size: int,
        filename: str,
        metadata: dict[str, object],
        metadata_header: str | None = None,
    ) -> Appended:
        """A final upload of `partials`, in order. Assembled at once if they are all
        complete, otherwise when the last of them completes."""
        if not partials:
            raise InvalidConcat("a final upload needs at least one partial upload")

        def op(txn: lmdb.Transaction) -> Appended:
            now = self.store.clock()
            known: int | None = 0
            for partial_id in partials:
                session = self._sessions.find(txn, partial_id)
                stream = self._find_stream(txn, partial_id)
                if (
                    session is None
                    or stream is None
                    or session.tenant != tenant
                    or stream.kind != PARTIAL
                ):
                    raise InvalidConcat(f"{partial_id} is not a partial upload", partial=partial_id)
                if not self._usable(session, now):
                    raise InvalidConcat(
                        f"partial upload {partial_id} is {self._state_name(session, now)}",
                        partial=partial_id,
                    )
                if known is not None and stream.length is not None:
                    known += stream.length
                else:
                    known = None
            if known is not None:
                self._check_size(known)
            session = self._sessions.new(
                tenant=tenant,
                filename=filename,
                size=known or 0,
                chunk_size=chunk_size,
                total_chunks=0,
                # Its layout is the partials' manifests, not fixed-size chunks.
                declared=True,
                metadata=metadata,
                stream=True,
            )
            self._sessions.insert(txn, session)
            final = Stream(
                id=session.id,
                tenant=tenant,
                kind=FINAL,
                metadata_header=metadata_header,
                partials=list(partials),
            )
            self._put_stream(txn, final)
            for partial_id in dict.fromkeys(partials):
                stream = self._stream(txn, partial_id)
                self._put_stream(
                    txn, msgspec.structs.replace(stream, finals=[*stream.finals, session.id])
                )
            job = self._assemble(txn, session.id)
            return self._appended(txn, session.id, (job,) if job else ())

        return self._index.write(op)

    # -- writing --------------------------------------------------------------

    def declare_length(self, session_id: str, tenant: str, length: int) -> Appended:
        """Set a deferred length; the same length again is harmless."""

        def op(txn: lmdb.Transaction) -> Appended:
            session = self._sessions.get(txn, session_id, tenant)
            stream = self._stream(txn, session_id)
            self._check_writable(session, stream)
            if stream.length is not None:
                if stream.length != length:
                    raise InvalidLength(
                        f"the upload's length is {stream.length}; it cannot change",
                        length=stream.length,
                    )
                return self._appended(txn, session_id, ())
            if length < session.received_bytes:
                raise InvalidLength(
                    f"length {length} is less than the {session.received_bytes} bytes "
                    "already received",
                    offset=session.received_bytes,
                )
            self._check_size(length)
            self._sessions.check_growth(txn, session, length)
            self._sessions.update(
                txn, session, size=length, total_chunks=-(-length // session.chunk_size)
            )
            self._put_stream(txn, msgspec.structs.replace(stream, length=length))
            return self._appended(txn, session_id, self._settle(txn, session_id))

        return self._index.write(op)

    def attach(self, session_id: str, tenant: str, offset: int, pieces: list[Piece]) -> Appended:
        """Attach committed pieces that continue the stream at `offset`, durably.

        The first piece may replace the tail (it starts at the tail's chunk and
        holds its bytes); every piece but the last must be a full chunk. A
        stream that reaches its length starts its completion in the same
        transaction (and a partial upload's waiting final uploads theirs).
        """

        def op(txn: lmdb.Transaction) -> Appended:
            session = self._sessions.get(txn, session_id, tenant)
            stream = self._stream(txn, session_id)
            self._check_writable(session, stream)
            if session.received_bytes != offset:
                raise OffsetMismatch(
                    f"upload {session_id} is at offset {session.received_bytes}, not {offset}",
                    offset=session.received_bytes,
                )
            chunk = session.chunk_size
            end = offset
            for piece in pieces:
                start = piece.index * chunk
                size = piece.put.size
                if start != end - end % chunk or size > chunk or start + size <= end:
                    raise StorageError(
                        f"piece {piece.index} ({size} bytes) does not continue "
                        f"upload {session_id} at offset {end}"
                    )
                end = start + size
                if stream.length is not None and end > stream.length:
                    raise TooLarge(
                        f"{end} bytes exceed the upload's length of {stream.length}",
                        length=stream.length,
                    )
                self._check_size(end)
                session = self._parts.replace(txn, session, piece.index, piece.put.hash, size)
            return self._appended(txn, session_id, self._settle(txn, session_id))

        return self._index.write(op, [p.put for p in pieces])

    # -- ending ---------------------------------------------------------------

    def terminate(self, session_id: str, tenant: str) -> Session:
        """End an upload at the client's request (tus termination).

        An open upload, or one whose completion is under way, is cancelled and
        its chunks released (its job, if any, ends failed); final uploads still
        waiting for it (a partial) are cancelled with it. An upload whose file
        is recorded has the file deleted (chunks other files use stay); if the
        plugins are still deciding on it, its job ends without a verdict.
        """

        copies: list[str | None] = []

        def op(txn: lmdb.Transaction) -> Session:
            session = self._sessions.get(txn, session_id, tenant)
            stream = self._stream(txn, session_id)
            if session.state in (SessionState.OPEN, SessionState.COMPLETING):
                self._cancel(txn, session, stream)
                return self._sessions.get(txn, session_id, tenant)
            if session.state in (SessionState.CANCELLED, SessionState.EXPIRED):
                raise SessionNotOpen(f"upload {session_id} is {session.state}", state=session.state)
            if session.file_id and session.state in (
                SessionState.PROCESSING,
                SessionState.COMPLETED,
            ):
                try:
                    file = self.store.files.delete(txn, session.file_id, tenant)
                except ClientError:
                    pass  # deleted through /v1 already
                else:
                    copies.append(file.path)
            self._put_stream(txn, msgspec.structs.replace(stream, terminated=True))
            return self._sessions.get(txn, session_id, tenant)

        session = self._index.write(op)
        for path in copies:
            remove_copy(path)
        return session

    def _cancel(self, txn: lmdb.Transaction, session: Session, stream: Stream) -> None:
        self._end(txn, session, "terminated by the client")
        for final_id in stream.finals:
            final = self._sessions.find(txn, final_id)
            final_stream = self._stream(txn, final_id)
            waiting = final is not None and not final_stream.assembled
            if waiting and final.state == SessionState.OPEN:
                self._end(txn, final, f"partial upload {session.id} was terminated")

    def _end(self, txn: lmdb.Transaction, session: Session, reason: str) -> None:
        self.store.end_session(txn, session, SessionState.CANCELLED, reason)

    # -- helpers --------------------------------------------------------------

    def _find_stream(self, txn: lmdb.Transaction, session_id: str) -> Stream | None:
        return self._index.get(txn, "streams", session_id.encode(), Stream)

    def _stream(self, txn: lmdb.Transaction, session_id: str) -> Stream:
        stream = self._find_stream(txn, session_id)
        if stream is None:
            raise NotAStream(f"upload {session_id!r} is not a tus upload")
        return stream

    def _put_stream(self, txn: lmdb.Transaction, stream: Stream) -> None:
        self._index.put(txn, "streams", stream.id.encode(), stream)

    def _appended(self, txn: lmdb.Transaction, session_id: str, jobs: tuple[str, ...]) -> Appended:
        session = self._sessions.find(txn, session_id)
        return Appended(session, self._stream(txn, session_id), jobs)

    def _check_size(self, size: int) -> None:
        if self.max_size is not None and size > self.max_size:
            raise TooLarge(
                f"{size} bytes exceed the limit of {self.max_size} bytes", limit=self.max_size
            )

    @staticmethod
    def _usable(session: Session, now: float) -> bool:
        return session.state == SessionState.OPEN and now < session.expires

    @staticmethod
    def _state_name(session: Session, now: float) -> str:
        if session.state == SessionState.OPEN and now >= session.expires:
            return "expired"
        return str(session.state)

    def _check_writable(self, session: Session, stream: Stream) -> None:
        now = self.store.clock()
        if not self._usable(session, now):
            state = self._state_name(session, now)
            raise SessionNotOpen(f"upload {session.id} is {state}", state=state)
        if stream.kind == FINAL:
            raise SessionNotOpen(
                f"upload {session.id} is a final upload; its bytes come from its partial uploads",
                state=session.state,
            )

    def _final_length(self, txn: lmdb.Transaction, final: Stream) -> int | None:
        total = 0
        for partial_id in final.partials:
            stream = self._find_stream(txn, partial_id)
            if stream is None or stream.length is None:
                return None
            total += stream.length
        return total

    def _settle(self, txn: lmdb.Transaction, session_id: str) -> tuple[str, ...]:
        """Start what a stream that just reached its length starts; the jobs queued."""
        session = self._sessions.find(txn, session_id)
        stream = self._stream(txn, session_id)
        if stream.length is None or session.received_bytes != stream.length:
            return ()
        if stream.kind == SINGLE:
            job = self._complete(txn, session)
            return (job,) if job else ()
        jobs = [self._assemble(txn, final_id) for final_id in stream.finals]
        return tuple(job for job in jobs if job)

    def _complete(self, txn: lmdb.Transaction, session: Session) -> str | None:
        if session.state != SessionState.OPEN:
            return None
        return self.store.completer.begin(txn, session).job_id

    def _assemble(self, txn: lmdb.Transaction, final_id: str) -> str | None:
        """Give a final upload its partials' parts once they are all complete, and
        start its completion. None if it is not ready (or not open)."""
        now = self.store.clock()
        final = self._stream(txn, final_id)
        session = self._sessions.find(txn, final_id)
        if final.assembled or session is None or not self._usable(session, now):
            return None
        entries: list[tuple[str, int]] = []
        for partial_id in final.partials:
            partial = self._stream(txn, partial_id)
            partial_session = self._sessions.find(txn, partial_id)
            if (
                partial_session is None
                or not self._usable(partial_session, now)
                or partial.length is None
                or partial_session.received_bytes != partial.length
            ):
                return None
            entries.extend(self._parts.entries(txn, partial_id))
        size = sum(n for _, n in entries)
        if self.max_size is not None and size > self.max_size:
            self._end(txn, session, f"{size} bytes exceed the limit of {self.max_size} bytes")
            return None
        self._parts.declare(txn, final_id, entries)
        session = self._sessions.update(txn, session, size=size, total_chunks=len(entries))
        for i, (digest, length) in enumerate(entries):
            session, _ = self._parts.attach(txn, session, i, digest, length)
        self._put_stream(txn, msgspec.structs.replace(final, length=size, assembled=True))
        return self._complete(txn, session)

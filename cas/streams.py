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

`Stream.offset` is therefore exactly what the attached parts hold: it never
counts a byte that a crash could lose. A write transaction that brings a
stream to its length also starts its completion (`Store.begin_completion`,
same transaction), so a crash cannot leave a full upload uncompleted.

Concatenation (tus "final" uploads) copies no bytes: a final upload's parts
are its partial uploads' parts, in order, attached (refcounted) once every
partial is complete — at creation, or in the transaction that completes the
last partial. Partial uploads are never completed into files themselves;
they expire (releasing their chunks) like any open session, so that they can
be reused by several final uploads meanwhile.

Synchronous and thread-safe like `Store`; the daemon calls it from worker
threads. Uses the store's package-private reference helpers, so that chunk
references are counted in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3
import lmdb
import msgspec

from . import records
from .errors import ClientError, CorruptObject, SessionNotOpen, StorageError, TooLarge
from .objects import ObjectStore, ObjectWriter, PutResult
from .records import Session, SessionState, Stream
from .store import Store, _part_key, _part_prefix, new_id

SINGLE = "single"
PARTIAL = "partial"
FINAL = "final"
KINDS = (SINGLE, PARTIAL, FINAL)


class NotAStream(ClientError):
    """The session exists but was not created as a stream (another API's upload)."""

    code = "unknown_upload"


class OffsetMismatch(ClientError):
    """The stream's offset is not the one the write expected (it moved on)."""

    code = "offset_mismatch"


class InvalidLength(ClientError):
    code = "invalid_length"


class InvalidConcat(ClientError):
    """A final upload names something that is not a usable partial upload."""

    code = "invalid_concat"


@dataclass(frozen=True, slots=True)
class StreamState:
    session: Session
    stream: Stream
    # The upload's length if known: for a final upload not yet assembled, the
    # sum of its partials' lengths once all of them are known.
    length: int | None


@dataclass(frozen=True, slots=True)
class Appended:
    session: Session
    stream: Stream
    # Jobs this write queued by completing uploads: the stream itself, or the
    # final uploads that were waiting for this partial.
    jobs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Piece:
    """A stored object that becomes part `index` of a stream."""

    index: int
    put: PutResult


class Sealed:
    """A chunk's bytes, all written, not yet committed (fsynced and named)."""

    __slots__ = ("index", "_writer")

    def __init__(self, index: int, writer: ObjectWriter) -> None:
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
        objects: ObjectStore,
        chunk_size: int,
        offset: int,
        tail: bytes = b"",
        checksum=None,
    ) -> None:
        if len(tail) != offset % chunk_size:
            raise ValueError("the tail must hold the bytes since the last chunk boundary")
        self._objects = objects
        self.chunk_size = chunk_size
        self.checksum = checksum
        self.received = 0
        self._index = offset // chunk_size
        self._writer: ObjectWriter | None = None
        self._fill = 0
        # Bytes of this request in the current writer (the rest is the old tail).
        self._fresh = 0
        if tail:
            self._writer = objects.writer()
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
                self._writer = self._objects.writer()
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
        self.index = store.index
        self.objects = store.objects
        self.max_size = max_size

    # -- reading --------------------------------------------------------------

    def state(self, session_id: str, tenant: str) -> StreamState:
        with self.index.reader() as txn:
            session = self.store._session(txn, session_id, tenant)
            stream = self._stream(txn, session_id)
            length = stream.length
            if stream.kind == FINAL and not stream.assembled:
                length = self._final_length(txn, stream)
            return StreamState(session, stream, length)

    def read_tail(self, session_id: str, tenant: str, offset: int) -> bytes:
        """The bytes since the last chunk boundary before `offset` (b"" on a boundary)."""
        session = self.store.session(session_id, tenant)
        within = offset % session.chunk_size
        if within == 0:
            return b""
        with self.index.reader() as txn:
            raw = txn.get(
                _part_key(session_id, offset // session.chunk_size), db=self.index.db["parts"]
            )
        if raw is None:
            raise OffsetMismatch(f"upload {session_id} has no bytes at offset {offset}")
        digest, length = records.unpack_entry(raw)
        if length != within:
            raise OffsetMismatch(f"upload {session_id} is no longer at offset {offset}")
        data = self.objects.read(digest)
        # The tail is rewritten into a new object; a damaged one must not be.
        if blake3.blake3(data).hexdigest() != digest:
            raise CorruptObject(f"object {digest} does not match its hash")
        return data

    def parts(self, session_id: str) -> list[tuple[str, int]]:
        """The attached parts in order: (hash, length) each."""
        received = self.store.received(session_id)
        return [received[i] for i in sorted(received)]

    def appender(self, session: Session, offset: int, tail: bytes, checksum=None) -> Appender:
        return Appender(self.objects, session.chunk_size, offset, tail, checksum)

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
        now = self.store.clock()
        session = Session(
            id=new_id(),
            tenant=tenant,
            filename=filename,
            size=length or 0,
            chunk_size=chunk_size,
            total_chunks=-(-(length or 0) // chunk_size),
            state=SessionState.OPEN,
            created=now,
            updated=now,
            expires=now + self.store.session_ttl,
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
            self.index.put(txn, "sessions", session.id.encode(), session)
            self.index.put(txn, "streams", session.id.encode(), stream)
            return self._appended(txn, session.id, tenant, self._settle(txn, session.id, tenant))

        return self.index.write(op)

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
                session = self.index.get(txn, "sessions", partial_id.encode(), Session)
                stream = self.index.get(txn, "streams", partial_id.encode(), Stream)
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
            session = Session(
                id=new_id(),
                tenant=tenant,
                filename=filename,
                size=known or 0,
                chunk_size=chunk_size,
                total_chunks=0,
                state=SessionState.OPEN,
                created=now,
                updated=now,
                expires=now + self.store.session_ttl,
                # Its layout is the partials' manifests, not fixed-size chunks.
                declared=True,
                metadata=metadata,
                stream=True,
            )
            self.index.put(txn, "sessions", session.id.encode(), session)
            final = Stream(
                id=session.id,
                tenant=tenant,
                kind=FINAL,
                metadata_header=metadata_header,
                partials=list(partials),
            )
            self.index.put(txn, "streams", session.id.encode(), final)
            for partial_id in dict.fromkeys(partials):
                stream = self._stream(txn, partial_id)
                stream = msgspec.structs.replace(stream, finals=[*stream.finals, session.id])
                self.index.put(txn, "streams", partial_id.encode(), stream)
            job = self._assemble(txn, session.id)
            return self._appended(txn, session.id, tenant, (job,) if job else ())

        return self.index.write(op)

    # -- writing --------------------------------------------------------------

    def declare_length(self, session_id: str, tenant: str, length: int) -> Appended:
        """Set a deferred length; the same length again is harmless."""

        def op(txn: lmdb.Transaction) -> Appended:
            session = self.store._session(txn, session_id, tenant)
            stream = self._stream(txn, session_id)
            self._check_writable(session, stream)
            if stream.length is not None:
                if stream.length != length:
                    raise InvalidLength(
                        f"the upload's length is {stream.length}; it cannot change",
                        length=stream.length,
                    )
                return self._appended(txn, session_id, tenant, ())
            if length < stream.offset:
                raise InvalidLength(
                    f"length {length} is less than the {stream.offset} bytes already received",
                    offset=stream.offset,
                )
            self._check_size(length)
            stream = msgspec.structs.replace(stream, length=length)
            session = msgspec.structs.replace(
                session,
                size=length,
                total_chunks=-(-length // session.chunk_size),
                updated=self.store.clock(),
            )
            self.index.put(txn, "sessions", session_id.encode(), session)
            self.index.put(txn, "streams", session_id.encode(), stream)
            return self._appended(txn, session_id, tenant, self._settle(txn, session_id, tenant))

        return self.index.write(op)

    def attach(self, session_id: str, tenant: str, offset: int, pieces: list[Piece]) -> Appended:
        """Attach committed pieces that continue the stream at `offset`, durably.

        The first piece may replace the tail (it starts at the tail's chunk and
        holds its bytes); every piece but the last must be a full chunk. A
        stream that reaches its length starts its completion in the same
        transaction (and a partial upload's waiting final uploads theirs).
        """
        dirty = sorted({d for p in pieces for d in p.put.dirty_dirs})

        def op(txn: lmdb.Transaction) -> Appended:
            session = self.store._session(txn, session_id, tenant)
            stream = self._stream(txn, session_id)
            self._check_writable(session, stream)
            if stream.offset != offset:
                raise OffsetMismatch(
                    f"upload {session_id} is at offset {stream.offset}, not {offset}",
                    offset=stream.offset,
                )
            chunk = session.chunk_size
            parts = self.index.db["parts"]
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
                key = _part_key(session_id, piece.index)
                replaced = txn.get(key, db=parts)
                # Add before release: a tail replaced by a piece with the same
                # hash (impossible, it is longer, but cheap to be safe) keeps a ref.
                self.store._add_ref(txn, piece.put.hash, size)
                if replaced is not None:
                    self.store._release_ref(txn, records.unpack_entry(replaced)[0])
                txn.put(key, records.pack_entry(piece.put.hash, size), db=parts)
            stream = msgspec.structs.replace(stream, offset=end)
            session = msgspec.structs.replace(
                session,
                received_bytes=end,
                received_chunks=-(-end // chunk),
                updated=self.store.clock(),
            )
            self.index.put(txn, "sessions", session_id.encode(), session)
            self.index.put(txn, "streams", session_id.encode(), stream)
            return self._appended(txn, session_id, tenant, self._settle(txn, session_id, tenant))

        return self.index.write(op, dirty)

    # -- ending ---------------------------------------------------------------

    def terminate(self, session_id: str, tenant: str) -> Session:
        """End an upload at the client's request (tus termination).

        An open upload is cancelled and its chunks released; final uploads
        still waiting for it (a partial) are cancelled with it. A completed
        upload's file is deleted (chunks other files use stay). An upload
        whose file is being processed is refused (409): try again once its
        job has finished.
        """
        state = self.state(session_id, tenant)
        session = state.session
        if session.state == SessionState.OPEN:
            return self.index.write(lambda txn: self._cancel(txn, session_id, tenant))
        if session.state in (SessionState.COMPLETING, SessionState.PROCESSING):
            raise SessionNotOpen(
                f"upload {session_id} is being processed; terminate it once its job has finished",
                state=session.state,
            )
        if session.state in (SessionState.CANCELLED, SessionState.EXPIRED):
            raise SessionNotOpen(f"upload {session_id} is {session.state}", state=session.state)
        if session.state == SessionState.COMPLETED and session.file_id:
            try:
                self.store.delete_file(session.file_id, tenant)
            except ClientError:
                pass  # deleted through /v1 already

        def mark(txn: lmdb.Transaction) -> Session:
            stream = self._stream(txn, session_id)
            stream = msgspec.structs.replace(stream, terminated=True)
            self.index.put(txn, "streams", session_id.encode(), stream)
            return self.store._session(txn, session_id, tenant)

        return self.index.write(mark)

    def _cancel(self, txn: lmdb.Transaction, session_id: str, tenant: str) -> Session:
        session = self.store._session(txn, session_id, tenant)
        stream = self._stream(txn, session_id)
        self._end(txn, session, "terminated by the client")
        for final_id in stream.finals:
            final = self.index.get(txn, "sessions", final_id.encode(), Session)
            final_stream = self._stream(txn, final_id)
            waiting = final is not None and not final_stream.assembled
            if waiting and final.state == SessionState.OPEN:
                self._end(txn, final, f"partial upload {session_id} was terminated")
        return self.store._session(txn, session_id, tenant)

    def _end(self, txn: lmdb.Transaction, session: Session, reason: str) -> None:
        self.store._delete_parts(txn, session.id, release=True)
        session = msgspec.structs.replace(
            session, state=SessionState.CANCELLED, reason=reason, updated=self.store.clock()
        )
        self.index.put(txn, "sessions", session.id.encode(), session)

    # -- helpers --------------------------------------------------------------

    def _stream(self, txn: lmdb.Transaction, session_id: str) -> Stream:
        stream = self.index.get(txn, "streams", session_id.encode(), Stream)
        if stream is None:
            raise NotAStream(f"upload {session_id!r} is not a tus upload")
        return stream

    def _appended(
        self, txn: lmdb.Transaction, session_id: str, tenant: str, jobs: tuple[str, ...]
    ) -> Appended:
        return Appended(
            self.store._session(txn, session_id, tenant), self._stream(txn, session_id), jobs
        )

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
            stream = self.index.get(txn, "streams", partial_id.encode(), Stream)
            if stream is None or stream.length is None:
                return None
            total += stream.length
        return total

    def _settle(self, txn: lmdb.Transaction, session_id: str, tenant: str) -> tuple[str, ...]:
        """Start what a stream that just reached its length starts; the jobs queued."""
        stream = self._stream(txn, session_id)
        if stream.length is None or stream.offset != stream.length:
            return ()
        if stream.kind == SINGLE:
            job = self._complete(txn, session_id, tenant)
            return (job,) if job else ()
        jobs = [self._assemble(txn, final_id) for final_id in stream.finals]
        return tuple(job for job in jobs if job)

    def _complete(self, txn: lmdb.Transaction, session_id: str, tenant: str) -> str | None:
        before = self.store._session(txn, session_id, tenant)
        if before.state != SessionState.OPEN:
            return None
        return self.store._begin_completion(txn, session_id, tenant).job_id

    def _assemble(self, txn: lmdb.Transaction, final_id: str) -> str | None:
        """Give a final upload its partials' parts once they are all complete, and
        start its completion. None if it is not ready (or not open)."""
        now = self.store.clock()
        final = self._stream(txn, final_id)
        session = self.index.get(txn, "sessions", final_id.encode(), Session)
        if final.assembled or session is None or not self._usable(session, now):
            return None
        entries: list[tuple[str, int]] = []
        for partial_id in final.partials:
            partial = self._stream(txn, partial_id)
            partial_session = self.index.get(txn, "sessions", partial_id.encode(), Session)
            if (
                partial_session is None
                or not self._usable(partial_session, now)
                or partial.length is None
                or partial.offset != partial.length
            ):
                return None
            entries.extend(self._parts(txn, partial_id))
        size = sum(n for _, n in entries)
        if self.max_size is not None and size > self.max_size:
            self._end(txn, session, f"{size} bytes exceed the limit of {self.max_size} bytes")
            return None
        declared, parts = self.index.db["declared"], self.index.db["parts"]
        for i, (digest, length) in enumerate(entries):
            key = _part_key(final_id, i)
            entry = records.pack_entry(digest, length)
            txn.put(key, entry, db=declared)
            txn.put(key, entry, db=parts)
            self.store._add_ref(txn, digest, length)
        session = msgspec.structs.replace(
            session,
            size=size,
            total_chunks=len(entries),
            received_chunks=len(entries),
            received_bytes=size,
            updated=now,
        )
        final = msgspec.structs.replace(final, offset=size, length=size, assembled=True)
        self.index.put(txn, "sessions", final_id.encode(), session)
        self.index.put(txn, "streams", final_id.encode(), final)
        return self._complete(txn, final_id, session.tenant)

    def _parts(self, txn: lmdb.Transaction, session_id: str) -> list[tuple[str, int]]:
        prefix = _part_prefix(session_id)
        out: list[tuple[str, int]] = []
        cursor = txn.cursor(db=self.index.db["parts"])
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                out.append(records.unpack_entry(value))
        return out

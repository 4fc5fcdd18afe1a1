"""The upload core: where every upload is opened, its bytes received and made
durable, and where it is completed or cancelled — whichever API it came in by.

The seed API, `/v1` and tus are thin: they parse a request, call one of
these methods, and render the answer. Limits, the upload policy hook, chunk
and stream writing, job submission and the metrics of received bytes live
here once. No Quart in this module: a body is any async iterable of bytes.

Two kinds of target for a body:

- a **chunk** of known index and length, with an optional expected BLAKE3
  (seed, `/v1`): streamed into one object while hashed, refused whole (and
  nothing kept) if it is longer or shorter than declared or hashes wrong;
- a **stream** at an offset, with an optional checksum (tus): cut into chunk
  objects at absolute offsets; without a checksum every full chunk is kept as
  soon as it is durable (a body cut off midway keeps its durable prefix);
  with one, all of it is kept or none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio
from ingestd import cas
from ingestd.plugins import PolicyUnavailable, UploadRequest, run_policy

from ..http.errors import ApiError
from ..http.fields import clean_filename
from . import logs
from .runtime import Runtime

# The most JSON a client may store as an upload's metadata.
MAX_METADATA_BYTES = 64 << 10
# Body bytes handed to a chunk's writer thread at a time.
FLUSH_BYTES = 1 << 20
# Seconds a stream body may go without a byte before the request ends (its
# bytes so far kept), so that a vanished client does not hold the upload.
BODY_IDLE_TIMEOUT = 60.0
# Body pieces that may wait for the stream writer (which takes all waiting
# ones at once), and sealed chunks (open files, no bytes in memory) waiting
# to be committed.
QUEUED_PIECES = 2
QUEUED_CHUNKS = 8
# Chunks of one stream request fsynced side by side, in worker threads.
COMMIT_THREADS = 4
# Committed chunks attached in one index write at most (when they pile up).
ATTACH_BATCH = 16


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What makes an upload a tus byte stream."""

    kind: str  # cas.SINGLE, cas.PARTIAL or cas.FINAL
    partials: tuple[str, ...] = ()
    metadata_header: str | None = None


@dataclass(frozen=True, slots=True)
class NewUpload:
    api: str  # "seed", "v1" or "tus", for the policy hook
    tenant: str
    filename: str
    # None: not known yet (a deferred tus length, a final upload's partials).
    size: int | None
    sha256: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # A declared layout: the client's (BLAKE3, length) list.
    chunks: list[tuple[str, int]] | None = None
    stream: StreamSpec | None = None


@dataclass(frozen=True, slots=True)
class Opened:
    session: cas.Session
    # Chunk indices the client has to send (a declared layout lacks fewer).
    missing: list[int]


@dataclass(frozen=True, slots=True)
class StreamReceipt:
    """How a stream body ended, and the upload's offset after it."""

    offset: int
    # The body went past `limit`: the bytes up to it were kept (no checksum).
    overflow: bool = False
    # No byte arrived for BODY_IDLE_TIMEOUT seconds.
    stalled: bool = False
    # A checksum was asked for and the body did not match it: nothing kept.
    checksum_failed: bool = False
    # The body went past what the tenant's byte quota leaves (an upload of
    # unknown length): the bytes up to it were kept, as for `overflow`.
    over_quota: bool = False


class UploadLocked(cas.ClientError):
    """Another request is writing to this upload (a conflict, as a store
    refusal is: the tus layer answers 409)."""

    code = "upload_locked"


class Ingest:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._streams: cas.StreamStore | None = None
        config = rt.config
        self.chunk_size = config.storage.chunk_size
        self.max_file_size = config.limits.max_file_size
        self.max_stream_size = min(config.tus.max_size, config.limits.max_file_size)

    def _check_free_space(self, size: int) -> None:
        """Refuse a new upload that would leave less than `storage.reserve` free."""
        reserve = self.rt.config.storage.reserve
        if not reserve:
            return
        # statvfs: a system call, no disk I/O; fine on the event loop.
        free = shutil.disk_usage(self.rt.config.data_dir).free
        if free - size < reserve:
            raise ApiError(
                507,
                "storage_reserve",
                f"the server has {free} bytes free and keeps {reserve} in reserve; "
                f"an upload of {size} bytes does not fit",
                headers={"Retry-After": "60"},
                free=free,
                reserve=reserve,
                size=size,
            )

    def max_file_size_for(self, tenant: str) -> int:
        return self.rt.tenant_limits(tenant)[2]

    @property
    def store(self) -> cas.Store:
        return self.rt.store

    @property
    def streams(self) -> cas.StreamStore:
        if self._streams is None or self._streams.store is not self.store:
            self._streams = cas.StreamStore(self.store, max_size=self.max_stream_size)
        return self._streams

    # -- opening ---------------------------------------------------------------

    async def open_upload(self, new: NewUpload) -> Opened:
        """Check limits and the policy, then create the upload."""
        # A name reaches logs, headers and terminals: no controls or bidi overrides.
        new = dataclasses.replace(new, filename=clean_filename(new.filename))
        check_metadata(new.metadata)
        rt = self.rt
        self._check_free_space(new.size or 0)
        max_file_size = self.max_file_size_for(new.tenant)
        if new.size is not None and new.size > max_file_size:
            raise ApiError(
                413,
                "file_too_large",
                f"size {new.size} exceeds the limit of {max_file_size} bytes",
                limit=max_file_size,
            )
        spec = new.stream
        # Partial uploads are fragments of a file: the policy judges the final one.
        if spec is None or spec.kind != cas.PARTIAL:
            size = new.size
            if spec is not None and spec.kind == cas.FINAL:
                size = self._known_length(new.tenant, spec.partials)
            await self._check_policy(
                UploadRequest(
                    tenant=new.tenant,
                    filename=new.filename,
                    size=size or 0,
                    api=new.api,
                    metadata=new.metadata,
                    sha256=new.sha256,
                )
            )
        if spec is None:
            session = await rt.run(
                self.store.create_session,
                filename=new.filename,
                size=new.size,
                chunk_size=self.chunk_size,
                tenant=new.tenant,
                sha256=new.sha256,
                metadata=new.metadata,
                chunks=new.chunks,
                min_chunk_size=rt.config.storage.cdc_min_size,
                max_chunk_size=rt.config.storage.cdc_max_size,
            )
            missing = await rt.run(self.store.missing, session.id, new.tenant)
            self._count_opened(new, session, missing)
            return Opened(session, missing)
        common = dict(
            tenant=new.tenant,
            chunk_size=self.chunk_size,
            filename=new.filename,
            metadata=new.metadata,
            metadata_header=spec.metadata_header,
        )
        if spec.kind == cas.FINAL:
            created = await rt.run(
                functools.partial(self.streams.create_final, partials=list(spec.partials), **common)
            )
        else:
            created = await rt.run(
                functools.partial(self.streams.create, kind=spec.kind, length=new.size, **common)
            )
        self._count_opened(new, created.session, [])
        self.submit_jobs(created.jobs)
        self._count_completed("tus", len(created.jobs))
        return Opened(created.session, [])

    def _known_length(self, tenant: str, partials: tuple[str, ...]) -> int | None:
        total = 0
        for partial_id in partials:
            try:
                length = self.streams.state(partial_id, tenant).length
            except cas.ClientError:
                return None  # creating the final upload refuses it, with the reason
            if length is None:
                return None
            total += length
        return total

    async def _check_policy(self, request: UploadRequest) -> None:
        """Run the plugins' upload policy; a refusal becomes a 4xx problem."""
        rt = self.rt
        try:
            refusal = await run_policy(rt.plugins, request, limiter=rt.limiter)
        except PolicyUnavailable as exc:
            raise ApiError(503, "policy_unavailable", str(exc)) from None
        if refusal is not None:
            raise ApiError(refusal.status, refusal.code, refusal.reason)

    # -- chunks ----------------------------------------------------------------

    async def receive_chunk(
        self,
        tenant: str,
        upload_id: str,
        index: int,
        body: AsyncIterable[bytes],
        *,
        content_length: int | None = None,
        claimed_hash: str | None = None,
    ) -> cas.ChunkAck:
        """Store `body` as chunk `index`, durably, and attach it.

        The server hashes the bytes itself; a body that does not match the
        declared hash (the upload's chunk list or `claimed_hash`) or length
        is refused and not kept. The same bytes again are harmless."""
        rt, store = self.rt, self.store
        logs.note(upload_id=upload_id)
        # An LMDB read is a lookup in a memory map: cheap enough for the event
        # loop, and a thread hop per chunk is not.
        declared, length = store.expected_chunk(upload_id, index, tenant)
        if claimed_hash and declared and claimed_hash != declared:
            raise ApiError(
                422,
                "chunk_hash_mismatch",
                f"Content-Digest says {claimed_hash}, the upload declared {declared} "
                f"for chunk {index}",
            )
        if content_length is not None and content_length != length:
            raise _wrong_size(index, length, content_length)
        writer: cas.ChunkWriter | None = None

        def write(pieces: list[bytes | bytearray]) -> None:
            nonlocal writer
            if writer is None:
                writer = store.chunks.writer(declared or claimed_hash)
            for piece in pieces:
                writer.write(piece)

        limits = self.rt.config.limits
        deadline = limits.body_timeout + length / limits.min_body_rate
        put: cas.PutResult | None = None
        received = 0
        try:
            # Pieces as the body gave them (not joined: no copy), written a
            # thread hop per FLUSH_BYTES.
            pending: list[bytes | bytearray] = []
            pending_bytes = 0
            async for data in _within(body, deadline, index):
                received += len(data)
                if received > length:
                    raise cas.WrongChunkSize(
                        f"chunk {index} must be {length} bytes, got more", expected=length
                    )
                pending.append(data)
                pending_bytes += len(data)
                if pending_bytes >= FLUSH_BYTES and received < length:
                    await rt.run(write, pending)
                    pending, pending_bytes = [], 0
            if received != length:
                raise _wrong_size(index, length, received)

            def finish() -> cas.ChunkAck:
                nonlocal put
                write(pending)
                put = writer.commit()
                return store.attach_chunk(upload_id, index, put, tenant)

            ack = await rt.run(finish)
        except BaseException:
            if writer is not None:
                with trio.CancelScope(shield=True):
                    await rt.run(writer.abort)
            raise
        finally:
            api = request_api()
            self.rt.metrics.received_bytes.labels(api).inc(received)
            if put is not None and not put.existed:
                self.rt.metrics.stored_bytes.labels(api).inc(put.size)
        self._count_chunk(ack.stored)
        return ack

    # -- streams ---------------------------------------------------------------

    def stream_state(self, tenant: str, upload_id: str) -> cas.StreamState:
        # An LMDB read is a lookup in a memory map: cheap enough for the event loop.
        return self.streams.state(upload_id, tenant)

    @contextlib.contextmanager
    def writing(self, upload_id: str) -> Iterator[None]:
        """Hold the upload for one writing request; `UploadLocked` if another
        holds it, in this process or another worker's."""
        # Never waits (a flock taken or refused at once): fine on the event loop.
        held = self.store.locks.try_hold(f"upload-{upload_id}")
        if held is None:
            raise UploadLocked(
                f"another request is writing to upload {upload_id}; retry after a HEAD"
            )
        with held:
            yield

    async def declare_length(self, tenant: str, upload_id: str, length: int) -> None:
        logs.note(upload_id=upload_id)
        limit = self.max_file_size_for(tenant)
        if length > limit:
            raise ApiError(
                413,
                "file_too_large",
                f"length {length} exceeds the limit of {limit} bytes",
                limit=limit,
            )
        declared = await self.rt.run(self.streams.declare_length, upload_id, tenant, length)
        self.submit_jobs(declared.jobs)
        self._count_completed("tus", len(declared.jobs))

    async def receive_stream(
        self,
        tenant: str,
        upload_id: str,
        offset: int,
        body: AsyncIterable[bytes],
        *,
        limit: int,
        checksum: Any = None,
    ) -> StreamReceipt:
        """Store `body` at `offset` (at most `limit` bytes) into a stream upload.

        `checksum`: an object with `hasher()` and `matches(hasher)` (tus's
        Upload-Checksum). Call under `writing(upload_id)`."""
        rt = self.rt
        logs.note(upload_id=upload_id)

        def start() -> cas.Appender:
            tail = self.streams.read_tail(upload_id, tenant, offset)
            session = self.store.session(upload_id, tenant)
            hasher = checksum.hasher() if checksum is not None else None
            return self.streams.appender(session, offset, tail, hasher)

        file_room, quota_room = self._undeclared_room(tenant, upload_id, offset)
        limit = min(limit, file_room)
        quota_cap = None
        if quota_room < limit:
            limit = quota_cap = quota_room
        run = _StreamRun(self, tenant, upload_id, offset, await rt.run(start), checksum)
        await run.go(body, limit)
        if run.error is not None:
            raise run.error
        failed = checksum is not None and not run.keep and not (run.stalled or run.overflow)
        over_quota = run.overflow and quota_cap is not None
        return StreamReceipt(run.offset, run.overflow, run.stalled, failed, over_quota)

    def _undeclared_room(self, tenant: str, upload_id: str, offset: int) -> tuple[int, int]:
        """For a stream whose length is not declared yet (its bytes reserve
        nothing), how many more bytes the tenant's file-size limit and byte
        quota allow; unbounded when its length is known (checked when declared)."""
        unbounded = 1 << 62
        if self.streams.state(upload_id, tenant).length is not None:
            return unbounded, unbounded
        max_bytes, _, max_file = self.rt.tenant_limits(tenant)
        quota_room = unbounded
        if max_bytes is not None:
            usage = self.store.usage(tenant)
            quota_room = max(max_bytes - usage.logical_bytes - usage.open_bytes - offset, 0)
        return max(max_file - offset, 0), quota_room

    # -- completing, cancelling ------------------------------------------------

    async def complete(self, tenant: str, upload_id: str) -> tuple[cas.Session, cas.Job]:
        """Accept an upload for completion: the job verifies and records it."""
        rt = self.rt
        logs.note(upload_id=upload_id)
        was_open = self._is_open(tenant, upload_id)
        session = await rt.run(self.store.begin_completion, upload_id, tenant)
        job = await rt.run(self.store.jobs.get, session.job_id)
        if session.state == cas.SessionState.COMPLETING:
            self.submit_jobs((job.id,))
        if was_open:
            self._count_completed(request_api(), 1)
        return session, job

    async def complete_now(
        self, tenant: str, upload_id: str, metadata: dict[str, object]
    ) -> cas.Completion:
        """Verify and record the file, with its materialised copy, before
        answering (the seed API answers with its path); its job then runs the
        plugins."""
        logs.note(upload_id=upload_id)
        was_open = self._is_open(tenant, upload_id)
        done = await self.rt.run(
            functools.partial(
                self.store.complete, upload_id, tenant, metadata=metadata, copy_now=True
            )
        )
        self.submit_jobs((done.job.id,))
        if was_open:
            self._count_completed(request_api(), 1)
        return done

    async def cancel(self, tenant: str, upload_id: str) -> None:
        logs.note(upload_id=upload_id)
        was_open = self._is_open(tenant, upload_id)
        await self.rt.run(self.store.cancel, upload_id, tenant)
        if was_open:
            self.rt.metrics.uploads.labels(request_api(), "cancelled").inc()

    async def terminate(self, tenant: str, upload_id: str) -> None:
        """tus termination: cancel the upload, or delete what it became."""
        logs.note(upload_id=upload_id)
        was_open = self._is_open(tenant, upload_id)
        await self.rt.run(self.streams.terminate, upload_id, tenant)
        if was_open:
            self.rt.metrics.uploads.labels("tus", "cancelled").inc()

    # -- shared ----------------------------------------------------------------

    def submit_jobs(self, job_ids: tuple[str, ...]) -> None:
        for job_id in job_ids:
            self.rt.jobs.submit(job_id)

    def _is_open(self, tenant: str, upload_id: str) -> bool:
        # An LMDB read: cheap enough for the event loop.
        try:
            return self.store.session(upload_id, tenant).state == cas.SessionState.OPEN
        except cas.StoreError:
            return False  # the call itself says why

    def _count_chunk(self, new: bool) -> None:
        self.rt.metrics.chunks.labels("stored" if new else "repeated").inc()

    def _count_opened(self, new: NewUpload, session: cas.Session, missing: list[int]) -> None:
        """A created upload; with a declared chunk list, the chunks (and bytes)
        the client need not send because the store has them."""
        metrics = self.rt.metrics
        logs.note(upload_id=session.id, api=new.api)
        metrics.uploads.labels(new.api, "created").inc()
        if new.chunks:
            wanted = set(missing)
            skipped = [size for i, (_, size) in enumerate(new.chunks) if i not in wanted]
            if skipped:
                metrics.chunks.labels("deduplicated").inc(len(skipped))
                metrics.deduplicated_bytes.labels(new.api).inc(sum(skipped))

    def _count_completed(self, api: str, n: int) -> None:
        if n:
            self.rt.metrics.uploads.labels(api, "completed").inc(n)


def request_api() -> str:
    """The API of the request being served ("seed", "v1", "tus"), or "other"."""
    info = logs.current()
    return (info.api if info is not None else None) or "other"


async def _within(body: AsyncIterable[bytes], seconds: float, index: int) -> AsyncIterator[bytes]:
    """`body`, or 408 once it has taken longer than `seconds` in all."""
    pieces = body.__aiter__()
    deadline = trio.current_time() + seconds
    while True:
        with trio.move_on_at(deadline) as late:
            try:
                data = await pieces.__anext__()
            except StopAsyncIteration:
                return
        if late.cancelled_caught:
            raise ApiError(
                408,
                "body_timeout",
                f"chunk {index} did not arrive within {seconds:.0f} s; nothing of it was kept",
                headers={"Connection": "close"},
            )
        yield data


def check_metadata(metadata: dict[str, Any]) -> None:
    """Bound what a client stores with an upload (it is copied into every
    record, job and webhook of the file). Its depth and integers were checked
    when the JSON body was decoded (`jsonbody`); tus metadata holds strings."""
    try:
        size = len(msgspec.json.encode(metadata))
    except (TypeError, OverflowError, UnicodeEncodeError) as exc:
        raise ApiError(400, "invalid_metadata", f"metadata cannot be stored: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise ApiError(
            413,
            "metadata_too_large",
            f"metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}",
            limit=MAX_METADATA_BYTES,
        )


def _wrong_size(index: int, expected: int, actual: int) -> cas.WrongChunkSize:
    return cas.WrongChunkSize(
        f"chunk {index} must be {expected} bytes, got {actual}", expected=expected, actual=actual
    )


class _StreamRun:
    """One stream body on its way in: reader -> writer -> committer.

    Three tasks so that receiving, hashing/writing and fsyncing overlap.
    Without a checksum the committer attaches full chunks as they are durable
    (batched into one index write when several are ready) and, when the body
    ends — completely, cut off by a disconnect, or at the limit — the last
    partial chunk as the upload's tail. With a checksum nothing is attached
    until the whole body has arrived and matches; then all of it in one
    index write, or none of it (the unattached objects are left to the
    orphan sweep). The writer and committer are shielded from the request's
    cancellation, so a client that disconnects mid-body keeps every byte
    that was read.
    """

    def __init__(
        self,
        ingest: Ingest,
        tenant: str,
        upload_id: str,
        offset: int,
        appender: cas.Appender,
        checksum: Any,
    ) -> None:
        self.ingest = ingest
        self.rt = ingest.rt
        self.received_bytes = self.rt.metrics.received_bytes.labels("tus")
        self.tenant = tenant
        self.upload_id = upload_id
        # The upload's offset as far as this request has attached.
        self.offset = offset
        self.appender = appender
        self.checksum = checksum
        self.data_send, self.data_recv = trio.open_memory_channel[bytes](QUEUED_PIECES)
        self.sealed_send, self.sealed_recv = trio.open_memory_channel[cas.Sealed](QUEUED_CHUNKS)
        self.read_scope = trio.CancelScope()
        # Body bytes read but not handed to the writer when reading stopped.
        self.leftover: bytes = b""
        self.ended = False  # the whole body arrived
        self.overflow = False  # it went past the limit
        self.stalled = False  # no byte arrived for BODY_IDLE_TIMEOUT seconds
        self.keep = False  # the writer's verdict: attach what it wrote
        self.broken = False  # committing or attaching failed: stop
        self.error: BaseException | None = None

    async def go(self, body: AsyncIterable[bytes], limit: int) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            nursery.start_soon(self._commit)
            try:
                with self.read_scope:
                    await self._read(body, limit)
            finally:
                self.data_send.close()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.read_scope.cancel()

    async def _read(self, body: AsyncIterable[bytes], limit: int) -> None:
        received = 0
        chunks: AsyncIterator[bytes] = body.__aiter__()
        try:
            while True:
                # A client that stops sending must not hold the upload forever.
                with trio.move_on_after(BODY_IDLE_TIMEOUT) as idle:
                    try:
                        data = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                if idle.cancelled_caught:
                    self.stalled = True
                    return
                if received + len(data) > limit:
                    data = data[: limit - received]
                    self.overflow = True
                received += len(data)
                self.received_bytes.inc(len(data))
                # Until the writer has it, a disconnect must not lose it.
                self.leftover = data
                await self.data_send.send(data)
                self.leftover = b""
                if self.overflow:
                    return
            self.ended = True
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a body timeout; reported by the caller
            self._fail(exc)

    async def _write(self) -> None:
        # Shielded: bytes that arrived before a disconnect are still stored.
        with trio.CancelScope(shield=True):
            try:
                async with self.sealed_send:
                    async for piece in self.data_recv:
                        if self.error is None:
                            # Pieces that queued up meanwhile go in the same thread hop.
                            await self._seal([piece, *_drain(self.data_recv)])
                    if self.error is not None:
                        return
                    await self._seal([self.leftover])
                    self.keep = self.checksum is None or (
                        self.ended and self.checksum.matches(self.appender.checksum)
                    )
                    if self.keep:
                        last = await self.rt.run(self.appender.finish)
                        if last is not None:
                            await self.sealed_send.send(last)
            except Exception as exc:  # noqa: BLE001 - reported by go()'s caller
                self._fail(exc)
            finally:
                await self.rt.run(self.appender.abort)

    async def _seal(self, pieces: list[bytes]) -> None:
        def write() -> list[cas.Sealed]:
            sealed: list[cas.Sealed] = []
            try:
                for piece in pieces:
                    sealed.extend(self.appender.write(piece))
            except BaseException:
                for chunk in sealed:
                    chunk.abort()  # no temp file is left behind
                raise
            return sealed

        for sealed in await self.rt.run(write):
            await self.sealed_send.send(sealed)

    async def _commit(self) -> None:
        with trio.CancelScope(shield=True):
            committed: list[cas.Piece] = []
            async with self.sealed_recv:
                async for sealed in self.sealed_recv:
                    batch = [sealed, *_drain(self.sealed_recv, COMMIT_THREADS - 1)]
                    if self.broken:
                        await self.rt.run(lambda b=batch: [s.abort() for s in b])
                        continue
                    try:
                        await self._commit_batch(batch, committed)
                        more = self.sealed_recv.statistics().current_buffer_used
                        if self.checksum is None and (not more or len(committed) >= ATTACH_BATCH):
                            await self._attach(committed)
                            committed = []
                    except Exception as exc:  # noqa: BLE001 - reported by go()'s caller
                        self.broken = True
                        self._fail(exc)
            # Without a checksum, what is committed is kept even if writing
            # failed later; with one, only a whole, matching body is.
            if committed and not self.broken and (self.checksum is None or self.keep):
                try:
                    await self._attach(committed)
                except Exception as exc:  # noqa: BLE001 - reported by go()'s caller
                    self._fail(exc)

    async def _commit_batch(self, batch: list[cas.Sealed], committed: list[cas.Piece]) -> None:
        """Commit chunks side by side (each fsync waits on the disk, not the CPU);
        append them to `committed` in order, up to the first that failed."""
        results: list[cas.Piece | BaseException | None] = [None] * len(batch)

        async def commit(i: int) -> None:
            try:
                results[i] = await self.rt.run(batch[i].commit)
            except Exception as exc:  # noqa: BLE001 - raised below, in order
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(batch)):
                nursery.start_soon(commit, i)
        stored = sum(r.put.size for r in results if isinstance(r, cas.Piece) and not r.put.existed)
        self.rt.metrics.stored_bytes.labels("tus").inc(stored)
        for result in results:
            if isinstance(result, BaseException):
                raise result
            committed.append(result)

    async def _attach(self, pieces: list[cas.Piece]) -> None:
        streams = self.ingest.streams
        appended = await self.rt.run(
            streams.attach, self.upload_id, self.tenant, self.offset, pieces
        )
        self.rt.metrics.chunks.labels("stored").inc(len(pieces))
        self.offset = appended.offset
        self.ingest.submit_jobs(appended.jobs)
        self.ingest._count_completed("tus", len(appended.jobs))


def _drain(channel: trio.MemoryReceiveChannel, limit: int | None = None) -> list:
    """What waits in `channel` now (at most `limit` items), without blocking."""
    out = []
    while limit is None or len(out) < limit:
        try:
            out.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return out

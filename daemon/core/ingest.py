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
import functools
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio
from ingestd import cas, plugins
from ingestd.plugins import Plugins, UploadRequest, run_policy

from . import logs, streaming
from .config import Config
from .errors import (
    BodyStalled,
    BodyTimeout,
    FileTooLarge,
    InvalidFilename,
    InvalidMetadata,
    LengthExceeded,
    MetadataTooLarge,
    NoRoomInReserve,
    PolicyRefusal,
    PolicyUnavailable,
    StreamChecksumMismatch,
    StreamOverQuota,
    UploadLocked,
)
from .jobs import JobRunner
from .limits import Limits
from .metrics import Metrics
from .streaming import StreamChecksum, StreamRun
from .threads import Threads

# The most JSON a client may store as an upload's metadata.
MAX_METADATA_BYTES = 64 << 10
# Body bytes handed to a chunk's writer thread at a time.
FLUSH_BYTES = 1 << 20
# The characters the store keeps out of names on disk too.


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
    # A byte stream's state (tus), None for a chunked upload.
    stream: cas.StreamState | None = None


@dataclass(frozen=True, slots=True)
class StreamReceipt:
    """A stream body stored whole: the upload after it."""

    state: cas.StreamState

    @property
    def offset(self) -> int:
        return self.state.offset


class Ingest:
    def __init__(
        self,
        config: Config,
        store: cas.Store,
        threads: Threads,
        plugins: Plugins,
        metrics: Metrics,
        limits: Limits,
        jobs: JobRunner,
    ) -> None:
        self.store = store
        self.threads = threads
        self.plugins = plugins
        self.metrics = metrics
        self.limits = limits
        self.jobs = jobs
        self.data_dir = config.data_dir
        self.storage = config.storage
        self.body_limits = config.limits
        self.chunk_size = config.storage.chunk_size
        self.max_file_size = config.limits.max_file_size
        self.max_stream_size = max_stream_size(config)

    def _check_free_space(self, size: int) -> None:
        """Refuse a new upload that would leave less than `storage.reserve` free."""
        reserve = self.storage.reserve
        if not reserve:
            return
        # statvfs: a system call, no disk I/O; fine on the event loop.
        free = shutil.disk_usage(self.data_dir).free
        if free - size < reserve:
            raise NoRoomInReserve(
                f"the server has {free} bytes free and keeps {reserve} in reserve; "
                f"an upload of {size} bytes does not fit",
                free=free,
                reserve=reserve,
                size=size,
            )

    def max_file_size_for(self, tenant: str) -> int:
        return self.limits.of(tenant).max_file_size

    # -- opening ---------------------------------------------------------------

    async def open_upload(self, new: NewUpload) -> Opened:
        """Check limits and the policy, then create the upload."""
        check_filename(new.filename)
        check_metadata(new.metadata)
        self._check_free_space(new.size or 0)
        max_file_size = self.max_file_size_for(new.tenant)
        if new.size is not None and new.size > max_file_size:
            raise FileTooLarge(
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
            return await self._open_chunked(new)
        return await self._open_stream(new, spec)

    async def _open_chunked(self, new: NewUpload) -> Opened:
        session = await self.threads.run(
            self.store.create_session,
            filename=new.filename,
            size=new.size,
            chunk_size=self.chunk_size,
            tenant=new.tenant,
            sha256=new.sha256,
            metadata=new.metadata,
            chunks=new.chunks,
            min_chunk_size=self.storage.cdc_min_size,
            max_chunk_size=self.storage.cdc_max_size,
        )
        missing = await self.threads.run(self.store.missing, session.id, new.tenant)
        self._count_opened(new, session, missing)
        return Opened(session, missing)

    async def _open_stream(self, new: NewUpload, spec: StreamSpec) -> Opened:
        streams = self.store.streams
        common = dict(
            tenant=new.tenant,
            chunk_size=self.chunk_size,
            filename=new.filename,
            metadata=new.metadata,
            metadata_header=spec.metadata_header,
        )
        if spec.kind == cas.FINAL:
            create = functools.partial(streams.create_final, partials=list(spec.partials), **common)
        else:
            create = functools.partial(streams.create, kind=spec.kind, length=new.size, **common)
        created = await self.threads.run(create)
        self._count_opened(new, created.session, [])
        self._stream_jobs(created.jobs)
        state = created.state
        if spec.kind == cas.FINAL and not created.stream.assembled:
            # Its length is its partials' (an LMDB read: fine on the event loop).
            state = self.stream_state(new.tenant, created.session.id)
        return Opened(created.session, [], state)

    def _known_length(self, tenant: str, partials: tuple[str, ...]) -> int | None:
        total = 0
        for partial_id in partials:
            try:
                length = self.store.streams.state(partial_id, tenant).length
            except cas.ClientError:
                return None  # creating the final upload refuses it, with the reason
            if length is None:
                return None
            total += length
        return total

    async def _check_policy(self, request: UploadRequest) -> None:
        """Run the plugins' upload policy; a refusal is a `PolicyRefusal`."""
        try:
            refusal = await run_policy(self.plugins, request, limiter=self.threads.limiter)
        except plugins.PolicyUnavailable as exc:
            raise PolicyUnavailable(str(exc)) from None
        if refusal is not None:
            raise PolicyRefusal(refusal.reason, code=refusal.code, status=refusal.status)

    # -- chunks ----------------------------------------------------------------

    async def receive_chunk(
        self,
        api: str,
        tenant: str,
        upload_id: str,
        index: int,
        body: AsyncIterable[bytes],
        *,
        content_length: int | None = None,
        claimed_hash: str | None = None,
    ) -> cas.ChunkAck:
        """Store `body` as chunk `index`, durably, and attach it (`api`: the
        API it came by, for the metrics).

        The store hashes the bytes itself; a body that does not match the
        declared hash (the upload's chunk list or `claimed_hash`) or length
        is refused and not kept. The same bytes again are harmless."""
        logs.note(upload_id=upload_id)
        # An LMDB read is a lookup in a memory map: cheap enough for the event
        # loop, and a thread hop per chunk is not.
        intake = self.store.receive_chunk(upload_id, index, tenant, claimed_hash=claimed_hash)
        if content_length is not None:
            intake.check_length(content_length)
        try:
            ack = await self._feed(api, intake, body, f"chunk {index}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.threads.run(intake.abort)
            raise
        self._count_chunk(ack.stored)
        return ack

    async def receive_chunks(
        self,
        api: str,
        tenant: str,
        upload_id: str,
        first: int,
        count: int,
        body: AsyncIterable[bytes],
        *,
        content_length: int | None = None,
    ) -> list[cas.ChunkAck]:
        """Store `body` as chunks `first` .. `first + count - 1`, back to back,
        durably, and attach them together; their acks.

        Each chunk is hashed as it arrives and checked against the declared
        hash and length. A failure part-way (a chunk that fails its hash, a
        body cut short, too long or too slow) keeps every whole chunk before
        it: the refusal's ``kept_chunks`` lists them."""
        logs.note(upload_id=upload_id)
        run = self.store.receive_chunks(upload_id, first, count, tenant)
        if content_length is not None:
            run.check_length(content_length)
        try:
            acks = await self._feed(api, run, body, f"chunks {first}..{first + count - 1}")
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self.threads.run(run.abort)
                try:
                    await self.threads.run(run.keep)
                except cas.StoreError:
                    pass  # e.g. the upload was cancelled meanwhile: the first refusal stands
            if isinstance(exc, cas.StoreError):
                exc.extra["kept_chunks"] = [ack.index for ack in run.acks]
            raise
        finally:
            for ack in run.acks:
                self._count_chunk(ack.stored)
        return acks

    async def _feed(
        self,
        api: str,
        target: cas.ChunkIntake | cas.ChunkRun,
        body: AsyncIterable[bytes],
        what: str,
    ) -> Any:
        """Write `body` into a chunk's (or a run's) intake and `finish` it:
        the pieces as the body gave them (not joined: no copy), a thread hop
        per FLUSH_BYTES, the last ones with the commit."""
        limits = self.body_limits
        length = target.length
        deadline = limits.body_timeout + length / limits.min_body_rate
        received = 0
        try:
            pending: list[bytes] = []
            pending_bytes = 0
            try:
                async for data in _within(body, deadline, what):
                    received += len(data)
                    pending.append(data)
                    if received > length:
                        break  # too long: `finish` refuses it; the rest is not read
                    pending_bytes += len(data)
                    if pending_bytes >= FLUSH_BYTES and received < length:
                        await self.threads.run(target.write, pending)
                        pending, pending_bytes = [], 0
            except BaseException:
                # The body broke off: what did arrive still counts (a run keeps
                # every chunk it made whole, the last ones included).
                if pending:
                    with trio.CancelScope(shield=True), contextlib.suppress(cas.StoreError):
                        await self.threads.run(target.write, pending)
                raise
            return await self.threads.run(target.finish, pending)
        finally:
            self.metrics.received_bytes.labels(api).inc(received)
            self.metrics.stored_bytes.labels(api).inc(target.written)

    # -- streams ---------------------------------------------------------------

    def stream_state(self, tenant: str, upload_id: str) -> cas.StreamState:
        # An LMDB read is a lookup in a memory map: cheap enough for the event loop.
        return self.store.streams.state(upload_id, tenant)

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

    async def declare_length(self, tenant: str, upload_id: str, length: int) -> cas.StreamState:
        logs.note(upload_id=upload_id)
        limit = self.max_file_size_for(tenant)
        if length > limit:
            raise FileTooLarge(f"length {length} exceeds the limit of {limit} bytes", limit=limit)
        streams = self.store.streams
        declared = await self.threads.run(streams.declare_length, upload_id, tenant, length)
        self._stream_jobs(declared.jobs)
        return declared.state

    async def receive_stream(
        self,
        tenant: str,
        upload_id: str,
        state: cas.StreamState,
        body: AsyncIterable[bytes],
        *,
        limit: int,
        checksum: StreamChecksum | None = None,
    ) -> StreamReceipt:
        """Store `body` at the upload's offset in `state` (read by the caller,
        under `writing(upload_id)`), at most `limit` bytes.

        Raises, once what is kept is durable: `BodyStalled` when the body
        stops arriving, `LengthExceeded` past `limit`, `StreamOverQuota` past
        the tenant's byte quota (an upload of unknown length) — the bytes up
        to there kept unless `checksum` was given — and
        `StreamChecksumMismatch` (nothing kept)."""
        logs.note(upload_id=upload_id)
        offset, streams = state.offset, self.store.streams

        def start() -> cas.Appender:
            tail = streams.read_tail(upload_id, tenant, offset)
            hasher = checksum.hasher() if checksum is not None else None
            return streams.appender(state.session, offset, tail, hasher)

        file_room, quota_room = self._undeclared_room(tenant, state)
        limit = min(limit, file_room)
        quota_cap = None
        if quota_room < limit:
            limit = quota_cap = quota_room
        run = StreamRun(
            self.store,
            self.threads,
            self.metrics,
            self._stream_jobs,
            tenant,
            upload_id,
            state,
            await self.threads.run(start),
            checksum,
        )
        await run.go(body, limit)
        if run.error is not None:
            raise run.error
        kept = "none" if checksum else "the bytes up to it"
        if run.stalled:
            raise BodyStalled(
                f"no bytes arrived for {streaming.BODY_IDLE_TIMEOUT:g} seconds; "
                f"{'none' if checksum else 'those received'} kept",
                offset=run.offset,
            )
        if run.overflow and quota_cap is not None:
            raise StreamOverQuota(
                "the body goes past what the tenant's quota leaves for an upload of unknown "
                f"length; {kept} kept",
                offset=run.offset,
            )
        if run.overflow:
            raise LengthExceeded(
                f"the body goes past the upload's length (or the largest upload); {kept} kept",
                offset=run.offset,
            )
        if checksum is not None and not run.keep:
            raise StreamChecksumMismatch(
                f"the body's {checksum.algorithm} is not the one in Upload-Checksum; "
                "nothing was kept",
                offset=run.offset,
            )
        return StreamReceipt(run.state)

    def _undeclared_room(self, tenant: str, state: cas.StreamState) -> tuple[int, int]:
        """For a stream whose length is not declared yet (its bytes reserve
        nothing), how many more bytes the tenant's file-size limit and byte
        quota allow; unbounded when its length is known (checked when declared)."""
        unbounded = 1 << 62
        if state.length is not None:
            return unbounded, unbounded
        own, offset = self.limits.of(tenant), state.offset
        quota_room = unbounded
        if own.max_bytes is not None:
            usage = self.store.usage(tenant)
            quota_room = max(own.max_bytes - usage.logical_bytes - usage.open_bytes - offset, 0)
        return max(own.max_file_size - offset, 0), quota_room

    # -- completing, cancelling ------------------------------------------------

    async def complete(self, api: str, tenant: str, upload_id: str) -> tuple[cas.Session, cas.Job]:
        """Accept an upload for completion: the job verifies and records it."""
        logs.note(upload_id=upload_id)
        was_open = self._is_open(tenant, upload_id)
        session = await self.threads.run(self.store.begin_completion, upload_id, tenant)
        job = await self.threads.run(self.store.jobs.get, session.job_id)
        if session.state == cas.SessionState.COMPLETING:
            self.submit_jobs((job.id,))
        if was_open:
            self._count_completed(api, 1)
        return session, job

    async def complete_now(
        self, api: str, tenant: str, upload_id: str, metadata: dict[str, object]
    ) -> cas.Completion:
        """Verify and record the file, with its materialised copy, before
        answering (the seed API answers with its path); its job then runs the
        plugins."""
        logs.note(upload_id=upload_id)
        was_open = self._is_open(tenant, upload_id)
        done = await self.threads.run(
            functools.partial(
                self.store.complete, upload_id, tenant, metadata=metadata, copy_now=True
            )
        )
        self.submit_jobs((done.job.id,))
        if was_open:
            self._count_completed(api, 1)
        return done

    async def cancel(self, api: str, tenant: str, upload_id: str) -> None:
        logs.note(upload_id=upload_id)
        was_open = self._is_open(tenant, upload_id)
        await self.threads.run(self.store.cancel, upload_id, tenant)
        if was_open:
            self.metrics.uploads.labels(api, "cancelled").inc()

    async def terminate(self, tenant: str, upload_id: str) -> None:
        """tus termination: cancel the upload, or delete what it became."""
        logs.note(upload_id=upload_id)
        was_open = self._is_open(tenant, upload_id)
        await self.threads.run(self.store.streams.terminate, upload_id, tenant)
        if was_open:
            self.metrics.uploads.labels("tus", "cancelled").inc()

    # -- shared ----------------------------------------------------------------

    def submit_jobs(self, job_ids: tuple[str, ...]) -> None:
        for job_id in job_ids:
            self.jobs.submit(job_id)

    def _stream_jobs(self, job_ids: tuple[str, ...]) -> None:
        """Jobs of stream uploads that their last bytes (or length) completed."""
        self.submit_jobs(job_ids)
        self._count_completed("tus", len(job_ids))

    def _is_open(self, tenant: str, upload_id: str) -> bool:
        # An LMDB read: cheap enough for the event loop.
        try:
            return self.store.session(upload_id, tenant).state == cas.SessionState.OPEN
        except cas.StoreError:
            return False  # the call itself says why

    def _count_chunk(self, new: bool) -> None:
        self.metrics.chunks.labels("stored" if new else "repeated").inc()

    def _count_opened(self, new: NewUpload, session: cas.Session, missing: list[int]) -> None:
        """A created upload; with a declared chunk list, the chunks (and bytes)
        the client need not send because the store has them."""
        metrics = self.metrics
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
            self.metrics.uploads.labels(api, "completed").inc(n)


def max_stream_size(config: Config) -> int:
    """The largest byte-stream (tus) upload."""
    return min(config.tus.max_size, config.limits.max_file_size)


def check_filename(name: str) -> None:
    """Names are recorded as sent; only what cannot be stored is refused (the
    copy's name is sanitised, headers and terminals escape what they show)."""
    if "\x00" in name:
        raise InvalidFilename("the filename contains a NUL character", field="filename")
    if not name.isascii() and any("\ud800" <= c <= "\udfff" for c in name):
        raise InvalidFilename("the filename contains a lone surrogate", field="filename")


async def _within(body: AsyncIterable[bytes], seconds: float, what: str) -> AsyncIterator[bytes]:
    """`body`, or `BodyTimeout` once it has taken longer than `seconds` in all."""
    pieces = body.__aiter__()
    deadline = trio.current_time() + seconds
    while True:
        with trio.move_on_at(deadline) as late:
            try:
                data = await pieces.__anext__()
            except StopAsyncIteration:
                return
        if late.cancelled_caught:
            raise BodyTimeout(
                f"{what} did not arrive within {seconds:.0f} s; only whole chunks are kept"
            )
        yield data


def check_metadata(metadata: dict[str, Any]) -> None:
    """Bound what a client stores with an upload (it is copied into every
    record, job and webhook of the file). Its depth and integers were checked
    when the JSON body was decoded (`jsonbody`); tus metadata holds strings."""
    try:
        size = len(msgspec.json.encode(metadata))
    except (TypeError, OverflowError, UnicodeEncodeError) as exc:
        raise InvalidMetadata(f"metadata cannot be stored: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise MetadataTooLarge(
            f"metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}",
            limit=MAX_METADATA_BYTES,
        )

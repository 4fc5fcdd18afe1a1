"""tus 1.0.0 at `tus.prefix` (default `/files/`): thin Quart handlers.

The protocol rules live in `tus` (sans-IO); the storage in
`ingestd.cas.streams`. This module reads requests, runs the two, and writes
answers. See docs/api-tus.md for what a client sees.

How a PATCH body is stored: the body streams through three tasks so that
receiving, hashing/writing and fsyncing overlap —

    reader (this request)  ->  writer (cuts chunks, hashes)  ->  committer (fsync, attach)

Without `Upload-Checksum` the committer attaches full chunks as they are
durable (batched into one index write when several are ready) and, when the
body ends — completely, cut off by a disconnect, or at the upload's length —
the last partial chunk as the upload's tail. With `Upload-Checksum` nothing is
attached until the whole body has arrived and matches; then all of it is
attached in one index write, or none of it (460; the unattached objects are
left to the orphan sweep). The writer and committer are shielded from the
request's cancellation, so a client that disconnects mid-PATCH keeps every
byte this handler had read; a body that stalls for BODY_IDLE_TIMEOUT ends
the request the same way (408), so that a vanished client cannot hold the
upload.

One request writes to an upload at a time: a second PATCH meanwhile gets
409 `upload_locked` (tus clients retry after a HEAD). The store checks the
offset again in the write transaction itself, so bytes can never interleave.

Large bodies: Quart buffers request bodies without bound and caps them at
MAX_CONTENT_LENGTH (a chunk, for the other APIs). Requests under the tus
prefix get `StreamingBody` instead — no size cap (the upload's length is
the cap) but at most HIGH_WATER bytes buffered: `TusConnection` stops taking
body messages from hypercorn until the handler has read them, so the socket
stops being read (TCP backpressure). Other requests are untouched.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass

import trio
from ingestd import cas
from ingestd.cas.streams import (
    Appended,
    Appender,
    InvalidConcat,
    InvalidLength,
    NotAStream,
    OffsetMismatch,
    Piece,
    Sealed,
    StreamState,
    StreamStore,
)
from ingestd.plugins import UploadRequest
from quart import Blueprint, Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody

from . import tus as core
from .config import Config
from .problems import problem
from .runtime import Runtime, runtime
from .v1_api import content_disposition, parse_range, stream_content

bp = Blueprint("tus", __name__)

TENANT = cas.DEFAULT_TENANT  # until tokens bind requests to tenants
DEFAULT_FILENAME = "upload"
# Bytes a request body may buffer before the socket stops being read.
HIGH_WATER = 4 << 20
# Body pieces (as the body hands them over, up to HIGH_WATER and a message
# each) that may wait for the writer, which takes all waiting ones at once;
# and sealed chunks (open files, no bytes in memory) waiting to be committed.
QUEUED_PIECES = 2
QUEUED_CHUNKS = 8
# Seconds a PATCH body may go without a byte before the request ends (its
# bytes so far kept), so that a vanished client does not hold the upload.
BODY_IDLE_TIMEOUT = 60.0
# Chunks of one request fsynced side by side, in worker threads.
COMMIT_THREADS = 4
# Committed chunks attached in one index write at most (when they pile up).
ATTACH_BATCH = 16
READ_BYTES = 1 << 20
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


# -- request bodies with backpressure -----------------------------------------


class StreamingBody(TrioBody):
    """A request body that buffers at most HIGH_WATER bytes and has no size cap.

    Iterate it to read. Awaiting it whole (only the error path does, to let
    an early answer leave the connection usable) drops the bytes instead of
    keeping them.
    """

    def __init__(self, expected_content_length: int | None, max_content_length: int | None):
        super().__init__(expected_content_length, None)
        self._room = trio.Event()
        self._discarding = False

    def append(self, data: bytes) -> None:
        if not self._discarding:
            super().append(data)

    async def __anext__(self) -> bytearray:
        # As Quart's, but hands over the buffer itself rather than a copy of it:
        # gigabytes pass through here.
        if self._must_raise is not None:
            raise self._must_raise
        if not self._complete.is_set():
            await self._has_data.wait()
        if self._complete.is_set() and not self._data:
            raise StopAsyncIteration
        data, self._data = self._data, bytearray()
        self._has_data.clear()
        self._room.set()
        return data

    def __await__(self):
        self._discarding = True
        self._data.clear()
        self._room.set()
        return super().__await__()

    def abandon(self) -> None:
        """Stop reading: the answer closes the connection, the rest is not wanted."""
        self._discarding = True
        self._data.clear()
        self.set_complete()
        self._room.set()

    def full(self) -> bool:
        return len(self._data) >= HIGH_WATER

    async def wait_for_room(self) -> None:
        while self.full():
            self._room = trio.Event()
            await self._room.wait()


class TusConnection(TrioASGIHTTPConnection):
    """Takes body messages only while the body has room (tus requests only)."""

    async def handle_messages(self, nursery, request, receive) -> None:  # type: ignore[override]
        body = request.body
        if not isinstance(body, StreamingBody):
            await super().handle_messages(nursery, request, receive)
            return
        while True:
            await body.wait_for_room()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


def _request_class(base: type, prefix: str) -> type:
    collection = prefix.rstrip("/")

    class TusAwareRequest(base):  # type: ignore[misc, valid-type]
        def __init__(self, method: str, scheme: str, path: str, *args, **kwargs) -> None:
            if path == collection or path.startswith(prefix):
                self.body_class = StreamingBody
            super().__init__(method, scheme, path, *args, **kwargs)

    return TusAwareRequest


# -- the service --------------------------------------------------------------


class TusService:
    """The tus endpoint's settings and its per-upload write locks."""

    def __init__(self, config: Config) -> None:
        self.prefix = config.tus.prefix
        self.max_size = min(config.tus.max_size, config.limits.max_file_size)
        self.cors_origins = list(config.tus.cors_origins)
        self.chunk_size = config.storage.chunk_size
        self._writing: set[str] = set()
        self._streams: StreamStore | None = None

    def streams(self, rt: Runtime) -> StreamStore:
        if self._streams is None or self._streams.store is not rt.store:
            self._streams = StreamStore(rt.store, max_size=self.max_size)
        return self._streams

    @contextlib.contextmanager
    def writing(self, upload_id: str) -> Iterator[None]:
        """Hold the upload for one writing request; 409 if another holds it."""
        # One event loop: nothing runs between the check and the add.
        if upload_id in self._writing:
            raise core.TusError(
                409,
                "upload_locked",
                f"another request is writing to upload {upload_id}; retry after a HEAD",
            )
        self._writing.add(upload_id)
        try:
            yield
        finally:
            self._writing.discard(upload_id)


def install(app: QuartTrio, config: Config) -> None:
    """Serve tus at `config.tus.prefix` on `app`."""
    app.extensions["ingestd.tus"] = TusService(config)
    app.request_class = _request_class(app.request_class, config.tus.prefix)
    app.asgi_http_class = TusConnection
    app.register_blueprint(bp, url_prefix=config.tus.prefix.rstrip("/"))


def service() -> TusService:
    from quart import current_app

    return current_app.extensions["ingestd.tus"]


# -- errors and common headers ------------------------------------------------


def tus_problem(exc: core.TusError) -> Response:
    response = problem(exc.status, exc.code, exc.detail, **exc.extra)
    response.headers.update(exc.headers)
    return response


def from_store_error(exc: cas.ClientError) -> core.TusError:
    """The tus answer to a store refusal."""
    if isinstance(exc, cas.UnknownSession | NotAStream):
        return core.TusError(404, "unknown_upload", exc.detail)
    if isinstance(exc, cas.SessionNotOpen):
        state = exc.extra.get("state")
        if state == "expired":
            return core.TusError(410, "upload_expired", exc.detail)
        if state == "cancelled":
            return core.TusError(410, "upload_terminated", exc.detail)
        return core.TusError(409, "upload_not_open", exc.detail, state=str(state))
    if isinstance(exc, OffsetMismatch):
        return core.TusError(409, "offset_mismatch", exc.detail, **exc.extra)
    if isinstance(exc, InvalidLength | InvalidConcat):
        return core.TusError(400, exc.code, exc.detail, **exc.extra)
    if isinstance(exc, cas.TooLarge):
        return core.TusError(413, "too_large", exc.detail, **exc.extra)
    if isinstance(exc, cas.UnknownFile):
        return core.TusError(404, "unknown_file", exc.detail)
    return core.TusError(400, exc.code, exc.detail, **exc.extra)


@bp.errorhandler(core.TusError)
async def _tus_error(exc: core.TusError) -> Response:
    return tus_problem(exc)


@bp.errorhandler(cas.ClientError)
async def _store_refusal(exc: cas.ClientError) -> Response:
    return tus_problem(from_store_error(exc))


@bp.after_request
async def _protocol_headers(response: Response) -> Response:
    """Every answer says its tus version; cross-origin ones carry CORS headers."""
    response.headers.setdefault("Tus-Resumable", core.TUS_VERSION)
    cors = core.cors_headers(request.headers.get("Origin"), service().cors_origins)
    for name, value in cors.items():
        response.headers.setdefault(name, value)
    return response


# -- routes -------------------------------------------------------------------


@bp.route(
    "/",
    methods=["POST", "OPTIONS"],
    strict_slashes=False,
    provide_automatic_options=False,
)
async def creation() -> Response:
    """tus creation URL: `POST` creates an upload (creation, creation-with-upload,
    creation-defer-length, concatenation); `OPTIONS` describes the server."""
    method = core.effective_method(request.method, request.headers.get("X-HTTP-Method-Override"))
    if method == "OPTIONS":
        return options_response()
    core.check_version(method, request.headers.get("Tus-Resumable"))
    if method != "POST":
        raise not_allowed(method, "POST, OPTIONS")
    return await create_upload()


@bp.route(
    "/<upload_id>",
    methods=["HEAD", "GET", "PATCH", "DELETE", "POST", "OPTIONS"],
    provide_automatic_options=False,
)
async def upload(upload_id: str) -> Response:
    """A tus upload: `HEAD` (offset), `PATCH` (bytes at the offset), `DELETE`
    (termination), `GET` (the content once complete). `POST` with
    `X-HTTP-Method-Override` stands for any of them."""
    method = core.effective_method(request.method, request.headers.get("X-HTTP-Method-Override"))
    if method == "OPTIONS":
        return options_response()
    core.check_version(method, request.headers.get("Tus-Resumable"))
    handlers = {"HEAD": head_upload, "PATCH": patch_upload, "DELETE": terminate, "GET": download}
    handler = handlers.get(method)
    if handler is None:
        raise not_allowed(method, "HEAD, GET, PATCH, DELETE, OPTIONS")
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise core.TusError(404, "unknown_upload", f"no upload with id {upload_id!r}")
    return await handler(upload_id)


def empty(status: int, headers: dict[str, str]) -> Response:
    """An answer without a body (and so without a Content-Type)."""
    response = Response(b"", status=status, headers=headers)
    del response.headers["Content-Type"]
    return response


def not_allowed(method: str, allowed: str) -> core.TusError:
    return core.TusError(
        405, "method_not_allowed", f"{method} is not allowed here", headers={"Allow": allowed}
    )


def options_response() -> Response:
    tus = service()
    headers = core.options_headers(tus.max_size)
    if request.headers.get("Access-Control-Request-Method"):
        headers.update(core.preflight_headers(request.headers.get("Origin"), tus.cors_origins))
    return empty(204, headers)


# -- creation -----------------------------------------------------------------


async def create_upload() -> Response:
    rt, tus = runtime(), service()
    streams = tus.streams(rt)
    headers = request.headers
    creation = core.plan_creation(
        upload_length=headers.get("Upload-Length"),
        defer_length=headers.get("Upload-Defer-Length"),
        upload_metadata=headers.get("Upload-Metadata"),
        upload_concat=headers.get("Upload-Concat"),
        content_type=headers.get("Content-Type"),
        content_length=request.content_length,
        upload_checksum=headers.get("Upload-Checksum"),
        max_size=tus.max_size,
        prefix=tus.prefix,
        chunked="chunked" in headers.get("Transfer-Encoding", "").lower(),
    )
    filename, metadata = core.file_metadata(creation.metadata)
    filename = filename or DEFAULT_FILENAME
    if creation.kind != core.PARTIAL:
        # Partial uploads are fragments of a file: the policy judges the final one.
        size = creation.length
        if creation.kind == core.FINAL:
            size = _known_length(streams, creation.partials)
        await rt.check_policy(
            UploadRequest(
                tenant=TENANT, filename=filename, size=size or 0, api="tus", metadata=metadata
            )
        )
    if creation.kind == core.FINAL:
        created = await rt.run(
            streams.create_final,
            tenant=TENANT,
            partials=list(creation.partials),
            chunk_size=tus.chunk_size,
            filename=filename,
            metadata=metadata,
            metadata_header=creation.metadata_header,
        )
    else:
        created = await rt.run(
            streams.create,
            tenant=TENANT,
            kind=creation.kind,
            length=creation.length,
            chunk_size=tus.chunk_size,
            filename=filename,
            metadata=metadata,
            metadata_header=creation.metadata_header,
        )
    submit(rt, created)
    upload_id = created.session.id
    location = {"Location": tus.prefix + upload_id}
    if creation.with_upload:
        with tus.writing(upload_id):
            try:
                offset = await receive_body(
                    rt,
                    streams,
                    created.session,
                    0,
                    (creation.length if creation.length is not None else tus.max_size),
                    creation.checksum,
                )
            except core.TusError as exc:
                exc.headers.update(location)  # the upload exists: say where
                raise
            except cas.ClientError as exc:
                error = from_store_error(exc)
                error.headers.update(location)
                raise error from None
    view = load_view(rt, tus, upload_id)[0]
    answer = {**location, "Tus-Resumable": core.TUS_VERSION, **core.state_headers(view)}
    if creation.with_upload:
        answer["Upload-Offset"] = str(offset)
    return empty(201, answer)


def _known_length(streams: StreamStore, partials: tuple[str, ...]) -> int | None:
    total = 0
    for partial_id in partials:
        try:
            length = streams.state(partial_id, TENANT).length
        except cas.ClientError:
            return None  # create_final refuses it with the reason
        if length is None:
            return None
        total += length
    return total


def submit(rt: Runtime, appended: Appended) -> None:
    for job_id in appended.jobs:
        rt.jobs.submit(job_id)


# -- HEAD, PATCH, DELETE ------------------------------------------------------


def load_view(rt: Runtime, tus: TusService, upload_id: str) -> tuple[core.UploadView, StreamState]:
    # An LMDB read is a lookup in a memory map: cheap enough for the event loop.
    state = tus.streams(rt).state(upload_id, TENANT)
    session, stream = state.session, state.stream
    view = core.UploadView(
        id=session.id,
        kind=stream.kind,
        state=str(session.state),
        offset=stream.offset,
        length=state.length,
        expires=session.expires,
        metadata_header=stream.metadata_header,
        partials=tuple(stream.partials),
        assembled=stream.assembled,
        terminated=stream.terminated,
        file_id=session.file_id,
        job_id=session.job_id,
        reason=session.reason,
    )
    return view, state


async def head_upload(upload_id: str) -> Response:
    rt, tus = runtime(), service()
    view, _ = load_view(rt, tus, upload_id)
    core.check_available(view, rt.store.clock())
    return empty(200, core.upload_headers(view, tus.prefix))


async def patch_upload(upload_id: str) -> Response:
    rt, tus = runtime(), service()
    streams = tus.streams(rt)
    with tus.writing(upload_id):
        view, state = load_view(rt, tus, upload_id)
        headers = request.headers
        plan = core.plan_patch(
            view,
            content_type=headers.get("Content-Type"),
            upload_offset=headers.get("Upload-Offset"),
            upload_length=headers.get("Upload-Length"),
            upload_checksum=headers.get("Upload-Checksum"),
            content_length=request.content_length,
            now=rt.store.clock(),
            max_size=tus.max_size,
        )
        offset = plan.offset
        if plan.declare_length is not None:
            declared = await rt.run(streams.declare_length, upload_id, TENANT, plan.declare_length)
            submit(rt, declared)
        if plan.noop:
            async for data in request.body:
                if data:
                    raise core.TusError(
                        413, "length_exceeded", f"upload {upload_id} has all its bytes"
                    )
        else:
            offset = await receive_body(
                rt, streams, state.session, plan.offset, plan.limit, plan.checksum
            )
        view, _ = load_view(rt, tus, upload_id)
    answer = {"Tus-Resumable": core.TUS_VERSION, "Upload-Offset": str(offset)}
    answer.update(core.state_headers(view))
    return empty(204, answer)


async def terminate(upload_id: str) -> Response:
    """tus termination. Not under the write lock: terminating an upload whose
    PATCH is still running makes that PATCH fail (410) at its next write."""
    rt, tus = runtime(), service()
    view, _ = load_view(rt, tus, upload_id)
    core.check_available(view, rt.store.clock())
    await rt.run(tus.streams(rt).terminate, upload_id, TENANT)
    return empty(204, {"Tus-Resumable": core.TUS_VERSION})


# -- GET ----------------------------------------------------------------------


async def download(upload_id: str) -> Response:
    """The upload's content once it has all its bytes; `Range` as in /v1.

    A single or final upload serves its file (ETag: its BLAKE3), like
    /v1/files/{id}/content; a complete partial upload serves its bytes.
    """
    rt, tus = runtime(), service()
    view, state = load_view(rt, tus, upload_id)
    core.check_available(view, rt.store.clock())
    session = state.session
    incomplete = core.TusError(
        409, "upload_incomplete", f"upload {upload_id} is {view.state} and not complete yet"
    )
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    if view.kind == core.PARTIAL:
        if not view.complete:
            raise incomplete
        reader = cas.ManifestReader(rt.store.objects, tus.streams(rt).parts(upload_id))
        size = reader.size
    else:
        if view.state == "rejected":
            raise core.TusError(
                410, "file_rejected", f"upload {upload_id} was rejected: {view.reason}"
            )
        if view.state not in ("processing", "completed") or not session.file_id:
            raise incomplete
        file = await rt.run(rt.store.file, session.file_id, TENANT)
        headers["ETag"] = f'"{file.blake3}"'
        size = file.size
        reader = await rt.run(rt.store.open_file, file.id, TENANT)
    try:
        span = parse_range(request.headers.get("Range"), size)
    except BaseException:
        reader.close()
        raise
    start, end = span or (0, size)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    headers["Content-Type"] = core.media_type(session.metadata) or "application/octet-stream"
    headers["Content-Disposition"] = content_disposition(session.filename)
    return Response(stream_content(rt, reader, start, end), status=status, headers=headers)


# -- storing a body -----------------------------------------------------------


async def receive_body(
    rt: Runtime,
    streams: StreamStore,
    session: cas.Session,
    offset: int,
    limit: int,
    checksum: core.Checksum | None,
) -> int:
    """Store the request body at `offset` (at most `limit` bytes); the new offset.

    Raises 460 on a checksum mismatch (nothing kept) and 413 past `limit`
    (the bytes up to it kept, unless a checksum was asked for).
    """
    tail = await rt.run(streams.read_tail, session.id, TENANT, offset)
    appender = streams.appender(session, offset, tail, checksum.hasher() if checksum else None)
    run = BodyRun(rt, streams, session.id, offset, appender, checksum)
    await run.go(request.body, limit)
    if run.error is not None:
        raise run.error
    if run.stalled or run.overflow:
        # The rest of the body is not wanted: close rather than drain it.
        if isinstance(request.body, StreamingBody):
            request.body.abandon()
    if run.stalled:
        raise core.TusError(
            408,
            "body_timeout",
            f"no bytes arrived for {BODY_IDLE_TIMEOUT:g} seconds; "
            f"{'none' if checksum else 'those received'} kept",
            headers={"Connection": "close"},
            offset=run.offset,
        )
    if run.overflow:
        raise core.TusError(
            413,
            "length_exceeded",
            f"the body goes past the upload's length (or the largest upload); "
            f"{'none' if checksum else 'the bytes up to it'} kept",
            headers={"Connection": "close"},
            offset=run.offset,
        )
    if checksum is not None and not run.keep:
        raise core.TusError(
            460,
            "checksum_mismatch",
            f"the body's {checksum.algorithm} is not the one in Upload-Checksum; nothing was kept",
            offset=run.offset,
        )
    return run.offset


@dataclass
class BodyRun:
    """One request body on its way into a stream: reader -> writer -> committer."""

    rt: Runtime
    streams: StreamStore
    upload_id: str
    # The stream's offset as far as this request has attached.
    offset: int
    appender: Appender
    checksum: core.Checksum | None

    def __post_init__(self) -> None:
        self.data_send, self.data_recv = trio.open_memory_channel[bytes](QUEUED_PIECES)
        self.sealed_send, self.sealed_recv = trio.open_memory_channel[Sealed](QUEUED_CHUNKS)
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
        chunks = body.__aiter__()
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
                            batch = [piece, *_drain(self.data_recv)]
                            await self._seal(batch)
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
        def write() -> list[Sealed]:
            sealed: list[Sealed] = []
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
            committed: list[Piece] = []
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

    async def _commit_batch(self, batch: list[Sealed], committed: list[Piece]) -> None:
        """Commit chunks side by side (each fsync waits on the disk, not the CPU);
        append them to `committed` in order, up to the first that failed."""
        results: list[Piece | BaseException | None] = [None] * len(batch)

        async def commit(i: int) -> None:
            try:
                results[i] = await self.rt.run(batch[i].commit)
            except Exception as exc:  # noqa: BLE001 - raised below, in order
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(batch)):
                nursery.start_soon(commit, i)
        for result in results:
            if isinstance(result, BaseException):
                raise result
            committed.append(result)

    async def _attach(self, pieces: list[Piece]) -> None:
        appended = await self.rt.run(
            self.streams.attach, self.upload_id, TENANT, self.offset, pieces
        )
        self.offset = appended.stream.offset
        submit(self.rt, appended)


def _drain(channel: trio.MemoryReceiveChannel, limit: int | None = None) -> list:
    """What waits in `channel` now (at most `limit` items), without blocking."""
    out = []
    while limit is None or len(out) < limit:
        try:
            out.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return out

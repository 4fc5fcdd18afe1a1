"""tus 1.0.0 at `tus.prefix` (default `/files/`): thin Quart handlers.

The protocol rules live in `tus` (sans-IO); receiving and storing bytes in
the upload core (`ingest`). This module reads requests, runs the two, and
writes answers. See docs/api-tus.md for what a client sees.

A PATCH body streams into the upload through the core: without
`Upload-Checksum` every full chunk is kept as soon as it is durable, and
when the body ends — completely, cut off by a disconnect, or at the upload's
length — the last partial chunk as the upload's tail; with it, all or
nothing (460). A body that stalls for BODY_IDLE_TIMEOUT ends the request
(408), its bytes so far kept, so that a vanished client cannot hold the
upload. One request writes to an upload at a time: a second PATCH meanwhile
gets 409 `upload_locked` (tus clients retry after a HEAD). The store checks
the offset again in the write transaction itself, so bytes can never
interleave. Bodies under the tus prefix are streamed with backpressure and
no size cap (`bodies`).
"""

from __future__ import annotations

import re

from ingestd import cas
from quart import Blueprint, Response, request
from quart_trio import QuartTrio

from ..core.config import Config
from ..core.errors import StreamCut
from ..core.ingest import NewUpload, StreamSpec
from . import tus_cors
from . import tus_protocol as core
from .auth import caller
from .bodies import StreamingBody, stream_bodies_under
from .downloads import content_disposition, serve_content
from .errors import ApiError
from .problems import api_error_response, refusal
from .runtime import Runtime, runtime

bp = Blueprint("tus", __name__)

DEFAULT_FILENAME = "upload"
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class TusSettings:
    """The tus endpoint's settings (the largest upload is the core's `max_stream_size`)."""

    def __init__(self, config: Config) -> None:
        self.prefix = config.tus.prefix
        self.cors_origins = list(config.tus.cors_origins)


def install(app: QuartTrio, config: Config) -> None:
    """Serve tus at `config.tus.prefix` on `app`."""
    app.extensions["ingestd.tus"] = TusSettings(config)
    stream_bodies_under(app, [config.tus.prefix])
    app.register_blueprint(bp, url_prefix=config.tus.prefix.rstrip("/"))


def settings() -> TusSettings:
    from quart import current_app

    return current_app.extensions["ingestd.tus"]


# -- errors and common headers ------------------------------------------------


def from_store_error(exc: cas.StoreError) -> ApiError:
    """The tus answer to a refusal of the store or the upload core: the
    shared table's (`problems.refusal`), but 410 for an upload that is gone."""
    if isinstance(exc, cas.SessionNotOpen):
        state = exc.extra.get("state")
        if state == "expired":
            return ApiError(410, "upload_expired", exc.detail)
        if state == "cancelled":
            return ApiError(410, "upload_terminated", exc.detail)
    return refusal(exc)


@bp.errorhandler(cas.ClientError)
async def _store_refusal(exc: cas.ClientError) -> Response:
    return api_error_response(from_store_error(exc))


@bp.after_request
async def _protocol_headers(response: Response) -> Response:
    """Every answer says its tus version; cross-origin ones carry CORS headers."""
    response.headers.setdefault("Tus-Resumable", core.TUS_VERSION)
    cors = tus_cors.cors_headers(request.headers.get("Origin"), settings().cors_origins)
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
        raise ApiError(404, "unknown_upload", f"no upload with id {upload_id!r}")
    return await handler(upload_id)


def empty(status: int, headers: dict[str, str]) -> Response:
    """An answer without a body (and so without a Content-Type)."""
    response = Response(b"", status=status, headers=headers)
    del response.headers["Content-Type"]
    return response


def not_allowed(method: str, allowed: str) -> ApiError:
    return ApiError(
        405, "method_not_allowed", f"{method} is not allowed here", headers={"Allow": allowed}
    )


def options_response() -> Response:
    tus = settings()
    headers = core.options_headers(runtime().ingest.max_stream_size)
    if request.headers.get("Access-Control-Request-Method"):
        headers.update(tus_cors.preflight_headers(request.headers.get("Origin"), tus.cors_origins))
    return empty(204, headers)


# -- creation -----------------------------------------------------------------


async def create_upload() -> Response:
    rt, tus = runtime(), settings()
    headers = request.headers
    creation = core.plan_creation(
        upload_length=headers.get("Upload-Length"),
        defer_length=headers.get("Upload-Defer-Length"),
        upload_metadata=headers.get("Upload-Metadata"),
        upload_concat=headers.get("Upload-Concat"),
        content_type=headers.get("Content-Type"),
        content_length=request.content_length,
        upload_checksum=headers.get("Upload-Checksum"),
        max_size=rt.ingest.max_stream_size,
        prefix=tus.prefix,
        chunked="chunked" in headers.get("Transfer-Encoding", "").lower(),
    )
    filename, metadata = core.file_metadata(creation.metadata)
    opened = await rt.ingest.open_upload(
        NewUpload(
            api="tus",
            tenant=caller().tenant,
            filename=filename or DEFAULT_FILENAME,
            size=creation.length,
            metadata=metadata,
            stream=StreamSpec(
                kind=creation.kind,
                partials=tuple(creation.partials),
                metadata_header=creation.metadata_header,
            ),
        )
    )
    upload_id = opened.session.id
    location = {"Location": tus.prefix + upload_id}
    state = opened.stream
    if creation.with_upload:
        try:
            with rt.ingest.writing(upload_id):
                length = creation.length
                limit = length if length is not None else rt.ingest.max_stream_size
                state = await receive_body(rt, upload_id, state, limit, creation.checksum)
        except ApiError as exc:
            exc.headers.update(location)  # the upload exists: say where
            raise
        except cas.ClientError as exc:
            error = from_store_error(exc)
            error.headers.update(location)
            raise error from None
    answer = {**location, "Tus-Resumable": core.TUS_VERSION, **core.state_headers(view_of(state))}
    if creation.with_upload:
        answer["Upload-Offset"] = str(state.offset)
    return empty(201, answer)


# -- HEAD, PATCH, DELETE ------------------------------------------------------


def read_state(rt: Runtime, upload_id: str) -> cas.StreamState:
    """The upload's records, read once per request (an LMDB read: fine on the event loop)."""
    return rt.ingest.stream_state(caller().tenant, upload_id)


def view_of(state: cas.StreamState) -> core.UploadView:
    """What the protocol rules need of an upload's records."""
    session, stream = state.session, state.stream
    return core.UploadView(
        id=session.id,
        kind=stream.kind,
        state=str(session.state),
        offset=state.offset,
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


async def head_upload(upload_id: str) -> Response:
    rt, tus = runtime(), settings()
    view = view_of(read_state(rt, upload_id))
    core.check_available(view, rt.store.clock())
    return empty(200, core.upload_headers(view, tus.prefix))


async def patch_upload(upload_id: str) -> Response:
    rt = runtime()
    with rt.ingest.writing(upload_id):
        state = read_state(rt, upload_id)
        headers = request.headers
        plan = core.plan_patch(
            view_of(state),
            content_type=headers.get("Content-Type"),
            upload_offset=headers.get("Upload-Offset"),
            upload_length=headers.get("Upload-Length"),
            upload_checksum=headers.get("Upload-Checksum"),
            content_length=request.content_length,
            now=rt.store.clock(),
            max_size=rt.ingest.max_stream_size,
        )
        if plan.declare_length is not None:
            state = await rt.ingest.declare_length(caller().tenant, upload_id, plan.declare_length)
        if plan.noop:
            async for data in request.body:
                if data:
                    raise ApiError(413, "length_exceeded", f"upload {upload_id} has all its bytes")
        else:
            state = await receive_body(rt, upload_id, state, plan.limit, plan.checksum)
    answer = {"Tus-Resumable": core.TUS_VERSION, "Upload-Offset": str(state.offset)}
    answer.update(core.state_headers(view_of(state)))
    return empty(204, answer)


async def terminate(upload_id: str) -> Response:
    """tus termination: 204 for any upload that exists (an open one is cancelled,
    a finished one's file deleted, even while its plugins run). Not under the
    write lock: terminating an upload whose PATCH is still running makes that
    PATCH fail (410) at its next write."""
    rt = runtime()
    core.check_available(view_of(read_state(rt, upload_id)), rt.store.clock())
    await rt.ingest.terminate(caller().tenant, upload_id)
    return empty(204, {"Tus-Resumable": core.TUS_VERSION})


# -- GET ----------------------------------------------------------------------


async def download(upload_id: str) -> Response:
    """The upload's content once it has all its bytes; `Range` as in /v1.

    A single or final upload whose file is recorded serves its file (ETag:
    its BLAKE3), like /v1/files/{id}/content; one still completing, and a
    complete partial upload, serve the bytes attached to it.
    """
    rt = runtime()
    state = read_state(rt, upload_id)
    view = view_of(state)
    core.check_available(view, rt.store.clock())
    session = state.session
    headers = {
        "Cache-Control": "no-store",
        "Content-Type": core.media_type(session.metadata) or "application/octet-stream",
        "Content-Disposition": content_disposition(session.filename),
    }
    if view.state == "rejected":
        raise ApiError(410, "file_rejected", f"upload {upload_id} was rejected: {view.reason}")
    if view.state in ("processing", "completed") and session.file_id and view.kind != core.PARTIAL:
        file = await rt.run(rt.store.file, session.file_id, caller().tenant)
        return await serve_content(
            rt,
            lambda: rt.run(rt.store.open_file, file.id, caller().tenant),
            size=file.size,
            headers=headers,
            etag=f'"{file.blake3}"',
        )
    if not view.complete or view.state not in ("open", "completing"):
        raise ApiError(
            409, "upload_incomplete", f"upload {upload_id} is {view.state} and not complete yet"
        )

    def open_bytes() -> cas.ManifestReader:
        reader = rt.store.open_parts(upload_id, caller().tenant)
        if reader.size == state.offset or not session.file_id:
            return reader
        # Its completion recorded the file meanwhile (and took the parts).
        reader.close()
        return rt.store.open_file(session.file_id, caller().tenant)

    return await serve_content(rt, lambda: rt.run(open_bytes), size=state.offset, headers=headers)


# -- storing a body -----------------------------------------------------------


async def receive_body(
    rt: Runtime,
    upload_id: str,
    state: cas.StreamState,
    limit: int,
    checksum: core.Checksum | None,
) -> cas.StreamState:
    """Store the request body at the upload's offset (at most `limit` bytes);
    the upload after it. The core's refusals (`core.errors`) say what was
    kept; their answers are the shared table's (`problems`)."""
    try:
        receipt = await rt.ingest.receive_stream(
            caller().tenant, upload_id, state, request.body, limit=limit, checksum=checksum
        )
    except StreamCut:
        # The rest of the body is not wanted: close rather than drain it.
        if isinstance(request.body, StreamingBody):
            request.body.abandon()
        raise
    return receipt.state

"""The native API (`/v1`): dedup-aware uploads, asynchronous completion, files.

A client may declare its chunk list (BLAKE3 and length of each chunk) when it
creates an upload; chunks the store already has are attached at once and only
the others are asked for. Chunks are raw `PUT` bodies, streamed to disk.
See docs/api-v1.md for the whole contract.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re

import msgspec
from ingestd import cas
from quart import Blueprint, Response, request
from quart_schema import (
    document_headers,
    document_querystring,
    document_response,
    validate_querystring,
    validate_request,
)
from quart_trio import QuartTrio

from ..core.ingest import NewUpload
from .auth import caller, create_token
from .bodies import StreamingBody, stream_bodies_where
from .downloads import content_disposition, serve_content
from .errors import ApiError
from .fields import parse_count
from .problems import Problem
from .runtime import Runtime, runtime
from .v1_models import (
    ChunkHeaders,
    Chunking,
    ChunkRunQuery,
    ChunkRunStored,
    ChunkStored,
    ChunkSummary,
    CompletionAccepted,
    CreateToken,
    CreateUpload,
    FileInfo,
    FileList,
    FilesQuery,
    Info,
    JobInfo,
    TenantLimits,
    TokenCreated,
    TokenInfo,
    TokenList,
    UploadCreated,
    UploadStatus,
    Usage,
    WaitQuery,
)

bp = Blueprint("v1", __name__, url_prefix="/v1")


def install(app: QuartTrio) -> None:
    """The blueprint, and bounded-memory bodies for chunk runs (which may be
    larger than any one chunk: `MAX_CONTENT_LENGTH` does not cap them)."""
    app.register_blueprint(bp)
    stream_bodies_where(app, is_chunk_run_path)


def is_chunk_run_path(path: str) -> bool:
    # /v1/uploads/{id}/chunks: a run; /v1/uploads/{id}/chunks/{index}: one chunk.
    return path.startswith("/v1/uploads/") and path.endswith("/chunks")


# The API's name in metrics, logs and the upload policy.
API = "v1"

MAX_WAIT = 60.0


def chunking(rt: Runtime) -> Chunking:
    s = rt.config.storage
    return Chunking(s.chunk_size, s.cdc_min_size, s.cdc_avg_size, s.cdc_max_size)


@bp.get("/info")
@document_response(Info)
async def info() -> Info:
    """Server facts a client needs before it cuts a file: chunking and limits."""
    rt = runtime()
    return Info(
        version="0.1.0",
        chunking=chunking(rt),
        max_file_size=rt.ingest.max_file_size_for(caller().tenant),
        max_chunk_size=rt.config.limits.max_chunk_size,
    )


@bp.get("/usage")
@document_response(Usage)
async def usage() -> Usage:
    """What the caller's tenant stores, logical and physical, and its limits."""
    rt = runtime()
    tenant = caller().tenant
    used = await rt.run(rt.store.usage, tenant)
    own = rt.core.limits.of(tenant)
    return Usage(
        tenant=tenant,
        **msgspec.structs.asdict(used),
        limits=TenantLimits(own.max_bytes, own.max_open_uploads, own.max_file_size),
    )


# -- tokens (admin) --------------------------------------------------------
# The admin scope these routes need is checked with every other (app.required_scope).


def token_info(t: cas.TokenRecord) -> TokenInfo:
    return TokenInfo(t.id, t.name, t.tenant, t.scopes, t.created, t.expires, t.last_used)


@bp.get("/tokens")
@document_response(TokenList)
@document_response(Problem, 403)
async def list_tokens() -> TokenList:
    """Every token (admin scope): names, tenants, scopes and use, never secrets."""
    rt = runtime()
    return TokenList([token_info(t) for t in await rt.run(rt.store.tokens.all)])


@bp.post("/tokens")
@validate_request(CreateToken)
@document_response(TokenCreated, 201)
@document_response(Problem, 403)
async def make_token(data: CreateToken) -> tuple[TokenCreated, int]:
    """Create a token for a tenant (admin scope). The answer is the only time
    the token is shown."""
    rt = runtime()
    try:
        token, record = await rt.run(
            functools.partial(
                create_token,
                rt.store.tokens,
                tenant=data.tenant,
                scope=data.scope,
                name=data.name,
                expires_in=data.expires_in,
            )
        )
    except ValueError as exc:
        raise ApiError(400, "invalid_token_request", str(exc)) from None
    return TokenCreated(token, token_info(record)), 201


@bp.delete("/tokens/<name_or_id>")
@document_response(Problem, 404)
async def revoke_token(name_or_id: str) -> tuple[str, int]:
    """Revoke a token by name or id (admin scope); refused from the next request on."""
    rt = runtime()
    try:
        await rt.run(rt.store.tokens.revoke, name_or_id)
    except cas.UnknownToken as exc:
        raise ApiError(404, "unknown_token", str(exc)) from None
    return "", 204


# -- uploads ---------------------------------------------------------------


@bp.post("/uploads")
@validate_request(CreateUpload)
@document_response(UploadCreated, 201)
@document_response(Problem, 400)
@document_response(Problem, 413)
async def create_upload(data: CreateUpload) -> tuple[UploadCreated, int, dict[str, str]]:
    """Create an upload. With `chunks`, only the indices in `missing` need sending."""
    opened = await runtime().ingest.open_upload(
        NewUpload(
            api=API,
            tenant=caller().tenant,
            filename=data.filename,
            size=data.size,
            sha256=data.sha256,
            metadata=data.metadata,
            chunks=None if data.chunks is None else [(ch.hash, ch.size) for ch in data.chunks],
        )
    )
    session, missing = opened.session, opened.missing
    body = UploadCreated(
        id=session.id,
        state=str(session.state),
        size=session.size,
        total_chunks=session.total_chunks,
        chunk_size=session.chunk_size,
        declared=session.declared,
        missing=missing,
        expires=session.expires,
    )
    return body, 201, {"Location": f"/v1/uploads/{session.id}"}


@bp.get("/uploads/<upload_id>")
@document_response(UploadStatus)
@document_response(Problem, 404)
async def upload_status(upload_id: str) -> UploadStatus:
    """State of an upload, and which chunk indices are still missing."""
    rt = runtime()
    session = await rt.run(rt.store.session, upload_id, caller().tenant)
    missing: list[int] = []
    if session.state == cas.SessionState.OPEN:
        missing = await rt.run(rt.store.missing, upload_id, caller().tenant)
    return UploadStatus(
        id=session.id,
        filename=session.filename,
        state=str(session.state),
        size=session.size,
        total_chunks=session.total_chunks,
        received_chunks=session.received_chunks,
        received_bytes=session.received_bytes,
        missing=missing,
        expires=session.expires,
        job_id=session.job_id,
        file_id=session.file_id if session.state == cas.SessionState.COMPLETED else None,
        reason=session.reason,
    )


_DIGEST_ITEM = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*")


def declared_blake3(header: str | None) -> str | None:
    """The BLAKE3 in a `Content-Digest: blake3=:<base64>:` header (RFC 9530 syntax)."""
    if not header:
        return None
    for item in header.split(","):
        match = _DIGEST_ITEM.fullmatch(item)
        if match is None:
            raise ApiError(400, "invalid_digest", f"malformed Content-Digest item {item.strip()!r}")
        if match.group(1).lower() == "blake3":
            try:
                raw = base64.b64decode(match.group(2), validate=True)
            except binascii.Error:
                raise ApiError(
                    400, "invalid_digest", "Content-Digest blake3 is not base64"
                ) from None
            if len(raw) != 32:
                raise ApiError(400, "invalid_digest", "Content-Digest blake3 must be 32 bytes")
            return raw.hex()
    return None


# `<index>` rather than `<int:index>`: quart-schema drops typed segments from
# the OpenAPI path, and a bad index deserves a problem response, not a 404.
@bp.put("/uploads/<upload_id>/chunks/<index>")
@document_headers(ChunkHeaders)
@document_response(ChunkStored)
@document_response(Problem, 400)
@document_response(Problem, 409)
@document_response(Problem, 422)
async def put_chunk(upload_id: str, index: str) -> ChunkStored:
    """Store chunk `index` from the raw request body.

    The server hashes the bytes itself; a body that does not match the
    declared hash (from the upload's chunk list or a `Content-Digest:
    blake3=:…:` header) is refused with 422 and not kept. Re-sending the same
    bytes is harmless.
    """
    ack = await runtime().ingest.receive_chunk(
        API,
        caller().tenant,
        upload_id,
        parse_count(index, "the chunk index"),
        request.body,
        content_length=request.content_length,
        claimed_hash=declared_blake3(request.headers.get("Content-Digest")),
    )
    return ChunkStored(ack.index, ack.hash, ack.size, ack.stored, ack.received_chunks)


@bp.put("/uploads/<upload_id>/chunks")
@document_querystring(ChunkRunQuery)
@document_response(ChunkRunStored)
@document_response(Problem, 400)
@document_response(Problem, 409)
@document_response(Problem, 422)
async def put_chunks(upload_id: str) -> ChunkRunStored:
    """Store `count` chunks from index `from`, sent back to back in one body.

    Each chunk is hashed as it arrives and checked against the length and
    hash the upload declared; all are durable and attached before the
    answer. A run that fails part-way (a chunk that fails its hash, a body
    cut short) keeps every whole chunk before the failure; the problem's
    `kept_chunks` lists them. Re-sending a run is harmless.
    """
    args = request.args
    first = parse_count(_required_arg(args.get("from"), "from"), "the query parameter 'from'")
    count = parse_count(args.get("count", "1"), "the query parameter 'count'")
    try:
        acks = await runtime().ingest.receive_chunks(
            API,
            caller().tenant,
            upload_id,
            first,
            count,
            request.body,
            content_length=request.content_length,
        )
    except cas.ClientError:
        # Refused part-way: the rest of the body is not wanted; close rather than read it.
        if isinstance(request.body, StreamingBody):
            request.body.abandon()
        raise
    stored = [ChunkStored(a.index, a.hash, a.size, a.stored, a.received_chunks) for a in acks]
    return ChunkRunStored(stored, acks[-1].received_chunks)


def _required_arg(value: str | None, name: str) -> str:
    if value is None:
        raise ApiError(400, "invalid_field", f"the query parameter {name!r} is required")
    return value


@bp.post("/uploads/<upload_id>/complete")
@document_response(CompletionAccepted, 202)
@document_response(Problem, 409)
async def complete_upload(upload_id: str) -> tuple[CompletionAccepted, int, dict[str, str]]:
    """Accept the upload for completion; follow the job for the outcome.

    Answers at once (202). Verification (hashes, declared sha256), the file
    record and processing happen in the job. Completing again returns the
    same job.
    """
    session, job = await runtime().ingest.complete(API, caller().tenant, upload_id)
    body = CompletionAccepted(job_id=job.id, upload_id=session.id, state=str(job.state))
    return body, 202, {"Location": f"/v1/jobs/{job.id}"}


@bp.delete("/uploads/<upload_id>")
@document_response(Problem, 409)
async def cancel_upload(upload_id: str) -> tuple[str, int]:
    """Cancel an upload; its chunks are released. An upload whose completion has
    begun but recorded no file yet is cancelled too (its job ends failed); one
    whose file is recorded cannot be (409): delete the file."""
    await runtime().ingest.cancel(API, caller().tenant, upload_id)
    return "", 204


# -- jobs ------------------------------------------------------------------


@bp.get("/jobs/<job_id>")
@validate_querystring(WaitQuery)
@document_querystring(WaitQuery)
@document_response(JobInfo)
@document_response(Problem, 404)
async def job_status(job_id: str, query_args: WaitQuery) -> JobInfo:
    """A job's state and results. `?wait=SECONDS` answers when it finishes (≤ 60 s)."""
    rt = runtime()
    job = await rt.jobs.wait(job_id, caller().tenant, min(query_args.wait, MAX_WAIT))
    return JobInfo(
        id=job.id,
        upload_id=job.session_id,
        file_id=job.file_id,
        state=str(job.state),
        error=job.error,
        results=job.results,
        verdict=job.verdict,
        timings=job.timings,
        created=job.created,
        updated=job.updated,
        reused_from=job.reused_from,
    )


# -- files -----------------------------------------------------------------


def file_info(
    file: cas.FileRecord,
    manifest: list[tuple[str, int]] | None = None,
    job_id: str | None = None,
) -> FileInfo:
    summary = None
    if manifest is not None:
        sizes = [n for _, n in manifest] or [0]
        summary = ChunkSummary(len(manifest), min(sizes), max(sizes))
    return FileInfo(
        id=file.id,
        filename=file.filename,
        size=file.size,
        blake3=file.blake3,
        sha256=file.sha256,
        created=file.created,
        metadata=file.metadata,
        upload_id=file.session_id,
        path=file.path,
        state=file.state,
        reason=file.reason,
        detection=file.detection,
        described=file.described,
        parents=file.parents,
        chunks=summary,
        job_id=job_id,
    )


def job_of(rt: Runtime, file: cas.FileRecord) -> str | None:
    """The id of the job that processed `file` (its upload's latest)."""
    try:
        return rt.store.session(file.session_id, file.tenant).job_id
    except cas.UnknownSession:
        return None


def matching_files(store: cas.Store, tenant: str, q: FilesQuery) -> list[cas.FileRecord]:
    """Up to `q.limit + 1` of the tenant's files matching `q`, in id order (the
    one past the limit says whether there is a next page)."""

    def wanted(f: cas.FileRecord) -> bool:
        return (
            f.filename.startswith(q.prefix)
            and (q.filename is None or f.filename == q.filename)
            and (q.state is None or f.state == q.state)
        )

    if q.blake3 is not None:
        # The content index holds only files whose content is kept (not rejected ones).
        found = []
        for file_id in sorted(i for i in store.files_by_blake3(q.blake3, tenant) if i > q.after):
            try:
                file = store.file(file_id, tenant)
            except cas.UnknownFile:  # deleted since the index was read
                continue
            if wanted(file):
                found.append(file)
                if len(found) > q.limit:
                    break
        return found
    prefix = q.filename if q.filename is not None and q.filename.startswith(q.prefix) else q.prefix
    out: list[cas.FileRecord] = []
    after = q.after
    while len(out) <= q.limit:
        page = store.list_files(tenant, prefix=prefix, after=after, limit=q.limit + 1)
        out += [f for f in page if wanted(f)]
        if len(page) <= q.limit:
            break
        after = page[-1].id
    return out[: q.limit + 1]


@bp.get("/files")
@validate_querystring(FilesQuery)
@document_querystring(FilesQuery)
@document_response(FileList)
async def list_files(query_args: FilesQuery) -> FileList:
    """Files in id order, paged (`next` is the `after` of the next page);
    optionally only those whose name starts with `prefix`, whose name is
    `filename`, whose content has this `blake3`, or in this `state`.
    `results=true` adds each file's job results (its findings)."""
    rt = runtime()
    q = query_args
    tenant = caller().tenant
    files = await rt.run(matching_files, rt.store, tenant, q)
    more = len(files) > q.limit
    files = files[: q.limit]
    infos = [file_info(f, job_id=job_of(rt, f)) for f in files]
    if q.results:
        jobs = await rt.run(job_results, rt.store, tenant, [i.job_id for i in infos])
        for info in infos:
            info.results = jobs.get(info.job_id) if info.job_id else None
    return FileList(infos, files[-1].id if more else None)


def job_results(store: cas.Store, tenant: str, job_ids: list[str | None]) -> dict[str, dict]:
    """The results of these jobs, by id (a job forgotten since is left out)."""
    found = {}
    for job_id in filter(None, job_ids):
        try:
            found[job_id] = store.jobs.get(job_id, tenant).results
        except cas.UnknownJob:
            pass
    return found


@bp.get("/files/<file_id>")
@document_response(FileInfo)
@document_response(Problem, 404)
async def describe_file(file_id: str) -> FileInfo:
    """A file's facts, metadata and a summary of its chunks."""
    rt = runtime()
    file = await rt.run(rt.store.file, file_id, caller().tenant)
    rejected = file.state == cas.FileState.REJECTED
    manifest = None if rejected else await rt.run(rt.store.manifest, file_id)
    return file_info(file, manifest, job_of(rt, file))


@bp.get("/files/<file_id>/content")
@document_response(Problem, 404)
@document_response(Problem, 416)
async def file_content(file_id: str) -> Response:
    """The file's bytes, streamed from its chunks. Supports `Range`, `ETag` and
    `If-None-Match`; the ETag is the file's BLAKE3."""
    rt = runtime()
    file = await rt.run(rt.store.file, file_id, caller().tenant)
    if file.state == cas.FileState.REJECTED:
        raise ApiError(410, "file_rejected", f"file {file_id} was rejected: {file.reason}")
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": content_disposition(file.filename),
    }
    return await serve_content(
        rt,
        lambda: rt.run(rt.store.open_file, file_id, caller().tenant),
        size=file.size,
        headers=headers,
        etag=f'"{file.blake3}"',
    )


@bp.delete("/files/<file_id>")
@document_response(Problem, 404)
async def delete_file(file_id: str) -> tuple[str, int]:
    """Delete a file. Its chunks are freed only once no other file or upload uses them."""
    rt = runtime()
    await rt.run(rt.store.delete_file, file_id, caller().tenant)
    return "", 204

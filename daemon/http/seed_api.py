"""The original REST API (`/api/upload/*`), with its request and response shapes.

Clients written against the original specification keep working unchanged:
fixed-size chunks sent as multipart form posts, status by upload id, and a
synchronous `complete` answering with the file's path and metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from ingestd import cas
from quart import Blueprint, request
from quart_schema import DataSource, document_request, document_response, validate_request

from ..core.ingest import NewUpload
from .auth import caller
from .errors import ApiError
from .fields import parse_count
from .filetypes import file_type
from .multipart import FormStream
from .problems import Problem
from .runtime import runtime
from .shapes import Sha256Hex

bp = Blueprint("seed", __name__, url_prefix="/api/upload")
# The API's name in metrics, logs and the upload policy.
API = "seed"


class InitRequest(msgspec.Struct):
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    totalSize: Annotated[int, msgspec.Meta(ge=0)]
    checksum: Sha256Hex | None = None


class InitResponse(msgspec.Struct):
    uploadId: str
    chunkSize: int


class ChunkForm(msgspec.Struct):
    uploadId: str
    chunkIndex: int
    totalChunks: int
    chunk: bytes


class ChunkResponse(msgspec.Struct):
    success: bool
    receivedChunks: int
    message: str


class StatusResponse(msgspec.Struct):
    uploadId: str
    totalChunks: int
    receivedChunks: list[int]
    isComplete: bool
    state: str
    # Why the upload was rejected (processing or checksum), when it was.
    reason: str | None = None


class CompleteMetadata(msgspec.Struct):
    uploadId: str
    filename: str
    size: int
    fileType: str
    timestamp: str


class CompleteResponse(msgspec.Struct):
    success: bool
    filepath: str
    metadata: CompleteMetadata
    downstreamJobId: str


@bp.post("/init")
@validate_request(InitRequest)
@document_response(InitResponse)
@document_response(Problem, 413)
async def init(data: InitRequest) -> InitResponse:
    """Start an upload; the answer says which chunk size to cut the file into."""
    opened = await runtime().ingest.open_upload(
        NewUpload(
            api=API,
            tenant=caller().tenant,
            filename=data.filename,
            size=data.totalSize,
            sha256=data.checksum,
        )
    )
    session = opened.session
    return InitResponse(uploadId=session.id, chunkSize=session.chunk_size)


def _int_field(fields: dict[str, str], name: str) -> int:
    return parse_count(fields[name], f"field {name!r}")


REQUIRED_FIELDS = frozenset({"uploadId", "chunkIndex", "totalChunks"})


async def _one(data: bytes | bytearray) -> AsyncIterator[bytes | bytearray]:
    """A body already read (the multipart part), as the core takes bodies."""
    yield data


@bp.post("/chunk")
@document_request(ChunkForm, source=DataSource.FORM_MULTIPART)
@document_response(ChunkResponse)
@document_response(Problem, 400)
@document_response(Problem, 409)
async def chunk() -> ChunkResponse:
    """Send one chunk (multipart: uploadId, chunkIndex, totalChunks, chunk).

    Chunks may arrive in any order and in parallel. Re-sending a chunk with
    the same bytes succeeds without rewriting anything; different bytes for
    an index already stored are refused with 409.
    """
    rt = runtime()
    form = FormStream(
        request.headers.get("Content-Type"),
        request.body,
        file_name="chunk",
        max_file_bytes=rt.config.limits.max_chunk_size,
    )
    fields = await form.read_fields()
    buffered: bytearray | None = None
    if not (form.file_seen and REQUIRED_FIELDS.issubset(fields)):
        # The chunk came before the fields that say where it goes (or not at all).
        buffered = await form.buffer_file()
        fields = form.fields
    missing = [n for n in ("uploadId", "chunkIndex", "totalChunks") if n not in fields]
    if not form.file_seen:
        missing.append("chunk")
    if missing:
        detail = f"missing form field(s): {', '.join(missing)}"
        if form.file_sent_as_field and not form.file_seen:
            detail += " ('chunk' must be a file part, with a filename, not a plain field)"
        raise ApiError(400, "missing_field", detail, missing=missing)
    upload_id = fields["uploadId"]
    if not upload_id:
        raise ApiError(400, "missing_field", "form field 'uploadId' is empty", missing=["uploadId"])
    index = _int_field(fields, "chunkIndex")
    total = _int_field(fields, "totalChunks")
    session = await rt.run(rt.store.session, upload_id, caller().tenant)
    if total != session.total_chunks:
        raise ApiError(
            400,
            "total_chunks_mismatch",
            f"totalChunks is {total}, but this upload has {session.total_chunks} chunks "
            f"of {session.chunk_size} bytes",
            expected=session.total_chunks,
        )
    if buffered is not None:
        ack = await rt.ingest.receive_chunk(
            API, caller().tenant, upload_id, index, _one(buffered), content_length=len(buffered)
        )
    else:
        # Streamed from the socket to the chunk's writer as it arrives; the
        # closing boundary is read after, as the rest of the body.
        try:
            ack = await rt.ingest.receive_chunk(
                API, caller().tenant, upload_id, index, form.file_data()
            )
        except cas.WrongChunkSize:
            await form.finish()  # a part over the size limit is a 413 first
            raise
        await form.finish()
    return ChunkResponse(
        success=True,
        receivedChunks=ack.received_chunks,
        message="Chunk uploaded successfully" if ack.stored else "Chunk already received",
    )


@bp.get("/status/<upload_id>")
@document_response(StatusResponse)
@document_response(Problem, 404)
async def status(upload_id: str) -> StatusResponse:
    """Which chunks the server holds, so that a client resends only the others."""
    rt = runtime()
    session = await rt.run(rt.store.session, upload_id, caller().tenant)
    if session.state in (cas.SessionState.PROCESSING, cas.SessionState.COMPLETED):
        received = list(range(session.total_chunks))
    else:
        received = sorted(await rt.run(rt.store.received, upload_id))
    return StatusResponse(
        uploadId=session.id,
        totalChunks=session.total_chunks,
        receivedChunks=received,
        # The upload is complete once the file is recorded; `state` tells
        # whether processing has accepted it yet.
        isComplete=session.state in (cas.SessionState.PROCESSING, cas.SessionState.COMPLETED),
        state=str(session.state),
        reason=session.reason,
    )


@bp.post("/complete/<upload_id>")
@document_response(CompleteResponse)
@document_response(Problem, 409)
@document_response(Problem, 422)
async def complete(upload_id: str) -> CompleteResponse:
    """Verify every chunk is present (and the checksum, if one was declared),
    record the file and queue its processing job."""
    rt = runtime()
    session = await rt.run(rt.store.session, upload_id, caller().tenant)
    kind = file_type(session.filename)
    done = await rt.ingest.complete_now(API, caller().tenant, upload_id, {"fileType": kind})
    file = done.file
    return CompleteResponse(
        success=True,
        filepath=file.path or f"/v1/files/{file.id}/content",
        metadata=CompleteMetadata(
            uploadId=session.id,
            filename=file.filename,
            size=file.size,
            fileType=str(file.metadata.get("fileType", kind)),
            timestamp=datetime.fromtimestamp(file.created, UTC).isoformat(),
        ),
        downstreamJobId=done.job.id,
    )

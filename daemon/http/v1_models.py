"""The request and answer bodies of `/v1` (their OpenAPI schemas), apart
from the routes that use them (`v1_api`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .shapes import HashHex, Sha256Hex


class Chunking(msgspec.Struct):
    fixed_size: int
    min_size: int
    avg_size: int
    max_size: int


class Info(msgspec.Struct):
    version: str
    chunking: Chunking
    max_file_size: int
    max_chunk_size: int


class ChunkSpec(msgspec.Struct):
    hash: HashHex
    size: Annotated[int, msgspec.Meta(ge=1)]


class CreateUpload(msgspec.Struct):
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Sha256Hex | None = None
    metadata: dict[str, Any] = {}
    chunks: list[ChunkSpec] | None = None


class UploadCreated(msgspec.Struct):
    id: str
    state: str
    size: int
    total_chunks: int
    chunk_size: int
    declared: bool
    missing: list[int]
    expires: float


class UploadStatus(msgspec.Struct):
    id: str
    filename: str
    state: str
    size: int
    total_chunks: int
    received_chunks: int
    received_bytes: int
    missing: list[int]
    expires: float
    job_id: str | None
    file_id: str | None
    reason: str | None


class ChunkStored(msgspec.Struct):
    index: int
    hash: str
    size: int
    stored: bool
    received_chunks: int


class ChunkRunQuery(msgspec.Struct):
    """Which chunks a body carries: `count` of them from index `from`."""

    from_: int = msgspec.field(name="from")
    count: int = 1


class ChunkRunStored(msgspec.Struct):
    """The chunks of one run body, each stored durably, in order."""

    chunks: list[ChunkStored]
    received_chunks: int


class CompletionAccepted(msgspec.Struct):
    job_id: str
    upload_id: str
    state: str


class JobInfo(msgspec.Struct):
    id: str
    upload_id: str
    file_id: str
    state: str
    error: str | None
    results: dict[str, Any]
    # "accepted" or "rejected" once processing has decided.
    verdict: str | None
    # Seconds each plugin spent per stage.
    timings: dict[str, dict[str, float]]
    created: float
    updated: float
    # The earlier job whose detect/validate/scan answers this one reused
    # (identical content, name and metadata, unchanged plugins), or null.
    reused_from: str | None = None


class WaitQuery(msgspec.Struct):
    wait: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class ChunkSummary(msgspec.Struct):
    count: int
    min_size: int
    max_size: int


class FileInfo(msgspec.Struct):
    id: str
    filename: str
    size: int
    blake3: str
    sha256: str | None
    created: float
    metadata: dict[str, Any]
    upload_id: str
    path: str | None
    # "processing", "accepted" or "rejected" (with `reason`).
    state: str
    reason: str | None
    # What processing found: detection, per-plugin descriptions, parents.
    detection: dict[str, Any] | None
    described: dict[str, Any]
    parents: list[str]
    chunks: ChunkSummary | None = None
    # The job that processed it (GET /v1/jobs/{id} has every plugin's results).
    job_id: str | None = None
    # That job's per-plugin results: in `GET /v1/files?results=true` only.
    results: dict[str, Any] | None = None


class FilesQuery(msgspec.Struct):
    prefix: str = ""
    after: str = ""
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    # Exact filters: a client asks "do I already have this name with this
    # content?" before it uploads. `blake3` goes through the content index.
    filename: str | None = None
    blake3: HashHex | None = None
    state: Literal["processing", "accepted", "rejected"] | None = None
    # Each file's job results too (what `GET /v1/jobs/{id}` gives as
    # `results`): a listing with its findings in one request.
    results: bool = False


class FileList(msgspec.Struct):
    files: list[FileInfo]
    next: str | None


class TenantLimits(msgspec.Struct):
    # null: no limit.
    max_bytes: int | None
    max_open_uploads: int | None
    max_file_size: int


class Usage(msgspec.Struct):
    tenant: str
    # Its files' sizes (what it uploaded) and their number.
    logical_bytes: int
    files: int
    # Each chunk its files and open uploads use, counted once (after dedup).
    physical_bytes: int
    chunks: int
    open_uploads: int
    # The declared sizes of its open uploads (counted against max_bytes).
    open_bytes: int
    limits: TenantLimits


class ChunkHeaders(msgspec.Struct):
    content_digest: str | None = None


# -- tokens (admin) --------------------------------------------------------


class TokenInfo(msgspec.Struct):
    id: str
    name: str
    tenant: str
    scopes: list[str]
    created: float
    expires: float | None
    last_used: float | None


class TokenList(msgspec.Struct):
    tokens: list[TokenInfo]


class CreateToken(msgspec.Struct):
    tenant: str
    scope: Literal["read", "write", "admin"] = "write"
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    # Seconds until it expires; null: never.
    expires_in: Annotated[float, msgspec.Meta(gt=0)] | None = None


class TokenCreated(msgspec.Struct):
    # Shown only in this answer; the daemon keeps its hash.
    token: str
    info: TokenInfo

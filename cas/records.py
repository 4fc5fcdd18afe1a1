"""Records kept in the LMDB index, encoded with msgspec (MessagePack).

Every record carries a tenant so that multi-tenant features need no
migration. Adding a field with a default is a compatible change; anything
else bumps `FORMAT_VERSION`.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import TypeVar

import msgspec

FORMAT_VERSION = 1
DEFAULT_TENANT = "default"


class SessionState(StrEnum):
    OPEN = "open"
    COMPLETING = "completing"
    PROCESSING = "processing"
    COMPLETED = "completed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class FileState(StrEnum):
    # The plugins have not decided yet.
    PROCESSING = "processing"
    ACCEPTED = "accepted"
    # Kept for the record; its content is released.
    REJECTED = "rejected"
    # fsck found chunks of it missing or corrupt: its bytes cannot be served
    # (a re-upload of the same content makes a new, whole file).
    DAMAGED = "damaged"


class OutboxState(StrEnum):
    PENDING = "pending"
    # Retries exhausted, or the plugin said it can never succeed.
    DEAD = "dead"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ChunkRecord(msgspec.Struct, frozen=True):
    size: int
    # Number of manifest entries (in live sessions and files) that use it.
    refs: int
    created: float
    # When refs last dropped to zero; garbage collection waits a grace period.
    released: float | None = None
    # fsck found its object missing or corrupt (and quarantined it): it is
    # never attached without its bytes, until they are sent again.
    missing: bool = False


class TenantUsage(msgspec.Struct, frozen=True):
    """What a tenant stores (see `tenants`)."""

    # Sizes of its live files (accepted or processing): what it uploaded.
    logical_bytes: int = 0
    files: int = 0
    # Each chunk its files and uploads use, counted once.
    physical_bytes: int = 0
    chunks: int = 0
    # Uploads in state open, and their declared sizes.
    open_uploads: int = 0
    open_bytes: int = 0


class TokenRecord(msgspec.Struct, frozen=True):
    """An API token. Only the SHA-256 of its secret is kept."""

    id: str
    name: str
    tenant: str
    scopes: list[str]
    secret_sha256: bytes
    created: float
    expires: float | None = None
    last_used: float | None = None


class Session(msgspec.Struct, frozen=True):
    id: str
    tenant: str
    filename: str
    size: int
    chunk_size: int
    total_chunks: int
    state: SessionState
    created: float
    updated: float
    expires: float
    # Kept by the parts ledger (`cas.parts`) in the transactions that change
    # the parts: counting them per acknowledged chunk would cost O(chunks).
    # For a stream, `received_bytes` is its offset.
    received_chunks: int = 0
    received_bytes: int = 0
    # True when the client declared the chunk list (variable-length chunks);
    # otherwise chunks are `chunk_size` bytes, the last one shorter.
    declared: bool = False
    sha256: str | None = None
    metadata: dict[str, object] = {}
    # Chosen when completion starts, so a retried completion reuses it.
    file_id: str | None = None
    job_id: str | None = None
    reason: str | None = None
    # True for a tus upload: its bytes arrive as one ordered stream (see
    # `Stream`), so the chunk-index APIs refuse to write into it.
    stream: bool = False


class FileRecord(msgspec.Struct, frozen=True):
    id: str
    tenant: str
    session_id: str
    filename: str
    size: int
    blake3: str
    chunk_count: int
    created: float
    sha256: str | None = None
    path: str | None = None
    # Client-declared metadata (and the original API's fileType).
    metadata: dict[str, object] = {}
    state: FileState = FileState.ACCEPTED
    reason: str | None = None
    # What processing found: per plugin, the describe output; the detection.
    described: dict[str, object] = {}
    detection: dict[str, object] | None = None
    # Ids of the files this one derives from.
    parents: list[str] = []


class OutboxEntry(msgspec.Struct, frozen=True):
    """A message a plugin queued for delivery; kept until delivered or given up."""

    id: str
    plugin: str
    payload: dict[str, object]
    created: float
    next_attempt: float
    attempt: int = 1
    last_error: str | None = None
    state: OutboxState = OutboxState.PENDING


class Job(msgspec.Struct, frozen=True):
    id: str
    tenant: str
    session_id: str
    file_id: str
    state: JobState
    created: float
    updated: float
    # Why the job failed, in words a client can act on.
    error: str | None = None
    # Per-plugin (or per-stage) results, keyed by name.
    results: dict[str, object] = {}
    # "accepted" or "rejected" once processing has decided.
    verdict: str | None = None
    # Seconds per plugin and stage.
    timings: dict[str, dict[str, float]] = {}
    # The plugins' decision this job made (see Plugins.decision_key), and the
    # earlier job whose deciding answers it reused instead of running them.
    decision_key: str | None = None
    reused_from: str | None = None


class Stream(msgspec.Struct, frozen=True):
    """The tus side of a session whose bytes arrive as one ordered stream.

    The stream is cut at absolute offsets into the session's `chunk_size`:
    part i holds bytes [i * chunk_size, (i + 1) * chunk_size). The bytes past
    the last full chunk (the tail, shorter than a chunk) are part
    `offset // chunk_size` like any other — refcounted, released by expiry
    and cancellation — and are replaced by a longer piece when more bytes
    arrive. The offset is what the parts hold (`Session.received_bytes`), so
    it only ever counts durable bytes. A final upload (concatenation) has no
    bytes of its own: once its partial uploads are all complete, its parts
    are theirs, in order.
    """

    id: str
    tenant: str
    # "single", "partial" or "final" (tus concatenation).
    kind: str
    # None while the client defers it (tus creation-defer-length).
    length: int | None = None
    # The Upload-Metadata header as the client sent it; HEAD echoes it.
    metadata_header: str | None = None
    # A final upload's partial uploads, in order, and whether its manifest
    # has been assembled from theirs.
    partials: list[str] = []
    assembled: bool = False
    # A partial upload's final uploads still waiting for it.
    finals: list[str] = []
    # Terminated by the client after it completed (its file was deleted).
    terminated: bool = False


# A manifest entry: raw 32-byte BLAKE3 then the chunk length, big-endian.
_ENTRY = struct.Struct(">32sQ")


def pack_entry(digest: str, length: int) -> bytes:
    return _ENTRY.pack(bytes.fromhex(digest), length)


def unpack_entry(raw: bytes) -> tuple[str, int]:
    digest, length = _ENTRY.unpack(raw)
    return digest.hex(), length


def pack_manifest(entries: list[tuple[str, int]]) -> bytes:
    return b"".join(pack_entry(d, n) for d, n in entries)


def unpack_manifest(raw: bytes) -> list[tuple[str, int]]:
    return [(d.hex(), n) for d, n in _ENTRY.iter_unpack(raw)]


_encoder = msgspec.msgpack.Encoder()


def encode(record: msgspec.Struct) -> bytes:
    return _encoder.encode(record)


T = TypeVar("T")

_decoders: dict[type, msgspec.msgpack.Decoder] = {}


def decode(kind: type[T], raw: bytes) -> T:
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    return dec.decode(raw)

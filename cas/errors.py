"""Errors raised by the store, typed by whose fault they are.

`ClientError` subclasses mean the caller asked for something the store
refuses (unknown session, conflicting bytes, …); each carries a stable `code`
that HTTP layers map to a status. `StorageError` means the store itself
failed (disk, index) and the caller did nothing wrong.
"""

from __future__ import annotations


class StoreError(Exception):
    code = "store_error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ClientError(StoreError):
    code = "bad_request"


class UnknownSession(ClientError):
    code = "unknown_upload"


class UnknownFile(ClientError):
    code = "unknown_file"


class UnknownJob(ClientError):
    code = "unknown_job"


class ChunkOutOfRange(ClientError):
    code = "chunk_index_out_of_range"


class WrongChunkSize(ClientError):
    code = "wrong_chunk_size"


class ChunkConflict(ClientError):
    """Different bytes were sent for an index that already holds a chunk."""

    code = "chunk_conflict"


class SessionNotOpen(ClientError):
    """The session is completing, completed, rejected, cancelled or expired."""

    code = "upload_not_open"


class IncompleteUpload(ClientError):
    code = "chunks_missing"


class ChecksumMismatch(ClientError):
    code = "checksum_mismatch"


class ChunkHashMismatch(ChecksumMismatch):
    """A chunk's bytes do not hash to the BLAKE3 the client declared for it."""

    code = "chunk_hash_mismatch"


class InvalidLayout(ClientError):
    """A declared chunk list does not fit the upload (sizes, bounds, hashes)."""

    code = "invalid_chunk_list"


class TooLarge(ClientError):
    code = "too_large"


class StorageError(StoreError):
    code = "storage_error"


class CorruptObject(StorageError):
    code = "corrupt_object"


class DamagedFile(StorageError):
    """fsck found chunks of the file missing or corrupt; its bytes cannot be served."""

    code = "file_damaged"


class ObjectVanished(StorageError):
    """A chunk was collected just as it was attached again: retrying succeeds."""

    code = "try_again"


class IndexUnavailable(StorageError):
    """The index's database cannot be reached (PostgreSQL down or restarting):
    nothing was acknowledged; retrying later succeeds."""

    code = "index_unavailable"


class NotAStream(UnknownSession):
    """The session exists but was not created as a stream (another API's upload)."""

    code = "unknown_upload"


class OffsetMismatch(ClientError):
    """A stream's offset is not the one the write expected (it moved on)."""

    code = "offset_mismatch"


class InvalidLength(ClientError):
    code = "invalid_length"


class InvalidConcat(ClientError):
    """A final upload names something that is not a usable partial upload."""

    code = "invalid_concat"


class QuotaExceeded(ClientError):
    """The tenant's stored and reserved bytes would pass its limit."""

    code = "quota_exceeded"


class TooManyOpenUploads(ClientError):
    """The tenant has as many open uploads as its limit allows."""

    code = "too_many_open_uploads"

"""Refusals of the upload core, typed by whose fault they are.

Like the store's errors (`ingestd.cas.ClientError`, `StorageError`), each
carries a stable `code`, words for people (`detail`) and facts (`extra`);
none knows HTTP. `ingestd.daemon.http.problems` has the one table that turns
them (and the store's) into statuses and problem answers.
"""

from __future__ import annotations

from ingestd import cas

__all__ = [
    "BodyStalled",
    "BodyTimeout",
    "FileTooLarge",
    "InvalidFilename",
    "InvalidMetadata",
    "LengthExceeded",
    "MetadataTooLarge",
    "NoRoomInReserve",
    "PolicyRefusal",
    "PolicyUnavailable",
    "StreamChecksumMismatch",
    "StreamCut",
    "StreamOverQuota",
    "UploadLocked",
]


# -- the client's ------------------------------------------------------------


class FileTooLarge(cas.TooLarge):
    """The upload's size is over the tenant's (or the server's) file-size limit."""

    code = "file_too_large"


class InvalidFilename(cas.ClientError):
    """A name that cannot be stored as sent (a NUL, a lone surrogate)."""

    code = "invalid_filename"


class InvalidMetadata(cas.ClientError):
    code = "invalid_metadata"


class MetadataTooLarge(cas.TooLarge):
    code = "metadata_too_large"


class PolicyRefusal(cas.ClientError):
    """A plugin's upload policy refused the upload, with its own code and status."""

    def __init__(self, detail: str, *, code: str, status: int) -> None:
        super().__init__(detail)
        self.code = code
        # A plugin chooses the 4xx status of its refusal (`Refusal.status`).
        self.status = status


class UploadLocked(cas.ClientError):
    """Another request is writing to this upload (a conflict, as a store refusal is)."""

    code = "upload_locked"


class BodyTimeout(cas.ClientError):
    """A chunk's body did not arrive in the time its length allows; nothing kept."""

    code = "body_timeout"


class StreamCut(Exception):
    """Mixed into the stream refusals after which the rest of the body is not
    wanted: the HTTP layer closes the connection instead of reading on."""


class BodyStalled(StreamCut, BodyTimeout):
    """No byte of a stream body arrived for a while; what came is kept (no checksum)."""


class LengthExceeded(StreamCut, cas.TooLarge):
    """A stream body went past the upload's length (or the largest upload)."""

    code = "length_exceeded"


class StreamOverQuota(StreamCut, cas.QuotaExceeded):
    """A stream of unknown length went past what the tenant's byte quota leaves."""


class StreamChecksumMismatch(cas.ChecksumMismatch):
    """A stream body does not match its checksum; none of it was kept."""


# -- not the client's ----------------------------------------------------------


class NoRoomInReserve(cas.StorageError):
    """The upload would leave less free disk than `storage.reserve`."""

    code = "storage_reserve"


class PolicyUnavailable(cas.StoreError):
    """The upload policy could not be asked (a plugin failed or timed out)."""

    code = "policy_unavailable"

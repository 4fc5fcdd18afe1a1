"""The tus 1.0.0 protocol rules, without HTTP or I/O (sans-IO).

The Quart handlers in `tus_api` give these functions header values and the
upload's state, and get back decisions (what to create, where a PATCH writes,
how much it may write) or an `ApiError` with the status the protocol dictates.
Nothing here reads a request, touches the store or knows the clock, so the
rules are unit-tested on their own (tests/http/test_tus_protocol.py).

Decisions made where the specification leaves room:

- Extensions: creation, creation-with-upload, creation-defer-length,
  termination, checksum, expiration, concatenation and
  concatenation-unfinished. Not checksum-trailer: hypercorn drops request
  trailers (h11's end-of-message headers never reach ASGI, which has no
  request-trailer event), so a trailing checksum could not be read.
- Errors are problem+json with a stable `code`; the status is the one tus
  dictates where it dictates one (400 bad headers, 403 PATCH on a final
  upload, 404 unknown, 409 offset mismatch, 410 expired or terminated, 412
  version, 413 too large, 415 content type, 460 checksum mismatch).
- `Tus-Resumable` is required on every request but OPTIONS and GET (a GET
  downloads a completed upload; browsers cannot add headers to a link).
- `Upload-Metadata`: base64 values may omit their padding; a key without a
  value (or with an empty one) maps to b"". Values that are UTF-8 text
  become strings in the file record's metadata, others stay bytes.
- A PATCH whose Content-Length already goes past the length (or the maximum
  size, for a deferred length) is refused with 413 before any byte is read.
  A body without Content-Length that goes past it keeps the bytes up to the
  limit (as a cut-off request would) and is answered 413.
- An upload that has all its bytes accepts an empty PATCH at its length
  (204, a harmless retry); any byte more is 413.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import blake3

from .errors import ApiError
from .fields import parse_count

TUS_VERSION = "1.0.0"
SUPPORTED_VERSIONS = (TUS_VERSION,)
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
    "concatenation",
    "concatenation-unfinished",
)
OFFSET_OCTET_STREAM = "application/offset+octet-stream"

# Upload-Checksum algorithms: name -> hasher factory (hashlib-style objects).
CHECKSUM_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "md5": hashlib.md5,
    "blake3": blake3.blake3,
}

SINGLE, PARTIAL, FINAL = "single", "partial", "final"

# Upload ids are 128-bit lowercase hex (cas.sessions.new_id).
_ID = re.compile(r"[0-9a-f]{32}")
# Upload-Metadata keys: no spaces or commas (by construction), nothing invisible.
_KEY = re.compile(r"[!-~\x80-\xff]+")
MAX_FILENAME = 4096


# -- versions, methods, options -----------------------------------------------


def check_version(method: str, tus_resumable: str | None) -> None:
    """412 (with Tus-Version) unless the client speaks a version this server does."""
    if method in ("OPTIONS", "GET"):
        return
    if tus_resumable is None or tus_resumable.strip() not in SUPPORTED_VERSIONS:
        said = "no Tus-Resumable header" if tus_resumable is None else repr(tus_resumable)
        raise ApiError(
            412,
            "unsupported_version",
            f"this server speaks tus {', '.join(SUPPORTED_VERSIONS)}; the request has {said}",
            headers={"Tus-Version": ",".join(SUPPORTED_VERSIONS)},
        )


def effective_method(method: str, override: str | None) -> str:
    """X-HTTP-Method-Override replaces the method of a POST (for clients that
    can send only GET and POST). Other methods are what they say: an open
    `OPTIONS` must not turn into a `HEAD` or `DELETE` that skipped the token check."""
    method = method.upper()
    if method != "POST" or override is None or not override.strip():
        return method
    return override.strip().upper()


def options_headers(max_size: int) -> dict[str, str]:
    return {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": ",".join(SUPPORTED_VERSIONS),
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }


def expires_header(timestamp: float) -> str:
    """RFC 7231 IMF-fixdate, e.g. "Wed, 25 Jun 2014 16:00:00 GMT"."""
    return formatdate(timestamp, usegmt=True)


# -- header values ------------------------------------------------------------


def parse_uint(name: str, value: str) -> int:
    """A non-negative decimal integer, digits only (no sign, no spaces inside)."""
    return parse_count(value.strip(), name, code="invalid_header")


def parse_metadata(header: str | None) -> dict[str, bytes]:
    """Upload-Metadata: comma-separated "key base64value" pairs; values may be
    absent. Returns the decoded values as bytes (binary values stay binary)."""
    if header is None or not header.strip():
        return {}
    out: dict[str, bytes] = {}
    for item in header.split(","):
        pair = item.strip()
        if not pair:
            raise ApiError(400, "invalid_metadata", "Upload-Metadata has an empty pair")
        key, _, value = pair.partition(" ")
        value = value.strip()
        if not _KEY.fullmatch(key):
            raise ApiError(400, "invalid_metadata", f"Upload-Metadata key {key!r} is invalid")
        if key in out:
            raise ApiError(400, "invalid_metadata", f"Upload-Metadata repeats the key {key!r}")
        out[key] = _base64(key, value)
    return out


def _base64(key: str, value: str) -> bytes:
    if " " in value:
        raise ApiError(400, "invalid_metadata", f"Upload-Metadata value of {key!r} has spaces")
    try:
        # Padding is often dropped by hand-written clients; nothing is lost.
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, "invalid_metadata", f"Upload-Metadata value of {key!r} is not base64"
        ) from None


def file_metadata(metadata: Mapping[str, bytes]) -> tuple[str | None, dict[str, object]]:
    """(filename, metadata for the file record) from parsed Upload-Metadata.

    The filename is `filename` (tus-js-client, tuspy) or else `name` (Uppy).
    Values that are UTF-8 text become str, the others stay bytes.
    """
    record: dict[str, object] = {}
    for key, value in metadata.items():
        try:
            record[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            record[key] = value
    filename = next(
        (v for k in ("filename", "name") if isinstance(v := record.get(k), str) and v), None
    )
    if filename is not None and len(filename) > MAX_FILENAME:
        # (What a name may hold is the upload core's to check, for every API.)
        raise ApiError(
            400, "invalid_filename", f"the filename is longer than {MAX_FILENAME} characters"
        )
    return filename, record


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


def media_type(metadata: Mapping[str, object]) -> str | None:
    """The declared `filetype` (or Uppy's `type`) if it is a plain media type."""
    for key in ("filetype", "type"):
        value = metadata.get(key)
        if isinstance(value, str) and _MEDIA_TYPE.fullmatch(value):
            return value
    return None


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes

    def hasher(self) -> Any:
        return CHECKSUM_ALGORITHMS[self.algorithm]()

    def matches(self, hasher: Any) -> bool:
        return hasher.digest() == self.digest


def parse_checksum(header: str | None) -> Checksum | None:
    """Upload-Checksum: "<algorithm> <base64 digest>"."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ApiError(
            400,
            "unsupported_checksum_algorithm",
            f"checksum algorithm {algorithm!r} is not one of {', '.join(CHECKSUM_ALGORITHMS)}",
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_checksum", "Upload-Checksum digest is not base64") from None
    expected = CHECKSUM_ALGORITHMS[algorithm]().digest_size
    if len(digest) != expected:
        raise ApiError(
            400,
            "invalid_checksum",
            f"a {algorithm} digest is {expected} bytes, Upload-Checksum has {len(digest)}",
        )
    return Checksum(algorithm, digest)


@dataclass(frozen=True)
class Concat:
    kind: str  # PARTIAL or FINAL
    # A final upload's partial upload ids, in order.
    partials: tuple[str, ...] = ()


def upload_id_from_url(url: str, prefix: str) -> str | None:
    """The upload id in an absolute or relative upload URL under `prefix`."""
    path = urlsplit(url).path
    if not path.startswith(prefix):
        return None
    upload_id = path[len(prefix) :]
    return upload_id if _ID.fullmatch(upload_id) else None


def parse_concat(header: str | None, prefix: str) -> Concat | None:
    """Upload-Concat: "partial", or "final;<url> <url> ..." (absolute or relative URLs)."""
    if header is None:
        return None
    value = header.strip()
    if value == "partial":
        return Concat(PARTIAL)
    kind, sep, urls = value.partition(";")
    if kind.strip() != "final" or not sep:
        raise ApiError(400, "invalid_concat", f"Upload-Concat {header!r} is not partial or final")
    ids = []
    for url in urls.split():
        upload_id = upload_id_from_url(url, prefix)
        if upload_id is None:
            raise ApiError(400, "invalid_concat", f"{url!r} is not an upload URL of this server")
        ids.append(upload_id)
    if not ids:
        raise ApiError(400, "invalid_concat", "Upload-Concat: final lists no partial uploads")
    return Concat(FINAL, tuple(ids))


def concat_header(kind: str, partials: Iterable[str], prefix: str) -> str | None:
    if kind == PARTIAL:
        return "partial"
    if kind == FINAL:
        return "final;" + " ".join(prefix + p for p in partials)
    return None


def is_offset_stream(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == OFFSET_OCTET_STREAM


# -- creation -----------------------------------------------------------------


@dataclass(frozen=True)
class Creation:
    """What a POST to the creation URL asks for."""

    kind: str  # SINGLE, PARTIAL or FINAL
    # None: deferred (creation-defer-length), or a final upload's (from its partials).
    length: int | None
    partials: tuple[str, ...]
    metadata: dict[str, bytes]
    # The header as sent, for HEAD to echo.
    metadata_header: str | None
    # creation-with-upload: the body holds the first bytes.
    with_upload: bool
    checksum: Checksum | None = None


def plan_creation(
    *,
    upload_length: str | None,
    defer_length: str | None,
    upload_metadata: str | None,
    upload_concat: str | None,
    content_type: str | None,
    content_length: int | None,
    upload_checksum: str | None,
    max_size: int,
    prefix: str,
    chunked: bool = False,
) -> Creation:
    """`chunked`: the body has no Content-Length (Transfer-Encoding: chunked)."""
    concat = parse_concat(upload_concat, prefix)
    metadata = parse_metadata(upload_metadata)
    with_upload = is_offset_stream(content_type)
    has_body = bool(content_length) or chunked
    if not with_upload and has_body:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"a creation request with a body must be {OFFSET_OCTET_STREAM}",
        )
    if defer_length is not None and defer_length.strip() != "1":
        raise ApiError(400, "invalid_header", "Upload-Defer-Length must be 1")
    if concat is not None and concat.kind == FINAL:
        if upload_length is not None or defer_length is not None:
            raise ApiError(
                400,
                "invalid_header",
                "a final upload takes its length from its partial uploads; "
                "send no Upload-Length or Upload-Defer-Length",
            )
        if with_upload and has_body:
            raise ApiError(403, "final_upload", "a final upload cannot take bytes of its own")
        return Creation(FINAL, None, concat.partials, metadata, upload_metadata, False)
    if upload_length is not None and defer_length is not None:
        raise ApiError(400, "invalid_header", "send Upload-Length or Upload-Defer-Length, not both")
    if upload_length is None and defer_length is None:
        raise ApiError(
            400, "missing_header", "Upload-Length (or Upload-Defer-Length: 1) is required"
        )
    length = None if upload_length is None else parse_uint("Upload-Length", upload_length)
    if length is not None and length > max_size:
        raise too_large(length, max_size)
    if with_upload and content_length is not None:
        check_room(0, length, content_length, max_size)
    kind = concat.kind if concat is not None else SINGLE
    checksum = parse_checksum(upload_checksum) if with_upload else None
    return Creation(kind, length, (), metadata, upload_metadata, with_upload, checksum)


def too_large(size: int, max_size: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"{size} bytes exceed the largest upload this server accepts ({max_size} bytes)",
        limit=max_size,
    )


def check_room(offset: int, length: int | None, content_length: int, max_size: int) -> None:
    """413 if `content_length` bytes at `offset` go past the length (or the maximum)."""
    end = offset + content_length
    if length is not None and end > length:
        raise ApiError(
            413,
            "length_exceeded",
            f"{content_length} bytes at offset {offset} go past the upload's length of {length}",
            length=length,
        )
    if end > max_size:
        raise too_large(end, max_size)


# -- an upload's state --------------------------------------------------------


@dataclass(frozen=True)
class UploadView:
    """What the protocol needs to know of an upload (built from the store's records)."""

    id: str
    kind: str
    # The session's state: open, completing, processing, completed, rejected,
    # cancelled or expired.
    state: str
    offset: int
    length: int | None
    expires: float
    metadata_header: str | None = None
    partials: tuple[str, ...] = ()
    # A final upload: whether its partials' manifests have been joined.
    assembled: bool = False
    terminated: bool = False
    file_id: str | None = None
    job_id: str | None = None
    reason: str | None = None

    @property
    def complete(self) -> bool:
        """All bytes are there (a final upload: once assembled)."""
        if self.kind == FINAL:
            return self.assembled
        return self.length is not None and self.offset == self.length


def check_available(view: UploadView, now: float) -> None:
    """410 for an upload that was terminated or has expired."""
    if view.terminated or view.state == "cancelled":
        reason = f": {view.reason}" if view.reason and not view.terminated else ""
        raise ApiError(410, "upload_terminated", f"upload {view.id} was terminated{reason}")
    if view.state == "expired" or (view.state == "open" and now >= view.expires):
        raise ApiError(410, "upload_expired", f"upload {view.id} has expired")


def upload_headers(view: UploadView, prefix: str) -> dict[str, str]:
    """The headers HEAD answers with (and the state headers other answers share)."""
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    # A final upload reports an offset only once it is assembled.
    if view.kind != FINAL or view.assembled:
        headers["Upload-Offset"] = str(view.offset)
    if view.length is not None:
        headers["Upload-Length"] = str(view.length)
    elif view.kind != FINAL:
        headers["Upload-Defer-Length"] = "1"
    if view.metadata_header:
        headers["Upload-Metadata"] = view.metadata_header
    concat = concat_header(view.kind, view.partials, prefix)
    if concat is not None:
        headers["Upload-Concat"] = concat
    headers.update(state_headers(view))
    return headers


def state_headers(view: UploadView) -> dict[str, str]:
    """Expiry while open, and ingestd's own facts: state, file and job ids."""
    headers = {"Ingestd-Upload-State": view.state}
    if view.state == "open":
        headers["Upload-Expires"] = expires_header(view.expires)
    if view.file_id and view.state != "open":
        headers["Ingestd-File-Id"] = view.file_id
    if view.job_id:
        headers["Ingestd-Job-Id"] = view.job_id
    return headers


# -- PATCH --------------------------------------------------------------------


@dataclass(frozen=True)
class PatchPlan:
    """Where a PATCH writes and how much it may write."""

    offset: int
    # A deferred length the PATCH declares (Upload-Length), to record first.
    declare_length: int | None
    # The most bytes the body may hold.
    limit: int
    checksum: Checksum | None = None
    # Nothing to write: an empty PATCH at the end of a complete upload.
    noop: bool = False


def plan_patch(
    view: UploadView,
    *,
    content_type: str | None,
    upload_offset: str | None,
    upload_length: str | None,
    upload_checksum: str | None,
    content_length: int | None,
    now: float,
    max_size: int,
) -> PatchPlan:
    """Check a PATCH against the upload; the order follows the specification:
    final uploads refuse PATCH (403), then availability (410), content type
    (415), header syntax (400), the offset (409), the length (400/413)."""
    if view.kind == FINAL:
        raise ApiError(
            403,
            "final_upload",
            f"upload {view.id} is a final upload; send bytes to its partial uploads",
        )
    check_available(view, now)
    if not is_offset_stream(content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"PATCH bodies must be {OFFSET_OCTET_STREAM}, not {content_type or 'untyped'}",
        )
    if upload_offset is None:
        raise ApiError(400, "missing_header", "Upload-Offset is required")
    offset = parse_uint("Upload-Offset", upload_offset)
    declared = None if upload_length is None else parse_uint("Upload-Length", upload_length)
    checksum = parse_checksum(upload_checksum)
    if offset != view.offset:
        raise ApiError(
            409,
            "offset_mismatch",
            f"Upload-Offset is {offset}, but the upload is at {view.offset}",
            offset=view.offset,
        )
    length = view.length
    declare = None
    if declared is not None and declared != length:
        if length is not None:
            raise ApiError(
                400,
                "invalid_length",
                f"the upload's length is {length}; it cannot change",
                length=length,
            )
        if declared < offset:
            raise ApiError(400, "invalid_length", f"length {declared} is below the offset")
        if declared > max_size:
            raise too_large(declared, max_size)
        length = declare = declared
    if content_length is not None:
        check_room(offset, length, content_length, max_size)
    limit = (length if length is not None else max_size) - offset
    if view.state != "open":
        # Complete already (completing, processing, completed or rejected): an
        # empty PATCH at its length is a harmless retry.
        return PatchPlan(offset, None, 0, checksum, noop=True)
    return PatchPlan(offset, declare, limit, checksum)

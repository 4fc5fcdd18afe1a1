"""RFC 9457 problem responses, and the one table from errors to HTTP statuses."""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import lmdb
import msgspec
import trio
from ingestd import cas
from quart import Quart, Response, request
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from ..core import errors
from .errors import ApiError

log = logging.getLogger("ingestd")

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


_CLOSE = {"Connection": "close"}

# The HTTP answer to each refusal of the store (`ingestd.cas`) and of the
# upload core (`core.errors`): the entry of the most specific class wins.
ANSWERS: dict[type[cas.StoreError], Answer] = {
    # The client's.
    cas.ClientError: Answer(400),
    cas.UnknownSession: Answer(404),
    cas.UnknownFile: Answer(404),
    cas.UnknownJob: Answer(404),
    cas.InvalidLayout: Answer(400),
    cas.ChunkOutOfRange: Answer(400),
    cas.WrongChunkSize: Answer(400),
    cas.ChunkConflict: Answer(409),
    cas.OffsetMismatch: Answer(409),
    cas.InvalidLength: Answer(400),
    cas.InvalidConcat: Answer(400),
    cas.SessionNotOpen: Answer(409),
    cas.IncompleteUpload: Answer(409),
    cas.ChecksumMismatch: Answer(422),
    cas.TooLarge: Answer(413),
    cas.QuotaExceeded: Answer(507),
    cas.TooManyOpenUploads: Answer(429),
    errors.FileTooLarge: Answer(413),
    errors.InvalidFilename: Answer(400),
    errors.InvalidMetadata: Answer(400),
    errors.MetadataTooLarge: Answer(413),
    errors.PolicyRefusal: Answer(403),  # the plugin's own status, see `refusal`
    errors.UploadLocked: Answer(409),
    errors.BodyTimeout: Answer(408, _CLOSE),
    # After these the rest of a stream body is not read: the connection closes.
    errors.LengthExceeded: Answer(413, _CLOSE),
    errors.StreamOverQuota: Answer(507, _CLOSE),
    errors.StreamChecksumMismatch: Answer(460),  # tus's Checksum Mismatch
    # Not the client's.
    cas.StorageError: Answer(500),
    cas.DamagedFile: Answer(409),  # known damage (fsck found it), never wrong bytes
    cas.ObjectVanished: Answer(503, {"Retry-After": "1"}),
    cas.IndexUnavailable: Answer(503, {"Retry-After": "5"}),
    errors.NoRoomInReserve: Answer(507, {"Retry-After": "60"}),
    errors.PolicyUnavailable: Answer(503),
}

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def storage_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a full disk, quota or LMDB map."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if isinstance(exc, lmdb.MapFullError):
            return True
        if isinstance(exc, lmdb.Error) and "No space left" in str(exc):
            return True
        exc = exc.__cause__
    return False


def storage_full_error() -> ApiError:
    return ApiError(
        507,
        "storage_full",
        "the server's storage is full; what was acknowledged before is kept: "
        "send the rest again once space is freed",
        headers={"Retry-After": "60"},
    )


def refusal(exc: cas.StoreError) -> ApiError:
    """The HTTP refusal for an error of the store or the upload core."""
    if isinstance(exc, cas.StorageError) and storage_full(exc):
        return storage_full_error()
    found = next(ANSWERS[c] for c in type(exc).__mro__ if c in ANSWERS)
    status = exc.status if isinstance(exc, errors.PolicyRefusal) else found.status
    return ApiError(status, exc.code, exc.detail, headers=found.headers, **exc.extra)


class Problem(msgspec.Struct):
    """The body of every error answer (for the OpenAPI document)."""

    type: str
    title: str
    status: int
    code: str
    detail: str


# Statuses outside the HTTP registry that ingestd answers (tus's checksum).
EXTRA_TITLES = {460: "Checksum Mismatch"}


def problem(status: int, code: str, detail: str, **extra: object) -> Response:
    body = {
        "type": f"https://ingestd.dev/problems/{code}",
        "title": EXTRA_TITLES.get(status) or HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return Response(json.dumps(body), status=status, content_type=PROBLEM_JSON)


def api_error_response(exc: ApiError) -> Response:
    response = problem(exc.status, exc.code, exc.detail, **exc.extra)
    response.headers.update(exc.headers)
    return response


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_")


# How long an error answer waits for the rest of the request body.
_SETTLE_SECONDS = 10.0


async def settle_request_body(response: Response) -> Response:
    """Let an answer given before the request's body arrived leave the
    connection usable.

    When a handler answers without reading the body (an error, or a method
    such as GET or HEAD that takes none), hypercorn leaves the connection
    stuck: the client's next request on it is never answered. Wait (briefly)
    for the body to arrive and drop it; if it is too large or too slow,
    close the connection instead. A body the handler read is already
    complete: nothing is waited for.
    """
    if not _has_body():
        return response
    if response.headers.get("Connection", "").lower() == "close":
        return response  # the connection ends with this answer: no body to wait for
    try:
        with trio.move_on_after(_SETTLE_SECONDS) as scope:
            await request.body
        if scope.cancelled_caught:
            response.headers["Connection"] = "close"
    except HTTPException:  # over the size limit: not worth reading
        response.headers["Connection"] = "close"
    return response


def _has_body() -> bool:
    if "Transfer-Encoding" in request.headers:
        return True
    length = request.headers.get("Content-Length", "")
    return length.strip() not in ("", "0")


def register(app: Quart) -> None:
    app.after_request(settle_request_body)

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return api_error_response(exc)

    @app.errorhandler(cas.StoreError)
    async def _store_error(exc: cas.StoreError) -> Response:
        error = refusal(exc)
        if error.status == 500:  # the store failed, for no reason the table knows
            log.error("storage error: %s", exc.detail)
        return api_error_response(error)

    @app.errorhandler(OSError)
    async def _os_error(exc: OSError) -> Response:
        if storage_full(exc):
            return api_error_response(storage_full_error())
        log.exception("unexpected OS error")
        return problem(500, "internal_error", "the server failed; see its log")

    @app.errorhandler(RequestSchemaValidationError)
    async def _invalid_request(exc: RequestSchemaValidationError) -> Response:
        return problem(
            400, "invalid_request", f"the request body is invalid: {exc.validation_error}"
        )

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or exc.name
        if status == 413:
            return problem(413, "too_large", "the request body is larger than this server accepts")
        response = problem(status, _http_code(exc), detail)
        # werkzeug's own headers, e.g. 405's Allow (RFC 9110 requires it).
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

"""RFC 9457 problem responses, and the mapping from errors to HTTP statuses."""

from __future__ import annotations

import errno
import json
import logging

import lmdb
import msgspec
import trio
from ingestd import cas
from quart import Quart, Response, request
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from .errors import ApiError

log = logging.getLogger("ingestd")

PROBLEM_JSON = "application/problem+json"

# Status for each store error a client can cause.
CLIENT_STATUS: dict[type[cas.ClientError], int] = {
    cas.UnknownSession: 404,
    cas.UnknownFile: 404,
    cas.UnknownJob: 404,
    cas.InvalidLayout: 400,
    cas.ChunkOutOfRange: 400,
    cas.WrongChunkSize: 400,
    cas.ChunkConflict: 409,
    cas.OffsetMismatch: 409,
    cas.InvalidLength: 400,
    cas.InvalidConcat: 400,
    cas.SessionNotOpen: 409,
    cas.IncompleteUpload: 409,
    cas.ChecksumMismatch: 422,
    cas.TooLarge: 413,
    cas.QuotaExceeded: 507,
    cas.TooManyOpenUploads: 429,
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


def full_problem() -> Response:
    response = problem(
        507,
        "storage_full",
        "the server's storage is full; what was acknowledged before is kept: "
        "send the rest again once space is freed",
    )
    response.headers["Retry-After"] = "60"
    return response


def client_status(exc: cas.ClientError) -> int:
    return next((s for t, s in CLIENT_STATUS.items() if isinstance(exc, t)), 400)


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

    @app.errorhandler(cas.ClientError)
    async def _client_error(exc: cas.ClientError) -> Response:
        return problem(client_status(exc), exc.code, exc.detail, **exc.extra)

    @app.errorhandler(cas.StorageError)
    async def _storage_error(exc: cas.StorageError) -> Response:
        if storage_full(exc):
            return full_problem()
        if isinstance(exc, cas.DamagedFile):
            # Known damage (fsck found it): said as such, never wrong bytes.
            return problem(409, exc.code, exc.detail, **exc.extra)
        if isinstance(exc, cas.ObjectVanished):
            response = problem(503, exc.code, exc.detail)
            response.headers["Retry-After"] = "1"
            return response
        log.error("storage error: %s", exc.detail)
        return problem(500, exc.code, exc.detail)

    @app.errorhandler(OSError)
    async def _os_error(exc: OSError) -> Response:
        if storage_full(exc):
            return full_problem()
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

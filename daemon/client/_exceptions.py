"""The errors the client raises, and how they are made from the server's
answers and from transport failures."""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx

from ._models import UploadResult


class IngestdError(Exception):
    """Base of the errors this client raises."""


class ProblemError(IngestdError):
    """The server answered with an error (an `application/problem+json` body if it had one)."""

    def __init__(
        self, status: int, code: str, detail: str, request: str = "", body: Any = None
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.request = request
        self.body = body
        where = f"{request}: " if request else ""
        super().__init__(f"{where}HTTP {status} {code}: {detail}")


class ConnectionFailed(IngestdError):
    """The server could not be reached (connection refused or reset, timeout)."""


class CertificateError(IngestdError):
    """The server's TLS certificate is not trusted (pass `verify=` a CA bundle,
    or `--cacert`). Not retried: waiting does not change it."""


class UploadError(IngestdError):
    """An upload did not finish. If `resumable`, running it again sends only what is missing."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str],
        upload_id: str | None = None,
        resumable: bool = False,
        code: str | None = None,
    ) -> None:
        self.path = str(path)
        self.upload_id = upload_id
        self.resumable = resumable
        self.code = code
        if resumable and upload_id:
            message += (
                f"; upload {upload_id} is resumable: run the same command again to send"
                " only the missing chunks"
            )
        elif resumable:
            message += "; nothing was sent yet: run the same command again to retry"
        super().__init__(message)


class Rejected(UploadError):
    """The file arrived, and the server's plugins rejected it. `result` says
    what they found (`result.reason`, `result.findings`)."""

    def __init__(self, result: UploadResult) -> None:
        self.result = result
        super().__init__(
            f"{result.path or result.filename} {result.summary}",
            path=result.path or result.filename,
            upload_id=result.upload_id,
            code="rejected",
        )


class DownloadError(IngestdError):
    """A download's bytes do not match the file's BLAKE3 (or its size), or its
    destination cannot be written."""


class DestinationExists(DownloadError):
    """A download would overwrite an existing file (pass `force=True`)."""


class ContractError(IngestdError):
    """The server answered something the `/v1` contract does not allow."""


# -- from answers and transport errors -----------------------------------


def _problem(r: httpx.Response) -> ProblemError:
    code, detail, body = f"http_{r.status_code}", r.reason_phrase or "error", None
    try:
        body = r.json()
    except ValueError:
        if r.text:
            detail = r.text[:300]
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        detail = str(body.get("detail") or body.get("title") or detail)
    return ProblemError(
        r.status_code, code, detail, f"{r.request.method} {r.request.url.path}", body
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _refuse_certificate(exc: httpx.TransportError, request: str) -> None:
    """Raise CertificateError when `exc` is a TLS certificate refusal."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            raise CertificateError(
                f"{request}: the server's certificate is not trusted ({seen.verify_message}); "
                "pass its CA certificate with --cacert (or Client(verify=PATH))"
            ) from exc
        seen = seen.__cause__ or seen.__context__
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        raise CertificateError(
            f"{request}: the server's certificate is not trusted ({exc}); "
            "pass its CA certificate with --cacert (or Client(verify=PATH))"
        ) from exc

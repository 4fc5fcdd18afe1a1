"""CORS for browsers that speak tus from another origin (sans-IO, like
`tus_protocol`): which origins may, and the headers of the answers."""

from __future__ import annotations

from collections.abc import Iterable

# Response headers a browser client must be able to read (CORS).
EXPOSED_HEADERS = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Ingestd-Upload-State",
    "Ingestd-File-Id",
    "Ingestd-Job-Id",
)
# Request headers a browser client may send (CORS preflight).
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Origin",
    "X-Requested-With",
    "X-Request-ID",
    "X-HTTP-Method-Override",
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
)
ALLOWED_METHODS = ("POST", "GET", "HEAD", "PATCH", "DELETE", "OPTIONS")
CORS_MAX_AGE = 86400


def cors_headers(origin: str | None, allowed: Iterable[str]) -> dict[str, str]:
    """Headers for a browser's cross-origin request from `origin` (none if not allowed)."""
    allowed = list(allowed)
    if not origin or not allowed:
        return {}
    if "*" in allowed:
        return {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": ", ".join(EXPOSED_HEADERS),
        }
    if origin not in allowed:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": ", ".join(EXPOSED_HEADERS),
        "Vary": "Origin",
    }


def preflight_headers(origin: str | None, allowed: Iterable[str]) -> dict[str, str]:
    """The answer to a CORS preflight (OPTIONS with Access-Control-Request-Method)."""
    headers = cors_headers(origin, allowed)
    if not headers:
        return {}
    headers.update(
        {
            "Access-Control-Allow-Methods": ", ".join(ALLOWED_METHODS),
            "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
            "Access-Control-Max-Age": str(CORS_MAX_AGE),
        }
    )
    return headers

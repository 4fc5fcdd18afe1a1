"""The web page at `/`, its static files under `/static/`, and the API
documentation at `/docs` (Swagger UI) and `/redoc` (ReDoc), all served from
files on this host — no CDN, so they work without internet access.

Every answer carries a strict Content-Security-Policy (scripts only from this
origin; WebAssembly for BLAKE3; no inline script), `X-Content-Type-Options:
nosniff` and an ETag that is the SHA-256 of the file: browsers revalidate
(`Cache-Control: no-cache`) and get a 304 while the file is unchanged.
"""

from __future__ import annotations

import hashlib
import mimetypes
from functools import cache
from pathlib import Path

from quart import Blueprint, Response, request
from quart_schema import hide
from werkzeug.security import safe_join

from .errors import ApiError

WEB_DIR = Path(__file__).parent / "web"

# The page: nothing but this origin's scripts, styles, workers and requests.
PAGE_CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
    "connect-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI and ReDoc set inline styles (and ReDoc runs a blob: worker);
# scripts still only from this origin.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; worker-src 'self' blob:; connect-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

bp = Blueprint("web", __name__)


@cache
def _etag(path: Path, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return f'"{digest.hexdigest()[:32]}"'


def _serve(path: Path, csp: str) -> Response:
    st = path.stat()
    etag = _etag(path, st.st_mtime_ns, st.st_size)
    headers = {
        "ETag": etag,
        "Cache-Control": "no-cache",
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return Response(b"", status=304, headers=headers)
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        kind += "; charset=utf-8"
    if path.suffix in (".js", ".mjs"):
        kind = "text/javascript; charset=utf-8"
    return Response(path.read_bytes(), content_type=kind, headers=headers)


def _file(directory: Path, name: str) -> Path:
    joined = safe_join(str(directory), name)
    path = Path(joined) if joined else None
    if path is None or not path.is_file():
        raise ApiError(404, "not_found", f"no such file: /static/{name}")
    return path


@bp.get("/")
@hide
async def page() -> Response:
    """The upload page."""
    return _serve(WEB_DIR / "index.html", PAGE_CSP)


@bp.get("/docs")
@hide
async def docs() -> Response:
    """Swagger UI for the OpenAPI document."""
    return _serve(WEB_DIR / "docs.html", DOCS_CSP)


@bp.get("/redoc")
@hide
async def redoc() -> Response:
    """ReDoc for the OpenAPI document."""
    return _serve(WEB_DIR / "redoc.html", DOCS_CSP)


@bp.get("/static/<path:name>")
@hide
async def static_file(name: str) -> Response:
    """The page's files and the vendored ones (see web/vendor/README.md)."""
    return _serve(_file(WEB_DIR, name), PAGE_CSP)

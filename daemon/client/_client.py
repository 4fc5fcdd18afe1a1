"""Python client of the native `/v1` API: resumable, deduplicating uploads.

    with Client("http://127.0.0.1:8000") as client:
        result = client.upload("train.jsonl")
        print(result.summary)  # "accepted: 1,000 rows, 3 columns; pii: 139 emails"
        client.download(result.file_id, "copy.jsonl")

An upload cuts the file into chunks (content-defined by default, see
`chunking`), tells the server every chunk's BLAKE3 and sends only the chunks
the server lacks, `parallel` at a time. The upload's id is remembered in a
small state file until the upload is finished, so running the same upload
again after a crash or a network failure resumes it instead of starting over.
An upload is idempotent: a file whose name and content the tenant already has
accepted is answered with that file, and nothing is sent (`new=True` makes a
new record anyway). Requests are retried with tenacity (backoff, and as long
as `Retry-After` says). See docs/client.md.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import fnmatch
import hashlib
import json
import os
import ssl
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import quote

import blake3
import httpx
import msgspec
import tenacity

from . import _login as user_config
from ._chunking import MODES, Chunk, ChunkedFile, ChunkingParams, FileChangedError, chunk_file
from ._models import (
    FileInfo,
    JobInfo,
    Planned,
    Status,
    UploadResult,
    UploadStatus,
    findings_in_words,
    verdict_in_words,
)

__all__ = [
    "Client",
    "ConnectionFailed",
    "CertificateError",
    "ContractError",
    "DestinationExists",
    "DownloadError",
    "FileInfo",
    "IngestdError",
    "JobInfo",
    "Planned",
    "ProblemError",
    "Rejected",
    "Status",
    "UploadError",
    "UploadResult",
    "UploadStatus",
    "collect",
    "findings_in_words",
    "verdict_in_words",
]

DEFAULT_URL = user_config.DEFAULT_URL
JOB_WAIT = 30.0  # seconds the server may hold a job request open (it caps at 60)
PAGE_SIZE = 1000
DOWNLOAD_BLOCK = 1 << 20
STATE_MAX_AGE = 30 * 24 * 3600.0  # forget state files older than this (sessions expire before)
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504, 507})
_JOB_DONE = ("succeeded", "failed")
_JOB_RUNNING = ("queued", "running")


# -- errors ----------------------------------------------------------------


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


# -- results and progress --------------------------------------------------


class UploadProgress(Protocol):
    """Told how an upload advances: `kind` is one of

    - "hashed": `nbytes` more of the file were read and hashed;
    - "skipped": one chunk of `nbytes` need not be sent (the server has it);
    - "sent": one chunk of `nbytes` was sent and acknowledged;
    - "processing": every byte is on the server; its plugins are at work (`nbytes` 0).

    "sent" is reported from worker threads; the others from the calling thread.
    """

    def __call__(self, kind: str, nbytes: int) -> None: ...


class DownloadProgress(Protocol):
    """Told how a download advances: "total" (the file's size, first), "kept"
    (`nbytes` of an earlier run's partial download, hashed again), then
    "received" (`nbytes` more)."""

    def __call__(self, kind: str, nbytes: int) -> None: ...


class _FileList(msgspec.Struct):
    files: list[FileInfo]
    next: str | None = None


# -- which files an upload of paths means ----------------------------------


def collect(
    paths: list[str | os.PathLike[str]] | tuple[str | os.PathLike[str], ...],
    include: list[str] | tuple[str, ...] = (),
    exclude: list[str] | tuple[str, ...] = (),
) -> list[tuple[Path, str]]:
    """(local path, name on the server) of each file to upload. A file is
    itself, under its own name; a directory is every regular file below it
    (recursively, symbolic links to directories not followed), named by its
    path from the directory's parent: `data/` gives `data/train.jsonl`,
    `data/eval/a.csv`. `include` and `exclude` are globs (`*.jsonl`,
    `eval/*`) matched against a file's path inside the directory and against
    its name; with `include`, only matching files are taken; `exclude` wins.
    They filter what directories hold, not files named on their own.
    Raises FileNotFoundError for a path that does not exist."""
    found: list[tuple[Path, str]] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            base = path.resolve().name or "root"
            below: list[tuple[Path, str]] = []
            for root, _dirs, names in os.walk(path):
                for name in names:
                    local = Path(root) / name
                    rel = local.relative_to(path).as_posix()
                    if not local.is_file():
                        continue  # sockets, fifos, broken links
                    if include and not _matches(rel, include):
                        continue
                    if _matches(rel, exclude):
                        continue
                    below.append((local, f"{base}/{rel}"))
            found += sorted(below, key=lambda item: item[1])
        elif path.exists():
            found.append((path, path.name))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return found


def _matches(rel: str, patterns: list[str] | tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


# -- resumable-upload state ------------------------------------------------


class UploadState:
    """One small JSON file per unfinished upload, keyed by the file's fingerprint.

    A file per upload (rather than one shared file) lets several `ingestd
    upload` processes run at once without locking. Each is written atomically
    before the first chunk is sent, so even a SIGKILL leaves it usable.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        if directory is None:
            directory = os.environ.get("INGESTD_STATE_DIR") or _default_state_dir()
        self.directory = Path(directory)
        self._pruned = False

    @staticmethod
    def key(fingerprint: dict[str, Any]) -> str:
        text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.directory / f"upload-{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None  # absent or damaged: start a new upload
        return record if isinstance(record, dict) else None

    def save(self, key: str, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._pruned:
            _prune(self.directory, "upload-*.json")
            self._pruned = True
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".upload-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()


class HashCache:
    """Chunk lists of files already hashed, so that uploading an unchanged file
    again does not read it again (as restic and rsync do).

    Keyed by path, size, mtime, ctime, inode and chunking parameters: any
    write to the file changes its ctime, which no one can set back.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pruned = False

    @staticmethod
    def fingerprint(path: Path, st: os.stat_result, mode: str, params: ChunkingParams) -> str:
        facts = [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        facts += [st.st_dev, mode, params.as_dict()]
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.directory / f"hashes-{key}.json"

    def load(self, key: str) -> ChunkedFile | None:
        try:
            record = json.loads(self._path(key).read_text())
            chunks = [Chunk(*c) for c in record["chunks"]]
            return ChunkedFile(size=record["size"], chunks=chunks, blake3=record["blake3"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or damaged: hash the file

    def save(self, key: str, plan: ChunkedFile) -> None:
        chunks = [list(c) for c in plan.chunks]
        record = {"size": plan.size, "blake3": plan.blake3, "chunks": chunks}
        with contextlib.suppress(OSError):  # a cache: failing to write it costs only time
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self._pruned:
                _prune(self.directory, "hashes-*.json")
                self._pruned = True
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".hashes-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, separators=(",", ":"))
            os.replace(tmp, self._path(key))


def _prune(directory: Path, pattern: str) -> None:
    """Remove entries older than STATE_MAX_AGE: those of files that changed or
    were never uploaded again would stay forever. Once per client, not per
    file: a directory upload would stat every entry for each of its files."""
    cutoff = time.time() - STATE_MAX_AGE
    for entry in directory.glob(pattern):
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                entry.unlink()


def _default_state_dir() -> str:
    import platformdirs

    return platformdirs.user_cache_dir("ingestd")


def _layout_digest(chunks: list[Chunk]) -> str:
    """Names a chunk layout, so that a resumed upload is known to have the same one."""
    h = blake3.blake3()
    for c in chunks:
        h.update(c.size.to_bytes(8, "big") + bytes.fromhex(c.hash))
    return h.hexdigest()


# -- the client ------------------------------------------------------------


class _Stopped(Exception):
    """Another worker failed; this one gives up its retries."""


class Client:
    """A synchronous client of one ingestd server. Use it as a context manager."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        parallel: int = 5,
        chunking: str = "cdc",
        state_dir: str | os.PathLike[str] | None = None,
        timeout: float = 60.0,
        backoff: tuple[float, ...] = (1.0, 2.0, 4.0),
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        """`url`: default $INGESTD_URL, else the one `ingestd login` saved, else
        http://127.0.0.1:8000 (a trailing `/` or `/v1` is understood). `token`:
        a bearer token (default: $INGESTD_TOKEN, else the saved one, which goes
        only to its own URL); `verify`: False, or a CA bundle's path to trust
        for https:// (a self-signed daemon; default $INGESTD_CACERT or the
        saved one). `backoff`: the delays between retries of a failed request."""
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        if chunking not in MODES:
            raise ValueError(f"chunking must be one of {', '.join(MODES)}, got {chunking!r}")
        connection = user_config.resolve(url, token)
        self.url = connection.url
        token = connection.token
        if verify is True and connection.cacert:
            verify = connection.cacert
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        self.parallel = parallel
        self.chunking = chunking
        self.timeout = timeout
        self.backoff = tuple(backoff)
        self.state = UploadState(state_dir)
        self.hashes = HashCache(self.state.directory)
        self._info: dict[str, Any] | None = None
        headers = {"User-Agent": "ingestd-client/0.1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            verify=verify,
            # One connection per worker, plus one for status and job requests.
            limits=httpx.Limits(
                max_connections=parallel + 2, max_keepalive_connections=parallel + 2
            ),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------

    def _retrying(self, stop: threading.Event | None = None) -> tenacity.Retrying:
        """tenacity's retry loop for one request: a retry after each delay in
        `backoff`, or as long as the answer's Retry-After says."""
        return _RetryPolicy(self.backoff, stop).retrying()

    def _request(
        self,
        method: str,
        path: str,
        *,
        retry: str = "all",
        stop: threading.Event | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying on connection errors, timeouts, 429 and 5xx
        (see `_retrying`). `retry="connect"` retries only when the request
        surely did not reach the server (for requests that are not
        idempotent). Raises ProblemError for an error answer, ConnectionFailed
        when the server stayed unreachable."""
        try:
            for attempt in self._retrying(stop):
                with attempt:
                    try:
                        r = self._http.request(method, path, **kwargs)
                    except httpx.TransportError as exc:
                        _refuse_certificate(exc, f"{method} {self.url}{path}")
                        unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                        if retry == "all" or unsent:
                            raise _Again(error=exc) from exc
                        raise ConnectionFailed(
                            f"{method} {self.url}{path}: {_describe(exc)}"
                        ) from exc
                    _check(r)
                    return r
        except _Again as again:
            raise again.final(f"{method} {self.url}{path}") from again.error
        raise AssertionError("unreachable")  # tenacity either returns or raises

    def _json(self, r: httpx.Response) -> Any:
        try:
            return msgspec.json.decode(r.content)
        except msgspec.DecodeError as exc:
            raise ContractError(
                f"{r.request.method} {r.request.url.path}: HTTP {r.status_code} "
                f"body is not JSON: {r.text[:200]!r}"
            ) from exc

    def _get_json(self, path: str, **kwargs: Any) -> Any:
        return self._json(self._request("GET", path, **kwargs))

    def _typed(self, kind: type[Any], r: httpx.Response) -> Any:
        try:
            return msgspec.json.decode(r.content, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ContractError(
                f"{r.request.method} {r.request.url.path}: HTTP {r.status_code} "
                f"answer does not fit {kind.__name__}: {exc}: {r.text[:200]!r}"
            ) from exc

    # -- simple calls --------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """`GET /v1/info`: chunking parameters and limits."""
        return self._get_json("/v1/info")

    def _server_info(self) -> dict[str, Any]:
        """`info()`, asked once per client: every upload and dry run needs it."""
        if self._info is None:
            self._info = self.info()
        return self._info

    def usage(self) -> dict[str, Any]:
        """`GET /v1/usage`: the tenant's bytes, files, open uploads and limits."""
        return self._get_json("/v1/usage")

    def upload_status(self, upload_id: str) -> UploadStatus:
        """`GET /v1/uploads/{id}`: an upload's state and missing chunk indices."""
        return self._typed(UploadStatus, self._request("GET", f"/v1/uploads/{_seg(upload_id)}"))

    def status(self, id: str) -> Status:
        """What became of a file id or an upload id: its state, the missing
        chunks of an open upload, the job, the verdict and what the plugins
        found. Raises ProblemError (404) when it is neither."""
        file: FileInfo | None = None
        upload: UploadStatus | None = None
        try:
            file = self.file(id)
        except ProblemError as exc:
            if exc.status != 404:
                raise
            upload = self.upload_status(id)  # a 404 here says "neither"
            if upload.file_id:
                file = self.file(upload.file_id)
        job_id = (file.job_id if file else None) or (upload.job_id if upload else None)
        job = self.job(job_id) if job_id else None
        if file is not None:
            state = file.state
            summary = verdict_in_words(
                state, file.reason, job.results if job else {}, file.described
            )
        else:
            assert upload is not None
            state = upload.state
            if state == "open":
                summary = (
                    f"open: {upload.received_chunks:,} of {upload.total_chunks:,} chunks "
                    f"received, {len(upload.missing):,} missing"
                )
            elif state == "rejected":
                summary = verdict_in_words(state, upload.reason, job.results if job else {})
            else:
                summary = state
        return Status(
            kind="file" if file is not None and upload is None else "upload",
            state=state,
            file=file,
            upload=upload,
            job=job,
            summary=summary,
        )

    def cancel(self, upload_id: str) -> None:
        """`DELETE /v1/uploads/{id}`: cancel an open upload."""
        self._request("DELETE", f"/v1/uploads/{_seg(upload_id)}")

    def job(self, job_id: str, wait: float = 0.0) -> JobInfo:
        """`GET /v1/jobs/{id}`, waiting up to `wait` seconds for it to finish."""
        params = {"wait": f"{wait:g}"} if wait else None
        r = self._request(
            "GET", f"/v1/jobs/{_seg(job_id)}", params=params, timeout=self.timeout + wait
        )
        return self._typed(JobInfo, r)

    def file(self, file_id: str) -> FileInfo:
        """`GET /v1/files/{id}`: a file's facts, state and what processing found."""
        return self._typed(FileInfo, self._request("GET", f"/v1/files/{_seg(file_id)}"))

    def files(self, prefix: str | None = None, state: str | None = None) -> list[FileInfo]:
        """Every file (whose name starts with `prefix`; in `state`), following the pages."""
        return list(self.iter_files(prefix, state=state))

    def iter_files(
        self,
        prefix: str | None = None,
        *,
        state: str | None = None,
        filename: str | None = None,
        blake3: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> Iterator[FileInfo]:
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": limit}
            for key, value in (
                ("prefix", prefix),
                ("state", state),
                ("filename", filename),
                ("blake3", blake3),
                ("after", cursor),
            ):
                if value:
                    params[key] = value
            page = self._typed(_FileList, self._request("GET", "/v1/files", params=params))
            yield from page.files
            if not page.next:
                return
            if page.next == cursor:
                raise ContractError(f"GET /v1/files returned the same cursor {cursor!r} again")
            cursor = page.next

    def find(
        self, filename: str, blake3: str, metadata: dict[str, Any] | None = None
    ) -> FileInfo | None:
        """The tenant's accepted file with this name and content (and these
        metadata, when given), if there is one: what an idempotent upload answers."""
        for found in self.iter_files(filename=filename, blake3=blake3, state="accepted"):
            if found.filename == filename and found.blake3 == blake3:
                if metadata is None or found.metadata == metadata:
                    return found
        return None

    def delete(self, file_id: str) -> None:
        """`DELETE /v1/files/{id}`."""
        self._request("DELETE", f"/v1/files/{_seg(file_id)}")

    # -- download ------------------------------------------------------------

    def download(
        self,
        file_id: str,
        dest: str | os.PathLike[str] | None = None,
        *,
        force: bool = False,
        progress: DownloadProgress | None = None,
    ) -> Path:
        """Stream a file to `dest` (a path, or an existing directory to put it
        in under its own name; default: the current directory), verifying its
        BLAKE3 as it is written. The file appears at `dest` only once verified,
        with the mode the umask gives new files. An existing `dest` is never
        overwritten unless `force` (DestinationExists). An interrupted
        download leaves `.NAME.<hash>.part` beside `dest`; the next download
        of the same file resumes from it with a `Range` request."""
        facts = self.file(file_id)
        dest = Path.cwd() if dest is None else Path(dest)
        if dest.is_dir():
            dest = dest / _safe_name(facts.filename, file_id)
        if not dest.parent.is_dir():
            raise DownloadError(f"{dest.parent}: no such directory")
        if (dest.exists() or dest.is_symlink()) and not force:
            raise DestinationExists(f"{dest} exists (use --force, or force=True, to overwrite it)")
        part = dest.parent / f".{dest.name}.{facts.blake3[:16]}.part"
        try:
            # 0o666 before the umask, as any program's new file (mkstemp would give 0600).
            fd = os.open(part, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            raise DownloadError(f"{part}: {exc.strerror}") from exc
        with os.fdopen(fd, "r+b") as out:
            if not stat.S_ISREG(os.fstat(out.fileno()).st_mode):
                raise DownloadError(f"{part} is not a regular file")
            hasher = blake3.blake3()
            kept = 0
            while block := out.read(DOWNLOAD_BLOCK):  # what an interrupted run wrote
                hasher.update(block)
                kept += len(block)
            if kept > facts.size:
                out.seek(0)
                out.truncate()
                hasher, kept = blake3.blake3(), 0
            try:
                digest, size = self._fetch(file_id, facts, out, hasher, kept, progress)
            except BaseException:
                # Keep what can be resumed; an empty part is only clutter.
                if os.fstat(out.fileno()).st_size == 0:
                    with contextlib.suppress(OSError):
                        os.unlink(part)
                raise
            if digest != facts.blake3 or size != facts.size:
                out.close()
                with contextlib.suppress(OSError):
                    os.unlink(part)
                raise DownloadError(
                    f"file {file_id}: received {size} bytes with BLAKE3 {digest}, "
                    f"expected {facts.size} bytes with BLAKE3 {facts.blake3}"
                    + (f" ({kept} of them kept from an earlier run)" if kept else "")
                    + "; the partial download was removed: run it again"
                )
            out.flush()
            os.fsync(out.fileno())
        _place(part, dest, force)
        return dest

    def _fetch(
        self,
        file_id: str,
        facts: FileInfo,
        out: Any,
        hasher: Any,
        received: int,
        progress: DownloadProgress | None,
    ) -> tuple[str, int]:
        """Append the content from `received` on to `out`, hashing it; return
        (BLAKE3 of all the bytes, their count). A broken connection resumes
        with `Range` from what was written."""
        path = f"/v1/files/{_seg(file_id)}/content"
        if progress:
            progress("total", facts.size)
            progress("kept", received)
        if received == facts.size:
            return hasher.hexdigest(), received
        try:
            for attempt in self._retrying():
                with attempt:
                    headers = {}
                    if received:
                        headers = {"Range": f"bytes={received}-", "If-Range": f'"{facts.blake3}"'}
                    try:
                        with self._http.stream("GET", path, headers=headers) as r:
                            if r.status_code >= 400:
                                r.read()
                                _check(r)
                            etag = _etag_hash(r.headers.get("ETag"))
                            if etag and etag != facts.blake3:
                                raise DownloadError(f"file {file_id} changed while downloading")
                            if received and r.status_code != 206:
                                # The whole content again: start over.
                                out.seek(0)
                                out.truncate()
                                hasher, received = blake3.blake3(), 0
                            for block in r.iter_bytes(DOWNLOAD_BLOCK):
                                out.write(block)
                                hasher.update(block)
                                received += len(block)
                                if progress:
                                    progress("received", len(block))
                    except httpx.TransportError as exc:
                        _refuse_certificate(exc, f"GET {self.url}{path}")
                        raise _Again(error=exc) from exc
        except _Again as again:
            raise again.final(f"GET {self.url}{path}") from again.error
        return hasher.hexdigest(), received

    # -- upload ----------------------------------------------------------------

    def _hash(
        self, path: Path, notify: UploadProgress
    ) -> tuple[os.stat_result, ChunkingParams, ChunkedFile]:
        """The file's chunks and BLAKE3 (from the hash cache when unchanged)."""
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise UploadError(f"{path} is not a regular file", path=path)
        try:
            info = self._server_info()
        except (ConnectionFailed, ProblemError) as exc:
            _raise_for_upload(exc, path, None)
        params = ChunkingParams.from_info(info)
        if before.st_size > info["max_file_size"]:
            raise UploadError(
                f"{path} is {before.st_size} bytes, over the server's limit of "
                f"{info['max_file_size']}",
                path=path,
            )
        cache_key = HashCache.fingerprint(path, before, self.chunking, params)
        plan = self.hashes.load(cache_key)
        if plan is not None:
            notify("hashed", plan.size)
            return before, params, plan
        try:
            plan = chunk_file(path, params, self.chunking, on_bytes=lambda n: notify("hashed", n))
        except FileChangedError as exc:
            raise UploadError(f"{exc}; try again", path=path) from exc
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            before.st_size,
            before.st_mtime_ns,
            before.st_ctime_ns,
        ):
            raise UploadError(f"{path} changed while it was being hashed; try again", path=path)
        self.hashes.save(cache_key, plan)
        return before, params, plan

    def _fingerprint(
        self, path: Path, name: str, before: os.stat_result, params: ChunkingParams
    ) -> dict[str, Any]:
        return {
            "url": self.url,
            "path": str(path.resolve()),
            "filename": name,
            "size": before.st_size,
            "mtime_ns": before.st_mtime_ns,
            "chunking": self.chunking,
            "params": params.as_dict(),
        }

    def plan(
        self,
        path: str | os.PathLike[str],
        *,
        filename: str | None = None,
        new: bool = False,
        metadata: dict[str, Any] | None = None,
        progress: UploadProgress | None = None,
    ) -> Planned:
        """A dry run of `upload`: hashes the file and asks the server what it
        already has, but creates and sends nothing. `bytes_to_send` is an upper
        bound for a new upload: chunks it shares with other files of the
        tenant are found only when the upload is made."""
        path = Path(path)
        name = filename or path.name
        notify = progress or _no_progress
        before, params, plan = self._hash(path, notify)
        facts = {
            "path": str(path),
            "filename": name,
            "size": plan.size,
            "chunks": len(plan.chunks),
            "blake3": plan.blake3 or "",
        }
        if not new and plan.blake3 and (found := self.find(name, plan.blake3, metadata)):
            return Planned(
                **facts,
                action="already uploaded",
                bytes_on_server=plan.size,
                bytes_to_send=0,
                file_id=found.id,
            )
        record = self.state.load(UploadState.key(self._fingerprint(path, name, before, params)))
        if record and record.get("layout") == _layout_digest(plan.chunks):
            with contextlib.suppress(ProblemError):
                status = self.upload_status(str(record.get("upload_id")))
                if status.state == "open" and status.total_chunks == len(plan.chunks):
                    return Planned(
                        **facts,
                        action="resumable",
                        bytes_on_server=status.received_bytes,
                        bytes_to_send=plan.size - status.received_bytes,
                    )
        if plan.blake3:
            for other in self.iter_files(blake3=plan.blake3, limit=1):
                return Planned(
                    **facts,
                    action="content on server",
                    bytes_on_server=plan.size,
                    bytes_to_send=0,
                    file_id=None if other.filename != name else other.id,
                )
        return Planned(**facts, action="new", bytes_on_server=0, bytes_to_send=plan.size)

    def upload_dir(
        self,
        directory: str | os.PathLike[str],
        include: list[str] | tuple[str, ...] = (),
        exclude: list[str] | tuple[str, ...] = (),
        **options: Any,
    ) -> list[UploadResult]:
        """Upload every file below `directory` (see `collect` for names and
        globs), one after the other. Rejected files are in the list with
        `state == "rejected"`; any other failure stops and is raised."""
        results = []
        for local, name in collect([directory], include, exclude):
            results.append(self.upload(local, filename=name, check=False, **options))
        return results

    def upload(
        self,
        path: str | os.PathLike[str],
        metadata: dict[str, Any] | None = None,
        progress: UploadProgress | None = None,
        *,
        filename: str | None = None,
        new: bool = False,
        check: bool = True,
    ) -> UploadResult:
        """Upload one file (named `filename` on the server, default its own
        name), resuming an earlier unfinished upload of it if there is one,
        and wait for the server's plugins to decide.

        Idempotent: when the tenant already has an accepted file with this
        name and content (and these metadata, if given), that file is the
        answer and nothing is sent (`already_uploaded`); `new=True` makes a
        new file record anyway.

        Raises Rejected (an UploadError whose `result` has the reason and the
        findings) when the plugins reject the file, unless `check=False`, which
        returns the result with `state == "rejected"`. Raises UploadError when
        it cannot finish (`resumable` says whether running it again will
        continue), ProblemError when the server refuses a request (its `code`
        and `detail` say why), ChunkingError when the server's chunk sizes
        cannot be used in this chunking mode.
        """
        started = time.monotonic()
        path = Path(path)
        name = filename or path.name
        notify = progress or _no_progress
        before, params, plan = self._hash(path, notify)
        base = {"path": str(path), "bytes_total": plan.size, "chunks_total": len(plan.chunks)}

        if not new and plan.blake3:
            try:
                found = self.find(name, plan.blake3, metadata)
                job = self.job(found.job_id) if found and found.job_id else None
            except (ConnectionFailed, ProblemError) as exc:
                _raise_for_upload(exc, path, None)
            if found is not None:
                notify("skipped", plan.size)
                return self._result(
                    found,
                    job,
                    **base,
                    upload_id=found.upload_id,
                    bytes_sent=0,
                    bytes_on_server=plan.size,
                    chunks_sent=0,
                    chunks_skipped=len(plan.chunks),
                    seconds=round(time.monotonic() - started, 3),
                    resumed=False,
                    already_uploaded=True,
                )

        fingerprint = self._fingerprint(path, name, before, params)
        key = UploadState.key(fingerprint)
        layout = _layout_digest(plan.chunks)
        upload_id: str | None = None
        try:
            upload_id, missing, job_id = self._resume(key, layout, plan)
            resumed = upload_id is not None
            if upload_id is None:
                upload_id, missing = self._create(name, plan, params, metadata)
                self.state.save(
                    key,
                    {
                        **fingerprint,
                        "upload_id": upload_id,
                        "layout": layout,
                        "created": time.time(),
                    },
                )
            missing_set = set(missing)
            on_server = 0
            for index, chunk in enumerate(plan.chunks):
                if index not in missing_set:
                    on_server += chunk.size
                    notify("skipped", chunk.size)
            chunks_sent, bytes_sent = 0, 0
            if job_id is None:
                chunks_sent, bytes_sent = self._send_chunks(
                    path, upload_id, plan.chunks, sorted(missing_set), notify
                )
                job_id = self._complete(upload_id)
            notify("processing", 0)
            job = self._wait_job(job_id)
            file_id = job.file_id
            facts = self.file(file_id) if file_id else None
        except (ConnectionFailed, ProblemError) as exc:
            if isinstance(exc, ProblemError) and exc.code == "chunk_hash_mismatch":
                self.state.remove(key)
                raise UploadError(
                    f"{path} changed since it was hashed ({exc.detail}); try again",
                    path=path,
                    upload_id=upload_id,
                    code=exc.code,
                ) from exc
            _raise_for_upload(exc, path, upload_id)

        self.state.remove(key)  # the upload is over either way; a new run starts afresh
        if facts is None:
            if job.state == "failed":
                raise UploadError(
                    f"the server could not process {path}: {job.error or 'no reason given'}",
                    path=path,
                    upload_id=upload_id,
                )
            raise ContractError(f"job {job_id} succeeded without a file_id: {job}")
        if plan.blake3 is not None and facts.blake3 != plan.blake3:
            raise UploadError(
                f"the server's file {facts.id} has BLAKE3 {facts.blake3}, "
                f"but {path} has {plan.blake3}",
                path=path,
                upload_id=upload_id,
            )
        result = self._result(
            facts,
            job,
            **base,
            upload_id=upload_id,
            bytes_sent=bytes_sent,
            bytes_on_server=on_server,
            chunks_sent=chunks_sent,
            chunks_skipped=len(plan.chunks) - len(missing_set),
            seconds=round(time.monotonic() - started, 3),
            resumed=resumed,
        )
        if result.state == "rejected" and check:
            raise Rejected(result)
        return result

    def _result(self, facts: FileInfo, job: JobInfo | None, **fields: Any) -> UploadResult:
        results = job.results if job else {}
        state = facts.state
        if state == "processing" and job is not None and job.verdict:
            state = job.verdict
        reason = facts.reason or (job.error if job and state == "rejected" else None)
        return UploadResult(
            file_id=facts.id,
            filename=facts.filename,
            blake3=facts.blake3,
            job_id=job.id if job else facts.job_id,
            state=state,
            verdict=job.verdict if job else None,
            reason=reason,
            summary=verdict_in_words(state, reason, results, facts.described),
            findings=results,
            **fields,
        )

    def _resume(
        self, key: str, layout: str, plan: ChunkedFile
    ) -> tuple[str | None, list[int], str | None]:
        """(upload id, missing indices, job id) of an earlier upload of this very
        file that can be continued, or (None, [], None)."""
        record = self.state.load(key)
        if not record or record.get("layout") != layout or not record.get("upload_id"):
            return None, [], None
        upload_id = str(record["upload_id"])
        try:
            status = self.upload_status(upload_id)
        except ProblemError as exc:
            if exc.status != 404:
                raise
            status = None  # expired and purged, or never durable
        if status is not None:
            same = status.total_chunks == len(plan.chunks) and status.size == plan.size
            if status.state == "open" and same:
                return upload_id, [int(i) for i in status.missing], None
            # Completion was accepted before the last run ended: follow its job.
            if status.job_id and status.state in ("completing", "completed", "rejected"):
                return upload_id, [], str(status.job_id)
        self.state.remove(key)
        return None, [], None

    def _create(
        self,
        name: str,
        plan: ChunkedFile,
        params: ChunkingParams,
        metadata: dict[str, Any] | None,
    ) -> tuple[str, list[int]]:
        body: dict[str, Any] = {
            "filename": name,
            "size": plan.size,
            "metadata": metadata or {},
        }
        # Declare the layout (so the server can skip chunks it has) whenever it is
        # one the server accepts; a fixed layout whose size falls outside the CDC
        # bounds is the server's own default layout, so it can go undeclared.
        declarable = self.chunking == "cdc" or (
            params.min_size <= params.fixed_size <= params.max_size
        )
        if plan.chunks and declarable:
            body["chunks"] = [{"hash": c.hash, "size": c.size} for c in plan.chunks]
        r = self._request(
            "POST",
            "/v1/uploads",
            retry="connect",
            content=msgspec.json.encode(body),
            headers={"Content-Type": "application/json"},
        )
        created = self._json(r)
        if created.get("total_chunks") != len(plan.chunks):
            raise ContractError(
                f"POST /v1/uploads: {len(plan.chunks)} chunks declared, the server made "
                f"an upload of {created.get('total_chunks')}: {str(created)[:300]}"
            )
        return str(created["id"]), [int(i) for i in created.get("missing", [])]

    def _send_chunks(
        self,
        path: Path,
        upload_id: str,
        chunks: list[Chunk],
        missing: list[int],
        notify: UploadProgress,
    ) -> tuple[int, int]:
        """PUT the `missing` chunks with `parallel` workers; (chunks, bytes) sent."""
        if not missing:
            return 0, 0
        stop = threading.Event()
        lock = threading.Lock()
        todo = iter(missing)
        failures: list[BaseException] = []
        sent = [0, 0]

        def work(fd: int) -> None:
            while True:
                with lock:
                    index = None if stop.is_set() else next(todo, None)
                if index is None:
                    return
                chunk = chunks[index]
                try:
                    self._put_chunk(path, upload_id, index, chunk, fd, stop)
                except _Stopped:
                    return
                except BaseException as exc:
                    with lock:
                        failures.append(exc)
                    stop.set()
                    return
                with lock:
                    sent[0] += 1
                    sent[1] += chunk.size
                notify("sent", chunk.size)

        fd = os.open(path, os.O_RDONLY)
        try:
            workers = min(self.parallel, len(missing))
            with ThreadPoolExecutor(workers, thread_name_prefix="chunk-put") as pool:
                futures = [pool.submit(work, fd) for _ in range(workers)]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    stop.set()  # e.g. Ctrl-C: let in-flight chunks finish, start no more
                    raise
        finally:
            os.close(fd)
        if failures:
            raise failures[0]
        return sent[0], sent[1]

    def _put_chunk(
        self,
        path: Path,
        upload_id: str,
        index: int,
        chunk: Chunk,
        fd: int,
        stop: threading.Event,
    ) -> None:
        data = os.pread(fd, chunk.size, chunk.offset)
        if len(data) != chunk.size:
            raise UploadError(f"{path} shrank while being uploaded; try again", path=path)
        digest = base64.b64encode(bytes.fromhex(chunk.hash)).decode()
        r = self._request(
            "PUT",
            f"/v1/uploads/{_seg(upload_id)}/chunks/{index}",
            stop=stop,
            content=data,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Digest": f"blake3=:{digest}:",
            },
        )
        ack = self._json(r)
        if ack.get("index") != index or ack.get("hash") != chunk.hash:
            raise ContractError(
                f"PUT chunk {index} ({chunk.hash}): the server acknowledged {str(ack)[:300]}"
            )

    def _complete(self, upload_id: str) -> str:
        # Completing again returns the same job, so a retry is harmless.
        r = self._request("POST", f"/v1/uploads/{_seg(upload_id)}/complete")
        accepted = self._json(r)
        if r.status_code != 202 or not accepted.get("job_id"):
            raise ContractError(
                f"POST /v1/uploads/{upload_id}/complete: HTTP {r.status_code} {str(accepted)[:300]}"
            )
        return str(accepted["job_id"])

    def _wait_job(self, job_id: str) -> JobInfo:
        # Each request waits up to JOB_WAIT seconds on the server; the job ends
        # when the server's plugins are done with the file.
        while True:
            job = self.job(job_id, wait=JOB_WAIT)
            state = job.state
            if state in _JOB_DONE:
                return job
            if state not in _JOB_RUNNING:
                raise ContractError(f"job {job_id} is in an unknown state {state!r}")


# -- helpers ---------------------------------------------------------------


def _no_progress(kind: str, nbytes: int) -> None:
    pass


# Refusals that waiting does not change: retrying would only repeat them.
_LASTING_CODES = frozenset({"quota_exceeded", "too_many_open_uploads"})
# The longest Retry-After honoured, in seconds, and how many times one request
# waits out a rate limit (429 with Retry-After) before giving up.
MAX_RETRY_AFTER = 120.0
MAX_RATE_WAITS = 20


def _lasting(r: httpx.Response) -> bool:
    if "json" not in r.headers.get("Content-Type", ""):
        return False
    try:
        return r.json().get("code") in _LASTING_CODES
    except (ValueError, AttributeError):
        return False


class _Again(Exception):
    """One attempt failed in a way that may pass: an error answer worth
    retrying (`response`) or a transport error (`error`)."""

    def __init__(
        self, response: httpx.Response | None = None, error: BaseException | None = None
    ) -> None:
        super().__init__(response.status_code if response is not None else error)
        self.response = response
        self.error = error
        # 429 with Retry-After: the server says when; these waits are counted apart.
        self.rate_limited = (
            response is not None
            and response.status_code == 429
            and "Retry-After" in response.headers
        )

    def final(self, request: str) -> IngestdError:
        """What the caller gets once the retries are spent."""
        if self.response is not None:
            return _problem(self.response)
        return ConnectionFailed(f"{request}: {_describe(self.error or Exception())}")


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


def _check(r: httpx.Response) -> None:
    """Raise _Again for an answer worth retrying, ProblemError for another error."""
    if r.status_code < 400:
        return
    if r.status_code in _RETRY_STATUS and not _lasting(r):
        raise _Again(response=r)
    raise _problem(r)


class _RetryPolicy:
    """Counts one request's attempts for tenacity: ordinary failures get one
    retry per `backoff` delay; rate limits (429 with Retry-After) are waited
    out up to MAX_RATE_WAITS times, as long as the server says."""

    def __init__(self, backoff: tuple[float, ...], stop: threading.Event | None) -> None:
        self.backoff = backoff
        self.event = stop
        self.failures = 0
        self.rate_waits = 0

    def retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            retry=self._retry,
            wait=self._wait,
            stop=self._stop,
            sleep=lambda seconds: _pause(seconds, self.event),
            reraise=True,
        )

    def _retry(self, state: tenacity.RetryCallState) -> bool:
        again = state.outcome.exception() if state.outcome else None
        if not isinstance(again, _Again):
            return False
        if again.rate_limited:
            self.rate_waits += 1
        else:
            self.failures += 1
        return True

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        return self.failures > len(self.backoff) or self.rate_waits > MAX_RATE_WAITS

    def _wait(self, state: tenacity.RetryCallState) -> float:
        again = state.outcome.exception() if state.outcome else None
        if isinstance(again, _Again) and again.rate_limited:
            default = 1.0
        else:
            default = (
                self.backoff[min(self.failures, len(self.backoff)) - 1] if self.backoff else 0.0
            )
        if isinstance(again, _Again) and again.response is not None:
            return retry_after(again.response, default)
        return default


def retry_after(r: httpx.Response, default: float) -> float:
    """Seconds to wait before retrying: the answer's Retry-After (seconds or an
    HTTP date) when it gives one, else `default`."""
    value = r.headers.get("Retry-After")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _pause(delay: float, stop: threading.Event | None) -> None:
    if stop is None:
        time.sleep(delay)
    elif stop.wait(delay):
        raise _Stopped()


def _seg(value: str) -> str:
    """A path segment: ids come from users too, so never let them add path parts."""
    return quote(str(value), safe="")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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


def _raise_for_upload(
    exc: ConnectionFailed | ProblemError, path: Path, upload_id: str | None
) -> NoReturn:
    """Raise a failure that may pass (unreachable server, 5xx, 429) as a
    resumable UploadError; any other problem as it is."""
    if isinstance(exc, ProblemError) and exc.status not in _RETRY_STATUS:
        raise exc
    code = exc.code if isinstance(exc, ProblemError) else None
    raise UploadError(
        f"upload of {path} failed: {exc}",
        path=path,
        upload_id=upload_id,
        resumable=True,
        code=code,
    ) from exc


def _etag_hash(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def _place(part: Path, dest: Path, force: bool) -> None:
    """Move a verified download into place; without `force`, never over a file
    that appeared meanwhile (a hard link fails if `dest` exists)."""
    if force:
        os.replace(part, dest)
        return
    try:
        os.link(part, dest)
    except FileExistsError:
        raise DestinationExists(
            f"{dest} exists (use --force, or force=True, to overwrite it)"
        ) from None
    except OSError:  # a filesystem without hard links
        if dest.exists():
            raise DestinationExists(f"{dest} exists") from None
        os.rename(part, dest)
        return
    os.unlink(part)


def _safe_name(filename: str, fallback: str) -> str:
    name = os.path.basename(filename.replace("\\", "/")).strip()
    if name in ("", ".", "..") or name.startswith("."):
        name = name.lstrip(".") or fallback
    return name

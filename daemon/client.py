"""Python client of the native `/v1` API: resumable, deduplicating uploads.

    with Client("http://127.0.0.1:8000") as client:
        result = client.upload("train.jsonl")
        client.download(result.file_id, "copy.jsonl")

An upload cuts the file into chunks (content-defined by default, see
`chunking`), tells the server every chunk's BLAKE3 and sends only the chunks
the server lacks, `parallel` at a time. The upload's id is remembered in a
small state file until the upload is finished, so running the same upload
again after a crash or a network failure resumes it instead of starting over.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import blake3
import httpx
import msgspec

from .chunking import MODES, Chunk, ChunkedFile, ChunkingParams, FileChangedError, chunk_file

DEFAULT_URL = "http://127.0.0.1:8000"
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


class DownloadError(IngestdError):
    """A download's bytes do not match the file's BLAKE3 (or its size)."""


class ContractError(IngestdError):
    """The server answered something the `/v1` contract does not allow."""


# -- results and progress --------------------------------------------------


@dataclass
class UploadResult:
    file_id: str
    upload_id: str
    filename: str
    bytes_total: int
    bytes_sent: int  # bytes of the chunks this call sent (not those the server had)
    chunks_total: int
    chunks_sent: int
    chunks_skipped: int  # chunks the server already had: dedup, or sent by an earlier run
    seconds: float
    blake3: str
    resumed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class UploadProgress(Protocol):
    """Told how an upload advances: `kind` is one of

    - "hashed": `nbytes` more of the file were read and hashed;
    - "skipped": one chunk of `nbytes` need not be sent (the server has it);
    - "sent": one chunk of `nbytes` was sent and acknowledged.

    "sent" is reported from worker threads; the others from the calling thread.
    """

    def __call__(self, kind: str, nbytes: int) -> None: ...


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
        self._prune()
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

    def _prune(self) -> None:
        # Entries of files that changed or were never uploaded again would stay forever.
        cutoff = time.time() - STATE_MAX_AGE
        for entry in self.directory.glob("upload-*.json"):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()


class HashCache:
    """Chunk lists of files already hashed, so that uploading an unchanged file
    again does not read it again (as restic and rsync do).

    Keyed by path, size, mtime, ctime, inode and chunking parameters: any
    write to the file changes its ctime, which no one can set back.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

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
            cutoff = time.time() - STATE_MAX_AGE
            for entry in self.directory.glob("hashes-*.json"):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".hashes-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, separators=(",", ":"))
            os.replace(tmp, self._path(key))


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
        """`url`: default $INGESTD_URL, else http://127.0.0.1:8000. `token`: a
        bearer token (default: $INGESTD_TOKEN); `verify`: False,
        or a CA bundle's path to trust for https:// (a self-signed daemon)."""
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        if chunking not in MODES:
            raise ValueError(f"chunking must be one of {', '.join(MODES)}, got {chunking!r}")
        url = url or os.environ.get("INGESTD_URL") or DEFAULT_URL
        self.url = url.rstrip("/")
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        self.parallel = parallel
        self.chunking = chunking
        self.timeout = timeout
        self.backoff = tuple(backoff)
        self.state = UploadState(state_dir)
        self.hashes = HashCache(self.state.directory)
        headers = {"User-Agent": "ingestd-client/0.1"}
        token = token if token is not None else os.environ.get("INGESTD_TOKEN")
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

    def _request(
        self,
        method: str,
        path: str,
        *,
        retry: str = "all",
        stop: threading.Event | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying after each delay in `backoff` on connection
        errors, timeouts, 429 and 5xx (waiting as long as Retry-After says, when
        it says). `retry="connect"` retries only when the
        request surely did not reach the server (for requests that are not
        idempotent). Raises ProblemError for an error answer, ConnectionFailed
        when the server stayed unreachable."""
        delays = iter(self.backoff)
        rate_waits = 0
        while True:
            try:
                r = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                delay = next(delays, None) if retry == "all" or unsent else None
                if delay is None:
                    raise ConnectionFailed(f"{method} {self.url}{path}: {_describe(exc)}") from exc
                _pause(delay, stop)
                continue
            if r.status_code < 400:
                return r
            if r.status_code == 429 and "Retry-After" in r.headers and not _lasting(r):
                # The server says when: wait that long, a bounded number of times.
                rate_waits += 1
                if rate_waits <= MAX_RATE_WAITS:
                    _pause(retry_after(r, 1.0), stop)
                    continue
            elif r.status_code in _RETRY_STATUS and not _lasting(r):
                delay = next(delays, None)
                if delay is not None:
                    _pause(retry_after(r, delay), stop)
                    continue
            raise _problem(r)

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

    # -- simple calls --------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """`GET /v1/info`: chunking parameters and limits."""
        return self._get_json("/v1/info")

    def status(self, upload_id: str) -> dict[str, Any]:
        """`GET /v1/uploads/{id}`: an upload's state and missing chunk indices."""
        return self._get_json(f"/v1/uploads/{_seg(upload_id)}")

    def cancel(self, upload_id: str) -> None:
        """`DELETE /v1/uploads/{id}`: cancel an open upload."""
        self._request("DELETE", f"/v1/uploads/{_seg(upload_id)}")

    def job(self, job_id: str, wait: float = 0.0) -> dict[str, Any]:
        """`GET /v1/jobs/{id}`, waiting up to `wait` seconds for it to finish."""
        params = {"wait": f"{wait:g}"} if wait else None
        return self._get_json(
            f"/v1/jobs/{_seg(job_id)}", params=params, timeout=self.timeout + wait
        )

    def file(self, file_id: str) -> dict[str, Any]:
        """`GET /v1/files/{id}`: a file's facts and metadata."""
        return self._get_json(f"/v1/files/{_seg(file_id)}")

    def files(self, prefix: str | None = None) -> list[dict[str, Any]]:
        """Every file (whose name starts with `prefix`), following the pages."""
        return list(self.iter_files(prefix))

    def iter_files(self, prefix: str | None = None) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": PAGE_SIZE}
            if prefix:
                params["prefix"] = prefix
            if cursor:
                params["after"] = cursor
            page = self._get_json("/v1/files", params=params)
            yield from page["files"]
            following = page.get("next")
            if not following:
                return
            if following == cursor:
                raise ContractError(f"GET /v1/files returned the same cursor {cursor!r} again")
            cursor = following

    def delete(self, file_id: str) -> None:
        """`DELETE /v1/files/{id}`."""
        self._request("DELETE", f"/v1/files/{_seg(file_id)}")

    # -- download ------------------------------------------------------------

    def download(self, file_id: str, dest: str | os.PathLike[str]) -> Path:
        """Stream a file to `dest` (a path, or an existing directory to put it
        in under its own name) and check its bytes against the ETag's BLAKE3.
        The file appears at `dest` only once verified. A broken connection is
        resumed with a `Range` request."""
        facts = self.file(file_id)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / _safe_name(facts["filename"], file_id)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                etag, digest, size = self._fetch(file_id, out)
            expected = etag or facts["blake3"]
            if digest != expected or size != facts["size"]:
                raise DownloadError(
                    f"file {file_id}: received {size} bytes with BLAKE3 {digest}, "
                    f"expected {facts['size']} bytes with BLAKE3 {expected}"
                )
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return dest

    def _fetch(self, file_id: str, out: Any) -> tuple[str | None, str, int]:
        """Write the content to `out`; return (ETag hash, BLAKE3 of the bytes, count)."""
        path = f"/v1/files/{_seg(file_id)}/content"
        hasher = blake3.blake3()
        received = 0
        etag: str | None = None
        delays = iter(self.backoff)
        while True:
            headers = {"Range": f"bytes={received}-"} if received else {}
            try:
                with self._http.stream("GET", path, headers=headers) as r:
                    if r.status_code >= 400:
                        r.read()
                        retry = r.status_code in _RETRY_STATUS and not _lasting(r)
                        delay = next(delays, None) if retry else None
                        if delay is not None:
                            _pause(retry_after(r, delay), None)
                            continue
                        raise _problem(r)
                    this_etag = _etag_hash(r.headers.get("ETag"))
                    if received:
                        if r.status_code != 206 or this_etag != etag:
                            raise DownloadError(f"file {file_id} changed while being downloaded")
                    else:
                        etag = this_etag
                    for block in r.iter_bytes(DOWNLOAD_BLOCK):
                        out.write(block)
                        hasher.update(block)
                        received += len(block)
                return etag, hasher.hexdigest(), received
            except httpx.TransportError as exc:
                delay = next(delays, None)
                if delay is None:
                    raise ConnectionFailed(f"GET {self.url}{path}: {_describe(exc)}") from exc
                _pause(delay, None)

    # -- upload ----------------------------------------------------------------

    def upload(
        self,
        path: str | os.PathLike[str],
        metadata: dict[str, Any] | None = None,
        progress: UploadProgress | None = None,
    ) -> UploadResult:
        """Upload one file, resuming an earlier unfinished upload of it if there is one.

        Raises UploadError when it cannot finish (`resumable` says whether
        running it again will continue), ProblemError when the server refuses
        a request (its `code` and `detail` say why), ChunkingError when the
        server's chunk sizes cannot be used in this chunking mode.
        """
        started = time.monotonic()
        path = Path(path)
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise UploadError(f"{path} is not a regular file", path=path)
        notify = progress or _no_progress
        try:
            info = self.info()
        except (ConnectionFailed, ProblemError) as exc:
            error = _transient(exc, path, None)
            if error is exc:
                raise
            raise error from exc
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
        else:
            try:
                plan = chunk_file(
                    path, params, self.chunking, on_bytes=lambda n: notify("hashed", n)
                )
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

        fingerprint = {
            "url": self.url,
            "path": str(path.resolve()),
            "size": before.st_size,
            "mtime_ns": before.st_mtime_ns,
            "chunking": self.chunking,
            "params": params.as_dict(),
        }
        key = UploadState.key(fingerprint)
        layout = _layout_digest(plan.chunks)
        upload_id: str | None = None
        try:
            upload_id, missing, job_id = self._resume(key, layout, plan)
            resumed = upload_id is not None
            if upload_id is None:
                upload_id, missing = self._create(path, plan, params, metadata)
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
            for index, chunk in enumerate(plan.chunks):
                if index not in missing_set:
                    notify("skipped", chunk.size)
            chunks_sent, bytes_sent = 0, 0
            if job_id is None:
                chunks_sent, bytes_sent = self._send_chunks(
                    path, upload_id, plan.chunks, sorted(missing_set), notify
                )
                job_id = self._complete(upload_id)
            job = self._wait_job(job_id)
            file_id = job.get("file_id")
            facts = self.file(file_id) if job["state"] == "succeeded" and file_id else {}
        except (ConnectionFailed, ProblemError) as exc:
            if isinstance(exc, ProblemError) and exc.code == "chunk_hash_mismatch":
                self.state.remove(key)
                raise UploadError(
                    f"{path} changed since it was hashed ({exc.detail}); try again",
                    path=path,
                    upload_id=upload_id,
                    code=exc.code,
                ) from exc
            error = _transient(exc, path, upload_id)
            if error is exc:
                raise
            raise error from exc

        self.state.remove(key)  # the upload is over either way; a new run starts afresh
        if job["state"] == "failed":
            raise UploadError(
                f"the server rejected {path}: {job.get('error') or 'no reason given'}",
                path=path,
                upload_id=upload_id,
            )
        if not file_id:
            raise ContractError(f"job {job_id} succeeded without a file_id: {job}")
        if plan.blake3 is not None and facts.get("blake3") != plan.blake3:
            raise UploadError(
                f"the server's file {file_id} has BLAKE3 {facts.get('blake3')}, "
                f"but {path} has {plan.blake3}",
                path=path,
                upload_id=upload_id,
            )
        return UploadResult(
            file_id=file_id,
            upload_id=upload_id,
            filename=facts.get("filename", path.name),
            bytes_total=plan.size,
            bytes_sent=bytes_sent,
            chunks_total=len(plan.chunks),
            chunks_sent=chunks_sent,
            chunks_skipped=len(plan.chunks) - len(missing_set),
            seconds=round(time.monotonic() - started, 3),
            blake3=facts.get("blake3", plan.blake3 or ""),
            resumed=resumed,
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
            status = self.status(upload_id)
        except ProblemError as exc:
            if exc.status != 404:
                raise
            status = None  # expired and purged, or never durable
        if status is not None:
            same = (
                status.get("total_chunks") == len(plan.chunks) and status.get("size") == plan.size
            )
            if status.get("state") == "open" and same:
                return upload_id, [int(i) for i in status.get("missing", [])], None
            # Completion was accepted before the last run ended: follow its job.
            if status.get("job_id") and status.get("state") in ("completing", "completed"):
                return upload_id, [], str(status["job_id"])
        self.state.remove(key)
        return None, [], None

    def _create(
        self,
        path: Path,
        plan: ChunkedFile,
        params: ChunkingParams,
        metadata: dict[str, Any] | None,
    ) -> tuple[str, list[int]]:
        body: dict[str, Any] = {
            "filename": path.name,
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

    def _wait_job(self, job_id: str) -> dict[str, Any]:
        # Each request waits up to JOB_WAIT seconds on the server; the job ends
        # when the server's plugins are done with the file.
        while True:
            job = self.job(job_id, wait=JOB_WAIT)
            state = job.get("state")
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


def _transient(
    exc: ConnectionFailed | ProblemError, path: Path, upload_id: str | None
) -> Exception:
    """Turn a failure that may pass (unreachable server, 5xx, 429) into a
    resumable UploadError; any other problem is raised as it is."""
    if isinstance(exc, ProblemError) and exc.status not in _RETRY_STATUS:
        return exc
    code = exc.code if isinstance(exc, ProblemError) else None
    return UploadError(
        f"upload of {path} failed: {exc}",
        path=path,
        upload_id=upload_id,
        resumable=True,
        code=code,
    )


def _etag_hash(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def _safe_name(filename: str, fallback: str) -> str:
    name = os.path.basename(filename.replace("\\", "/")).strip()
    if name in ("", ".", "..") or name.startswith("."):
        name = name.lstrip(".") or fallback
    return name

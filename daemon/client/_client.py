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

This module is `Client` and the requests it makes; the steps of one upload
are in `_upload`, a download's local file in `_download`, the retry policy in
`_retry`, the state and hash-cache files in `_state`, the errors in
`_exceptions`.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import blake3
import httpx
import msgspec
import tenacity

from . import _download
from . import _login as user_config
from ._chunking import MODES, Chunk, ChunkedFile, ChunkingParams
from ._collect import collect
from ._download import DOWNLOAD_BLOCK, DownloadProgress
from ._exceptions import (
    ConnectionFailed,
    ContractError,
    DownloadError,
    ProblemError,
    UploadError,
    _describe,
    _refuse_certificate,
)
from ._models import (
    FileInfo,
    JobInfo,
    Planned,
    Status,
    UploadResult,
    UploadStatus,
    _FileList,
    verdict_in_words,
)
from ._retry import _Again, _check, _RetryPolicy
from ._state import HashCache, UploadState
from ._upload import UploadProgress, _Upload

__all__ = ["Client"]

JOB_WAIT = 30.0  # seconds the server may hold a job request open (it caps at 60)
PAGE_SIZE = 1000
_JOB_DONE = ("succeeded", "failed")
_JOB_RUNNING = ("queued", "running")


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
        elif verify is True and self.url.startswith("http://"):
            # No TLS is spoken to a plain http:// URL (the client follows no
            # redirects): spare loading the CA bundle, ~35 ms of every command.
            # A context that trusts nothing fails closed if TLS is ever tried.
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
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
        return _download.download(self, file_id, dest, force=force, progress=progress)

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
        return _Upload(
            self, path, filename=filename, metadata=metadata, progress=progress, new=new
        ).dry_run()

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
        return _Upload(
            self, path, filename=filename, metadata=metadata, progress=progress, new=new
        ).run(check)

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

    def _put_run(
        self,
        path: Path,
        upload_id: str,
        run: list[tuple[int, Chunk]],
        fd: int,
        stop: threading.Event,
    ) -> None:
        """PUT consecutive chunks in one request body (`?from=I&count=N`),
        read from the file as the request is sent."""
        first = run[0][0]
        length = sum(chunk.size for _, chunk in run)
        body = _FileSpan(path, fd, run[0][1].offset, length)
        r = self._request(
            "PUT",
            f"/v1/uploads/{_seg(upload_id)}/chunks?from={first}&count={len(run)}",
            stop=stop,
            content=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
        )
        acks = self._json(r).get("chunks")
        sent = [(i, chunk.hash) for i, chunk in run]
        if not isinstance(acks, list) or [(a.get("index"), a.get("hash")) for a in acks] != sent:
            raise ContractError(
                f"PUT chunks {first}..{run[-1][0]}: the server acknowledged {str(acks)[:300]}"
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


def _seg(value: str) -> str:
    """A path segment: ids come from users too, so never let them add path parts."""
    return quote(str(value), safe="")


def _etag_hash(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


class _FileSpan:
    """A request body read from `fd` at `offset`, a block at a time; iterable
    again for a retry (httpx re-reads a body that is not a generator)."""

    BLOCK = 1 << 20

    def __init__(self, path: Path, fd: int, offset: int, length: int) -> None:
        self._path, self._fd, self._offset, self._length = path, fd, offset, length

    def __iter__(self) -> Iterator[bytes]:
        offset, end = self._offset, self._offset + self._length
        while offset < end:
            data = os.pread(self._fd, min(self.BLOCK, end - offset), offset)
            if not data:
                raise UploadError(
                    f"{self._path} shrank while being uploaded; try again", path=self._path
                )
            offset += len(data)
            yield data

"""One file's upload, step by step, for `Client.upload` and its dry run
`Client.plan`: hash the file (or take its chunks from the hash cache), answer
with the tenant's accepted file of the same name and content if there is one,
resume an earlier unfinished upload of it or create one (its state file saved
before the first chunk is sent), send the missing chunks `parallel` at a time,
complete it, wait for the server's plugins and check what they made of it.

The requests themselves are the client's (`Client._create`, `_put_run`,
`_complete`, `_wait_job`, ...).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import blake3

from ._chunking import Chunk, ChunkedFile, ChunkingParams, FileChangedError, chunk_file
from ._exceptions import ConnectionFailed, ContractError, ProblemError, Rejected, UploadError
from ._models import FileInfo, JobInfo, Planned, UploadResult, verdict_in_words
from ._retry import _RETRY_STATUS, _Stopped
from ._state import HashCache, UploadState

if TYPE_CHECKING:
    from ._client import Client


# Runs of missing chunks go in one request each: at most RUN_BYTES (a failed
# request re-sends that much), spread over the parallel requests when the
# file is small, but not below MIN_RUN_BYTES.
RUN_BYTES = 32 << 20
MIN_RUN_BYTES = 4 << 20


class UploadProgress(Protocol):
    """Told how an upload advances: `kind` is one of

    - "hashed": `nbytes` more of the file were read and hashed;
    - "skipped": one chunk of `nbytes` need not be sent (the server has it);
    - "sent": one chunk of `nbytes` was sent and acknowledged;
    - "processing": every byte is on the server; its plugins are at work (`nbytes` 0).

    "sent" is reported from worker threads; the others from the calling thread.
    """

    def __call__(self, kind: str, nbytes: int) -> None: ...


class _Upload:
    """One upload (or dry run) of the file at `path`, named `filename` on the
    server (default its own name), by `client`."""

    def __init__(
        self,
        client: Client,
        path: str | os.PathLike[str],
        *,
        filename: str | None,
        metadata: dict[str, Any] | None,
        progress: UploadProgress | None,
        new: bool,
    ) -> None:
        self.client = client
        self.path = Path(path)
        self.name = filename or self.path.name
        self.metadata = metadata
        self.notify = progress or _no_progress
        self.new = new

    # -- the upload --------------------------------------------------------

    def run(self, check: bool) -> UploadResult:
        """`Client.upload`: see there."""
        started = time.monotonic()
        path, notify = self.path, self.notify
        before, params, plan = self._hash()
        base = {"path": str(path), "bytes_total": plan.size, "chunks_total": len(plan.chunks)}

        if not self.new and plan.blake3:
            answer = self._already_uploaded(plan, base, started)
            if answer is not None:
                return answer

        fingerprint = self._fingerprint(before, params)
        key = UploadState.key(fingerprint)
        upload_id: str | None = None
        try:
            upload_id, missing, job_id, resumed = self._open(key, fingerprint, plan, params)
            missing_set = set(missing)
            on_server = self._skip_present(plan.chunks, missing_set)
            chunks_sent, bytes_sent = 0, 0
            if job_id is None:
                chunks_sent, bytes_sent = self._send_chunks(
                    upload_id, plan.chunks, sorted(missing_set)
                )
                job_id = self.client._complete(upload_id)
            notify("processing", 0)
            job = self.client._wait_job(job_id)
            file_id = job.file_id
            facts = self.client.file(file_id) if file_id else None
        except (ConnectionFailed, ProblemError) as exc:
            self._failed(exc, key, upload_id)

        self.client.state.remove(key)  # the upload is over either way; a new run starts afresh
        facts = self._made_file(facts, job, job_id, plan, upload_id)
        result = _result(
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

    def _already_uploaded(
        self, plan: ChunkedFile, base: dict[str, Any], started: float
    ) -> UploadResult | None:
        """The result of an idempotent upload: the tenant's accepted file with
        this name and content (and metadata, if given), if there is one;
        nothing is sent."""
        try:
            found = self.client.find(self.name, plan.blake3, self.metadata)
            job = self.client.job(found.job_id) if found and found.job_id else None
        except (ConnectionFailed, ProblemError) as exc:
            _raise_for_upload(exc, self.path, None)
        if found is None:
            return None
        self.notify("skipped", plan.size)
        return _result(
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

    def _open(
        self,
        key: str,
        fingerprint: dict[str, Any],
        plan: ChunkedFile,
        params: ChunkingParams,
    ) -> tuple[str, list[int], str | None, bool]:
        """Resume an earlier upload of this very file, or create one and save its
        state file: (upload id, missing indices, its job id if it was completed
        already, whether it was resumed)."""
        layout = _layout_digest(plan.chunks)
        upload_id, missing, job_id = self._resume(key, layout, plan)
        resumed = upload_id is not None
        if upload_id is None:
            upload_id, missing = self.client._create(self.name, plan, params, self.metadata)
            self.client.state.save(
                key,
                {
                    **fingerprint,
                    "upload_id": upload_id,
                    "layout": layout,
                    "created": time.time(),
                },
            )
        return upload_id, missing, job_id, resumed

    def _skip_present(self, chunks: list[Chunk], missing_set: set[int]) -> int:
        """Report the chunks the server has as skipped; the bytes they hold."""
        on_server = 0
        for index, chunk in enumerate(chunks):
            if index not in missing_set:
                on_server += chunk.size
                self.notify("skipped", chunk.size)
        return on_server

    def _failed(
        self, exc: ConnectionFailed | ProblemError, key: str, upload_id: str | None
    ) -> NoReturn:
        """Raise what a failed request means for the upload (see _raise_for_upload);
        a chunk whose content no longer matches its hash means the file changed."""
        if isinstance(exc, ProblemError) and exc.code == "chunk_hash_mismatch":
            self.client.state.remove(key)
            raise UploadError(
                f"{self.path} changed since it was hashed ({exc.detail}); try again",
                path=self.path,
                upload_id=upload_id,
                code=exc.code,
            ) from exc
        _raise_for_upload(exc, self.path, upload_id)

    def _made_file(
        self,
        facts: FileInfo | None,
        job: JobInfo,
        job_id: str,
        plan: ChunkedFile,
        upload_id: str | None,
    ) -> FileInfo:
        """The file the finished job made, checked against the local file's BLAKE3."""
        path = self.path
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
        return facts

    # -- the dry run -------------------------------------------------------

    def dry_run(self) -> Planned:
        """`Client.plan`: see there."""
        path, name, new, metadata = self.path, self.name, self.new, self.metadata
        before, params, plan = self._hash()
        facts = {
            "path": str(path),
            "filename": name,
            "size": plan.size,
            "chunks": len(plan.chunks),
            "blake3": plan.blake3 or "",
        }
        client = self.client
        if not new and plan.blake3 and (found := client.find(name, plan.blake3, metadata)):
            return Planned(
                **facts,
                action="already uploaded",
                bytes_on_server=plan.size,
                bytes_to_send=0,
                file_id=found.id,
            )
        record = client.state.load(UploadState.key(self._fingerprint(before, params)))
        if record and record.get("layout") == _layout_digest(plan.chunks):
            with contextlib.suppress(ProblemError):
                status = client.upload_status(str(record.get("upload_id")))
                if status.state == "open" and status.total_chunks == len(plan.chunks):
                    return Planned(
                        **facts,
                        action="resumable",
                        bytes_on_server=status.received_bytes,
                        bytes_to_send=plan.size - status.received_bytes,
                    )
        if plan.blake3:
            for other in client.iter_files(blake3=plan.blake3, limit=1):
                return Planned(
                    **facts,
                    action="content on server",
                    bytes_on_server=plan.size,
                    bytes_to_send=0,
                    file_id=None if other.filename != name else other.id,
                )
        return Planned(**facts, action="new", bytes_on_server=0, bytes_to_send=plan.size)

    # -- the steps both share ----------------------------------------------

    def _hash(self) -> tuple[os.stat_result, ChunkingParams, ChunkedFile]:
        """The file's chunks and BLAKE3 (from the hash cache when unchanged)."""
        path, notify, client = self.path, self.notify, self.client
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise UploadError(f"{path} is not a regular file", path=path)
        try:
            info = client._server_info()
        except (ConnectionFailed, ProblemError) as exc:
            _raise_for_upload(exc, path, None)
        params = ChunkingParams.from_info(info)
        if before.st_size > info["max_file_size"]:
            raise UploadError(
                f"{path} is {before.st_size} bytes, over the server's limit of "
                f"{info['max_file_size']}",
                path=path,
            )
        cache_key = HashCache.fingerprint(path, before, client.chunking, params)
        plan = client.hashes.load(cache_key)
        if plan is not None:
            notify("hashed", plan.size)
            return before, params, plan
        try:
            plan = chunk_file(path, params, client.chunking, on_bytes=lambda n: notify("hashed", n))
        except FileChangedError as exc:
            raise UploadError(f"{exc}; try again", path=path) from exc
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            before.st_size,
            before.st_mtime_ns,
            before.st_ctime_ns,
        ):
            raise UploadError(f"{path} changed while it was being hashed; try again", path=path)
        client.hashes.save(cache_key, plan)
        return before, params, plan

    def _fingerprint(self, before: os.stat_result, params: ChunkingParams) -> dict[str, Any]:
        return {
            "url": self.client.url,
            "path": str(self.path.resolve()),
            "filename": self.name,
            "size": before.st_size,
            "mtime_ns": before.st_mtime_ns,
            "chunking": self.client.chunking,
            "params": params.as_dict(),
        }

    def _resume(
        self, key: str, layout: str, plan: ChunkedFile
    ) -> tuple[str | None, list[int], str | None]:
        """(upload id, missing indices, job id) of an earlier upload of this very
        file that can be continued, or (None, [], None)."""
        record = self.client.state.load(key)
        if not record or record.get("layout") != layout or not record.get("upload_id"):
            return None, [], None
        upload_id = str(record["upload_id"])
        try:
            status = self.client.upload_status(upload_id)
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
        self.client.state.remove(key)
        return None, [], None

    def _send_chunks(
        self, upload_id: str, chunks: list[Chunk], missing: list[int]
    ) -> tuple[int, int]:
        """PUT the `missing` chunks, runs of consecutive ones in one request
        each (`_runs`), `parallel` requests at a time; (chunks, bytes) sent."""
        if not missing:
            return 0, 0
        path, notify = self.path, self.notify
        stop = threading.Event()
        lock = threading.Lock()
        todo = iter(_runs(chunks, missing, self.client.parallel))
        failures: list[BaseException] = []
        sent = [0, 0]

        def work(fd: int) -> None:
            while True:
                with lock:
                    run = None if stop.is_set() else next(todo, None)
                if run is None:
                    return
                try:
                    self.client._put_run(path, upload_id, run, fd, stop)
                except _Stopped:
                    return
                except BaseException as exc:
                    with lock:
                        failures.append(exc)
                    stop.set()
                    return
                for _, chunk in run:
                    with lock:
                        sent[0] += 1
                        sent[1] += chunk.size
                    notify("sent", chunk.size)

        fd = os.open(path, os.O_RDONLY)
        try:
            workers = min(self.client.parallel, len(missing))
            with ThreadPoolExecutor(workers, thread_name_prefix="chunk-put") as pool:
                futures = [pool.submit(work, fd) for _ in range(workers)]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    stop.set()  # e.g. Ctrl-C: let in-flight requests finish, start no more
                    raise
        finally:
            os.close(fd)
        if failures:
            raise failures[0]
        return sent[0], sent[1]


def _runs(chunks: list[Chunk], missing: list[int], parallel: int) -> list[list[tuple[int, Chunk]]]:
    """The missing chunks as runs of consecutive indexes, each at most
    `RUN_BYTES` (less when that leaves a worker idle: the bytes spread over
    `parallel` requests, but no run under `MIN_RUN_BYTES`)."""
    total = sum(chunks[i].size for i in missing)
    target = max(MIN_RUN_BYTES, min(RUN_BYTES, -(-total // parallel)))
    runs: list[list[tuple[int, Chunk]]] = []
    run: list[tuple[int, Chunk]] = []
    run_bytes = 0
    for index in sorted(missing):
        chunk = chunks[index]
        if run and (run[-1][0] != index - 1 or run_bytes + chunk.size > target):
            runs.append(run)
            run, run_bytes = [], 0
        run.append((index, chunk))
        run_bytes += chunk.size
    if run:
        runs.append(run)
    return runs


# -- helpers ---------------------------------------------------------------


def _result(facts: FileInfo, job: JobInfo | None, **fields: Any) -> UploadResult:
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


def _layout_digest(chunks: list[Chunk]) -> str:
    """Names a chunk layout, so that a resumed upload is known to have the same one."""
    h = blake3.blake3()
    for c in chunks:
        h.update(c.size.to_bytes(8, "big") + bytes.fromhex(c.hash))
    return h.hexdigest()


def _no_progress(kind: str, nbytes: int) -> None:
    pass

"""The job runner: finishes accepted completions and runs the plugins.

A job is created when a completion is accepted (`Store.begin_completion`).
The runner verifies and records the file (`Store.finish_completion`), runs
the processing hooks over it (detect → validate → scan → describe → lineage),
records the verdict (`Store.conclude`), then runs notify and pipeline hooks,
and marks the job succeeded (file accepted) or failed (rejected, with the
reason). Jobs are persisted, so those a crash interrupted run again at start.

Of several worker processes sharing a data directory, one runs the jobs (the
leader, see `leader.py`): the others only create them, and the runner finds
them by polling the store's open jobs.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio
from ingestd import cas
from ingestd.cas import JobState, SessionState
from ingestd.plugins import (
    REUSABLE_STAGES,
    Detection,
    FileFacts,
    Outcome,
    Plugins,
    Processing,
)
from ingestd.plugins.worker import RECORD_FIELDS, make_request, read_answer

from . import logs
from .metrics import Metrics
from .outbox import OutboxService, StoreOutbox
from .threads import Threads

log = logging.getLogger("ingestd.jobs")
slog = logs.get_logger("ingestd.jobs")

# Seconds between looks for jobs another process created, and between looks
# at a job another process runs, for a waiter here.
POLL_INTERVAL = 0.05
REMEMBERED_JOBS = 10_000


class JobRunner:
    def __init__(
        self,
        store: cas.Store,
        threads: Threads,
        plugins: Plugins,
        metrics: Metrics,
        outbox: OutboxService,
        *,
        data_dir: Path,
        chunk_store: Mapping[str, Any] | None = None,
        index: Mapping[str, Any] | None = None,
        shared: bool,
        workers: int = 2,
    ) -> None:
        """`shared`: other processes share the data directory (`--workers`)."""
        self._store = store
        self._threads = threads
        self._plugins = plugins
        self._metrics = metrics
        self._outbox = outbox
        self._data_dir = data_dir
        # How the plugin worker opens the chunk store (`cas.open_chunk_store`).
        self._chunk_store = dict(chunk_store or {})
        self._index = dict(index or {})  # and the index (`cas.open_index`)
        self._workers = workers
        self._send, self._receive = trio.open_memory_channel[str](math.inf)
        self._finished: dict[str, trio.Event] = {}
        # Jobs queued or running here: a job submitted again meanwhile (a
        # retried completion request) is not run twice.
        self._active: set[str] = set()
        # Jobs this process ran lately: the watch does not start one again
        # that somehow stayed open (it would be run again at the next start).
        self._ran: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Whether this process runs jobs (it leads); until then `submit` leaves
        # a job to the process that does.
        self.running = False
        # Other processes share the data directory (`--workers`): jobs they
        # create, and jobs run there, are seen by polling. Alone, every job is
        # submitted and finished here, so events say all.
        self._shared = shared

    def submit(self, job_id: str) -> None:
        if not self.running or job_id in self._active:
            return
        self._active.add(job_id)
        self._send.send_nowait(job_id)

    async def run(self) -> None:
        """Resume unfinished jobs, then process those submitted here or created by
        other processes, until cancelled."""
        self.running = True
        for job in await self._threads.run(self._store.jobs.unfinished):
            self.submit(job.id)
        async with trio.open_nursery() as nursery:
            for _ in range(self._workers):
                nursery.start_soon(self._work)
            if self._shared:
                nursery.start_soon(self._watch)
            # Copies a stop interrupted (their files were accepted before it).
            for file_id in await self._threads.run(self._store.copies_due):
                await self._write_copy(file_id)

    async def _write_copy(self, file_id: str) -> None:
        """An accepted file's materialised copy, after its job has answered:
        derived data, so a failure is logged and retried at the next start."""
        try:
            await self._threads.run(self._store.write_copy, file_id)
        except Exception:
            log.exception(
                "could not write the copy of file %s; retrying at the next start", file_id
            )

    async def _watch(self) -> None:
        store = self._store
        while True:
            await trio.sleep(POLL_INTERVAL)
            # A read of the open jobs only: a lookup in LMDB's memory map,
            # cheap enough for the event loop.
            for job_id in store.jobs.open_ids():
                if job_id not in self._ran:
                    self.submit(job_id)

    async def wait(self, job_id: str, tenant: str, timeout: float) -> cas.Job:
        """The job, once finished or after `timeout` seconds, whichever is first."""
        # Registered before the state is read, so a job finishing in between
        # still wakes this waiter.
        event = self._finished.setdefault(job_id, trio.Event())
        try:
            job = await self._threads.run(self._store.jobs.get, job_id, tenant)
        except cas.UnknownJob:
            self._finished.pop(job_id, None)
            raise
        if job.state in cas.FINISHED_JOB:
            # Nothing will set it now; set it so it can go (and wakes any waiter).
            self._finished.pop(job_id, event).set()
            return job
        if timeout <= 0:
            return job
        deadline = trio.current_time() + timeout
        step = POLL_INTERVAL if self._shared else math.inf
        while True:
            # The event fires when this process ran the job; one run by
            # another process is seen by looking again.
            with trio.move_on_at(min(deadline, trio.current_time() + step)):
                await event.wait()
            # An LMDB read: cheap enough for the event loop.
            job = self._store.jobs.get(job_id, tenant)
            if job.state in cas.FINISHED_JOB:
                # However it finished, wake any other waiter and let the event go.
                self._finished.pop(job_id, event).set()
                return job
            if trio.current_time() >= deadline:
                return job

    async def _work(self) -> None:
        async for job_id in self._receive:
            try:
                # Every line logged meanwhile (plugins' too) names the job.
                with structlog.contextvars.bound_contextvars(job_id=job_id):
                    await self._process(job_id)
            except cas.UnknownFile:
                await self._end_failed(job_id, "its file was deleted during processing")
            except Exception as exc:  # one bad job must not stop the others
                log.exception("job %s failed unexpectedly", job_id)
                await self._end_failed(job_id, f"internal error: {type(exc).__name__}: {exc}")
            self._active.discard(job_id)
            self._ran[job_id] = None
            if len(self._ran) > REMEMBERED_JOBS:
                self._ran.popitem(last=False)
            event = self._finished.pop(job_id, None)
            if event is not None:
                event.set()
            # After the answer, so that the client does not wait for it.
            await self._write_copy_of(job_id)

    async def _write_copy_of(self, job_id: str) -> None:
        try:
            job = await self._threads.run(self._store.jobs.get, job_id)
        except cas.UnknownJob:
            return
        if job.verdict == "accepted":
            await self._write_copy(job.file_id)

    async def _end_failed(self, job_id: str, error: str) -> None:
        """Make sure a job that could not run to its end ends failed, with `error`,
        and that a file it left undecided is rejected for the same reason
        (otherwise it would wait in `processing`, and be retried at every start)."""
        try:
            job = await self._threads.run(
                self._store.jobs.update, job_id, JobState.FAILED, error=error
            )
            slog.warning("job failed", job_id=job_id, file_id=job.file_id, error=error)
            file = await self._threads.run(self._store.file_any, job.file_id)
            if file.state == cas.FileState.PROCESSING:
                await self._threads.run(
                    functools.partial(
                        self._store.conclude, file.id, accepted=False, reason=f"processing: {error}"
                    )
                )
        except cas.UnknownFile:
            pass  # no file was recorded, or it is gone: nothing left to decide
        except Exception:
            log.exception("could not record the failure of job %s", job_id)

    async def _process(self, job_id: str) -> None:
        store = self._store
        started = trio.current_time()
        job = await self._threads.run(store.jobs.get, job_id)
        if job.state in cas.FINISHED_JOB:
            return
        session = await self._threads.run(store.session, job.session_id, job.tenant)
        if session.state == SessionState.COMPLETING:
            await self._threads.run(store.jobs.update, job_id, JobState.RUNNING)
            try:
                await self._threads.run(store.finish_completion, session.id)
            except cas.ChecksumMismatch as exc:
                # The store rejected the session and failed the job.
                self._verdict(job, "rejected", started, {}, reason=exc.detail)
                return
            except cas.StoreError as exc:
                # Cancelled meanwhile (the job is failed already), or storage failed.
                await self._threads.run(
                    store.jobs.update, job_id, JobState.FAILED, error=exc.detail
                )
                return
            session = await self._threads.run(store.session, job.session_id, job.tenant)
        if session.state == SessionState.PROCESSING:
            await self._threads.run(store.jobs.update, job_id, JobState.RUNNING)
            await self._run_plugins(job, started)
            return
        if session.state == SessionState.COMPLETED:
            await self._threads.run(
                store.jobs.update, job_id, JobState.SUCCEEDED, verdict="accepted"
            )
            return
        error = f"upload {session.id} is {session.state}"
        if session.reason:
            error += f": {session.reason}"
        await self._threads.run(store.jobs.update, job_id, JobState.FAILED, error=error)

    def _verdict(
        self,
        job: cas.Job,
        verdict: str,
        started: float,
        plugins: dict[str, str],
        reason: str | None = None,
        reused_from: str | None = None,
    ) -> None:
        """The job's verdict line and metrics."""
        seconds = trio.current_time() - started
        metrics = self._metrics
        metrics.jobs.labels(verdict).inc()
        metrics.job_seconds.labels(verdict).observe(seconds)
        for plugin, outcome in plugins.items():
            metrics.plugin_outcomes.labels(plugin, outcome).inc()
        slog.info(
            "job verdict",
            job_id=job.id,
            file_id=job.file_id,
            upload_id=job.session_id,
            tenant=job.tenant,
            verdict=verdict,
            reason=reason,
            duration=round(seconds, 6),
            plugins=plugins,
            reused_from=reused_from,
        )

    async def _run_plugins(self, job: cas.Job, started: float) -> None:
        store = self._store
        file = await self._threads.run(store.file_any, job.file_id)
        facts = FileFacts(
            file_id=file.id,
            upload_id=file.session_id,
            tenant=file.tenant,
            filename=file.filename,
            size=file.size,
            blake3=file.blake3,
            sha256=file.sha256,
            created=file.created,
            declared_metadata=file.metadata,
        )
        run = Processing(
            self._plugins,
            facts,
            # Buffered, so that plugins can read lines and small headers cheaply.
            lambda: io.BufferedReader(store.open_file(file.id, file.tenant), 1 << 20),
            outbox_for=lambda plugin: StoreOutbox(self._store, self._outbox, plugin),
            files=TenantFiles(store, file.tenant),
            limiter=self._threads.limiter,
            on_error=lambda plugin, stage: self._metrics.plugin_errors.labels(plugin, stage).inc(),
        )
        key = self._plugins.decision_key(facts)
        earlier = await self._threads.run(self._earlier_decision, file, key)
        if earlier is not None:
            # Milliseconds instead of a worker process reading the whole file.
            run.reuse(earlier.results, file_detection(earlier), earlier.id)
            outcome = await run.decide()
        elif self._plugins.isolated:
            outcome = await self._decide_in_child(run, file)
        else:
            outcome = await run.decide()
        # Only a clean acceptance is a decision to reuse: not a rejection, and
        # not one a failing plugin (under on_error = "accept") had no say in.
        clean = outcome.accepted and not any(stage in REUSABLE_STAGES for _, stage in run.failed)
        detection = (
            msgspec.to_builtins(dataclasses.asdict(outcome.detection))
            if outcome.detection
            else None
        )
        await self._threads.run(
            functools.partial(
                store.conclude,
                file.id,
                accepted=outcome.accepted,
                reason=outcome.reason,
                described=msgspec.to_builtins(dict(outcome.metadata)),
                detection=detection,
                parents=list(outcome.parents),
            )
        )
        outcome = await run.announce(outcome)
        verdict = "accepted" if outcome.accepted else "rejected"
        self._verdict(
            job,
            verdict,
            started,
            plugin_outcomes(outcome.results),
            reason=None if outcome.accepted else outcome.reason,
            reused_from=run.reused_from,
        )
        await self._threads.run(
            functools.partial(
                store.jobs.update,
                job.id,
                JobState.SUCCEEDED if outcome.accepted else JobState.FAILED,
                error=None if outcome.accepted else f"rejected: {outcome.reason}",
                results=msgspec.to_builtins(dict(outcome.results)),
                verdict=verdict,
                timings=run.timings,
                decision_key=key if clean else None,
                reused_from=run.reused_from,
            )
        )

    def _earlier_decision(self, file: cas.FileRecord, key: str) -> _Earlier | None:
        """The job that accepted a file with the same decision key, while that
        file is still there and accepted (so its detection can be reused)."""
        if not self._plugins.settings.reuse_verdicts:
            return None
        store = self._store
        job = store.jobs.decided(key)
        if job is None or job.file_id == file.id:
            return None
        try:
            earlier = store.file(job.file_id, file.tenant)
        except cas.UnknownFile:
            return None
        if earlier.state != cas.FileState.ACCEPTED or earlier.blake3 != file.blake3:
            return None
        return _Earlier(job.id, job.results, earlier.detection)

    async def _decide_in_child(self, run: Processing, file: cas.FileRecord) -> Outcome:
        """Run the deciding stages in `python -m ingestd.plugins.worker`."""
        entries = await self._threads.run(self._store.manifest, file.id)
        request = make_request(
            self._plugins.settings,
            run.facts,
            entries,
            str(self._data_dir),
            self._chunk_store,
            self._index,
        )
        # Each stage's calls are bounded by the plugin timeout inside the child;
        # this only stops a child that hangs outside them.
        limit = self._plugins.settings.timeout * 6 + 60
        try:
            with trio.fail_after(limit):
                done = await trio.run_process(
                    [sys.executable, "-m", "ingestd.plugins.worker"],
                    stdin=request,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
        except trio.TooSlowError:
            error = f"no answer within {limit:g} s"
            run.record_failure("worker", "decide", error)
            self._metrics.plugin_errors.labels("worker", "decide").inc()
            log.warning(
                "plugin worker: %s",
                error,
                extra={"plugin": "worker", "stage": "decide", "error": error},
            )
            return run.import_state(run.export_state())
        text = relay_child_log(done.stderr.decode(errors="replace"))
        if done.returncode != 0:
            tail = text.strip().splitlines()[-1:] or ["?"]
            error = f"exited {done.returncode}: {tail[0]}"
            run.record_failure("worker", "decide", error)
            log.warning(
                "plugin worker %s",
                error,
                extra={"plugin": "worker", "stage": "decide", "error": error},
            )
            answer = {"state": run.export_state(), "messages": []}
        else:
            answer = read_answer(done.stdout)
        outcome = run.import_state(answer["state"])
        for plugin, stage in run.failed:
            self._metrics.plugin_errors.labels(plugin, stage).inc()
        for message in answer["messages"]:
            outbox = StoreOutbox(self._store, self._outbox, message["plugin"])
            await self._threads.run(
                functools.partial(outbox.enqueue, message["payload"], key=message["key"])
            )
        return outcome


def relay_child_log(stderr: str) -> str:
    """Log the plugin worker's records (JSON lines, see `plugins.worker`) as
    this process's own, fields and all (and the job id bound here); returns
    what else it printed (a crash's traceback, a plugin's print), logged as
    one record."""
    other: list[str] = []
    for line in stderr.splitlines():
        try:
            entry = json.loads(line) if line.startswith("{") else None
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            other.append(line)
            continue
        level = logging.getLevelName(str(entry.pop("level", "info")).upper())
        logger = logging.getLogger(str(entry.pop("logger", "ingestd.plugins")))
        event = str(entry.pop("event", ""))
        extra = {k: v for k, v in entry.items() if k not in RECORD_FIELDS}
        logger.log(level if isinstance(level, int) else logging.INFO, "%s", event, extra=extra)
    text = "\n".join(other)
    if text.strip():
        log.warning("plugin worker printed: %s", text, extra={"plugin": "worker"})
    return text


def plugin_outcomes(results: Any) -> dict[str, str]:
    """Each plugin's part in a job: "error" (a hook raised or timed out),
    "rejected" (a verdict of its said no), else "ok"."""
    out = {}
    for plugin, stages in dict(results).items():
        answers = [a for a in dict(stages).values() if isinstance(a, dict)]
        if any("error" in a for a in answers):
            out[plugin] = "error"
        elif any(a.get("ok") is False for a in answers):
            out[plugin] = "rejected"
        else:
            out[plugin] = "ok"
    return out


@dataclasses.dataclass(frozen=True)
class _Earlier:
    id: str  # the job
    results: dict[str, Any]
    detection: dict[str, Any] | None  # as the file record keeps it


def file_detection(earlier: _Earlier) -> Detection | None:
    return Detection(**earlier.detection) if earlier.detection else None


class TenantFiles:
    """The `FileLookup` plugins get: one tenant's files only."""

    def __init__(self, store: cas.Store, tenant: str) -> None:
        self._store = store
        self._tenant = tenant

    def by_blake3(self, digest: str) -> list[str]:
        return self._store.files_by_blake3(digest, self._tenant)

    def exists(self, file_id: str) -> bool:
        try:
            return self._store.file(file_id, self._tenant).state != cas.FileState.REJECTED
        except cas.UnknownFile:
            return False

"""The durable queues: processing jobs and the plugins' outbox.

A job is created in the transaction that starts a session's completion and
ends `succeeded` or `failed` (with a reason); the daemon's job runner moves
it. Outbox entries are messages plugins queued for delivery, kept until
delivered or given up ("dead").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lmdb
import msgspec

from . import records
from .errors import StorageError, UnknownJob
from .index import Index
from .records import Job, JobState, OutboxEntry, OutboxState
from .sessions import new_id

FINISHED_JOB = frozenset({JobState.SUCCEEDED, JobState.FAILED})


class Jobs:
    def __init__(self, index: Index, clock: Callable[[], float]) -> None:
        self._index = index
        self._clock = clock

    def find(self, txn: lmdb.Transaction, job_id: str) -> Job | None:
        return self._index.get(txn, "jobs", job_id.encode(), Job)

    def create(
        self, txn: lmdb.Transaction, *, job_id: str, tenant: str, session_id: str, file_id: str
    ) -> Job:
        now = self._clock()
        job = Job(
            id=job_id,
            tenant=tenant,
            session_id=session_id,
            file_id=file_id,
            state=JobState.QUEUED,
            created=now,
            updated=now,
        )
        self._index.put(txn, "jobs", job_id.encode(), job)
        txn.put(job_id.encode(), b"", db=self._index.db["open_jobs"])
        return job

    def open_ids(self) -> list[str]:
        """Ids of the jobs created and not finished yet (a read of those only:
        cheap enough to poll, e.g. by the process that runs jobs created by
        others)."""
        with self._index.reader() as txn:
            return [k.decode() for k, _ in self._index.scan(txn, "open_jobs", values=False)]

    def set(self, txn: lmdb.Transaction, job_id: str, state: JobState, **changes: object) -> Job:
        """Change a job. A finished job stays as it is (first finish wins: a cancel
        that failed the job is not undone by the runner marking it running)."""
        job = self.find(txn, job_id)
        if job is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        if job.state in FINISHED_JOB:
            return job
        job = msgspec.structs.replace(job, state=state, updated=self._clock(), **changes)
        self._index.put(txn, "jobs", job_id.encode(), job)
        if state in FINISHED_JOB:
            txn.delete(job_id.encode(), db=self._index.db["open_jobs"])
        return job

    def fail(self, txn: lmdb.Transaction, job_id: str | None, error: str) -> None:
        """End an unfinished job as failed (a no-op for a finished or absent one)."""
        if job_id and self.find(txn, job_id) is not None:
            self.set(txn, job_id, JobState.FAILED, error=error)

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """A job by id; with `tenant`, another tenant's job is reported as unknown."""
        with self._index.reader() as txn:
            job = self.find(txn, job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            raise UnknownJob(f"no job with id {job_id!r}")
        return job

    def update(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        results: dict[str, object] | None = None,
        verdict: str | None = None,
        timings: dict[str, dict[str, float]] | None = None,
        decision_key: str | None = None,
        reused_from: str | None = None,
    ) -> Job:
        """Change a job; one that succeeds with a `decision_key` is remembered
        as the job that made that decision (`decided`)."""

        def op(txn: lmdb.Transaction) -> Job:
            job = self.find(txn, job_id)
            if job is None:
                raise UnknownJob(f"no job with id {job_id!r}")
            job = self.set(
                txn,
                job_id,
                state,
                error=error,
                results=job.results if results is None else results,
                verdict=verdict if verdict is not None else job.verdict,
                timings=job.timings if timings is None else timings,
                decision_key=decision_key or job.decision_key,
                reused_from=reused_from or job.reused_from,
            )
            if decision_key and job.state == JobState.SUCCEEDED:
                txn.put(decision_key.encode(), job_id.encode(), db=self._index.db["decisions"])
            return job

        return self._index.write(op)

    def decided(self, decision_key: str) -> Job | None:
        """The job that last succeeded with this decision key, if it is still there."""
        with self._index.reader() as txn:
            job_id = txn.get(decision_key.encode(), db=self._index.db["decisions"])
            return None if job_id is None else self.find(txn, job_id.decode())

    def unfinished(self) -> list[Job]:
        """Jobs queued or running, e.g. when a crash interrupted them (a scan
        of every job: those of a data directory older than `open_ids` too)."""
        with self._index.reader() as txn:
            return [job for job in self._all(txn) if job.state not in FINISHED_JOB]

    def _all(self, txn: lmdb.Transaction) -> Iterator[Job]:
        for _, raw in self._index.scan(txn, "jobs"):
            yield records.decode(Job, raw)


class Outbox:
    def __init__(self, index: Index, clock: Callable[[], float]) -> None:
        self._index = index
        self._clock = clock

    def put(self, plugin: str, payload: dict[str, object], message_id: str | None = None) -> str:
        """Queue a message for delivery; the same `message_id` is queued once."""
        message_id = message_id or new_id()

        def op(txn: lmdb.Transaction) -> str:
            if txn.get(message_id.encode(), db=self._index.db["outbox"]) is None:
                now = self._clock()
                entry = OutboxEntry(message_id, plugin, payload, now, now)
                self._index.put(txn, "outbox", message_id.encode(), entry)
            return message_id

        return self._index.write(op)

    def all(self) -> list[OutboxEntry]:
        with self._index.reader() as txn:
            return [records.decode(OutboxEntry, raw) for _, raw in self._index.scan(txn, "outbox")]

    def due(self, limit: int = 100) -> list[OutboxEntry]:
        now = self._clock()
        due = [e for e in self._pending() if e.next_attempt <= now]
        return sorted(due, key=lambda e: e.next_attempt)[:limit]

    def next_time(self) -> float | None:
        return min((e.next_attempt for e in self._pending()), default=None)

    def done(self, message_id: str) -> None:
        self._index.write(lambda txn: txn.delete(message_id.encode(), db=self._index.db["outbox"]))

    def failed(self, message_id: str, error: str, retry_at: float | None) -> OutboxEntry:
        """Record a failed attempt; `retry_at` None means give up (state "dead")."""

        def op(txn: lmdb.Transaction) -> OutboxEntry:
            entry = self._index.get(txn, "outbox", message_id.encode(), OutboxEntry)
            if entry is None:
                raise StorageError(f"outbox message {message_id} vanished")
            entry = msgspec.structs.replace(
                entry,
                attempt=entry.attempt + 1,
                last_error=error,
                next_attempt=retry_at if retry_at is not None else entry.next_attempt,
                state=OutboxState.PENDING if retry_at is not None else OutboxState.DEAD,
            )
            self._index.put(txn, "outbox", message_id.encode(), entry)
            return entry

        return self._index.write(op)

    def _pending(self) -> list[OutboxEntry]:
        return [e for e in self.all() if e.state == OutboxState.PENDING]

"""The job runner: finishes accepted completions in the background.

A job is created when a completion is accepted (`Store.begin_completion`).
The runner verifies and records the file (`Store.finish_completion`) and
marks the job succeeded or failed. Jobs are persisted, so those a crash
interrupted are picked up again at start. The plugin stages of processing
hook in here.
"""

from __future__ import annotations

import logging
import math

import trio
from ingestd import cas
from ingestd.cas import JobState, SessionState

from .runtime import Runtime

log = logging.getLogger("ingestd.jobs")

FINISHED = (JobState.SUCCEEDED, JobState.FAILED)


class JobRunner:
    def __init__(self, rt: Runtime, workers: int = 2) -> None:
        self._rt = rt
        self._workers = workers
        self._send, self._receive = trio.open_memory_channel[str](math.inf)
        self._finished: dict[str, trio.Event] = {}

    def submit(self, job_id: str) -> None:
        self._send.send_nowait(job_id)

    async def run(self) -> None:
        """Resume unfinished jobs, then process submitted ones until cancelled."""
        for job in await self._rt.run(self._rt.store.unfinished_jobs):
            self.submit(job.id)
        async with trio.open_nursery() as nursery:
            for _ in range(self._workers):
                nursery.start_soon(self._work)

    async def wait(self, job_id: str, tenant: str, timeout: float) -> cas.Job:
        """The job, once finished or after `timeout` seconds, whichever is first."""
        job = await self._rt.run(self._rt.store.job, job_id, tenant)
        if job.state in FINISHED or timeout <= 0:
            return job
        event = self._finished.setdefault(job_id, trio.Event())
        with trio.move_on_after(timeout):
            await event.wait()
        return await self._rt.run(self._rt.store.job, job_id, tenant)

    async def _work(self) -> None:
        async for job_id in self._receive:
            try:
                await self._process(job_id)
            except Exception:  # one bad job must not stop the others
                log.exception("job %s failed unexpectedly", job_id)
            event = self._finished.pop(job_id, None)
            if event is not None:
                event.set()

    async def _process(self, job_id: str) -> None:
        store = self._rt.store
        job = await self._rt.run(store.job, job_id)
        if job.state in FINISHED:
            return
        session = await self._rt.run(store.session, job.session_id, job.tenant)
        if session.state == SessionState.COMPLETING:
            await self._rt.run(store.update_job, job_id, JobState.RUNNING)
            try:
                await self._rt.run(store.finish_completion, session.id)
            except cas.ChecksumMismatch:
                return  # the store rejected the session and failed the job
            except cas.StoreError as exc:
                await self._rt.run(store.update_job, job_id, JobState.FAILED, error=exc.detail)
                return
            except Exception as exc:
                log.exception("completing upload %s failed", session.id)
                await self._rt.run(
                    store.update_job, job_id, JobState.FAILED, error=f"internal error: {exc}"
                )
                return
        elif session.state != SessionState.COMPLETED:
            error = f"upload {session.id} is {session.state}"
            await self._rt.run(store.update_job, job_id, JobState.FAILED, error=error)
            return
        await self._rt.run(store.update_job, job_id, JobState.SUCCEEDED)

"""bench/processing.py's uploads and jobs: a timed `Client.upload` that reports
the moment its completion is accepted, the job's polling, and the figures of a
job (its timings by plugin and stage, and what of it ran beside an upload)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _clients import REQUEST_TIMEOUT, PhaseClock
from _common import MIB, BenchError, ServerProcess

POLL_INTERVAL = 0.2  # seconds between job polls while the busy upload runs
JOB_WAIT = 30.0  # seconds per long-poll of GET /v1/jobs/{id}
RUNNING = ("queued", "running")
FINISHED = ("succeeded", "failed")
STAGES = ("detect", "validate", "scan", "describe", "lineage", "notify", "pipeline")


def tracing_client_class() -> type:
    """`Client` that reports the job id the moment the daemon accepts the
    completion (`Client.upload` itself returns only once the job is over)."""
    from ingestd.daemon.client import Client

    if not callable(getattr(Client, "_complete", None)):
        raise BenchError("ingestd.daemon.client.Client has no _complete(upload_id) to hook")

    class TracingClient(Client):
        def __init__(self, *args: Any, on_complete=None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_complete = on_complete

        def _complete(self, upload_id: str) -> str:
            job_id = super()._complete(upload_id)
            if self.on_complete is not None:
                self.on_complete(upload_id, job_id)
            return job_id

    return TracingClient


class Upload:
    """One `Client.upload` of a file, timed; `completed` is set when the job is accepted."""

    def __init__(self, server: ServerProcess, path: Path, state_dir: Path, parallel: int) -> None:
        self.server = server
        self.path = path
        self.size = path.stat().st_size
        self.state_dir = state_dir
        self.parallel = parallel
        self.clock = PhaseClock()
        self.completed = threading.Event()
        self.job_id: str | None = None
        self.upload_id: str | None = None
        self.complete_wall: float | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.t0 = self.t1 = None
        self.wall0 = self.wall1 = None

    def _on_complete(self, upload_id: str, job_id: str) -> None:
        self.upload_id, self.job_id = upload_id, job_id
        self.complete_wall = time.time()
        self.completed.set()

    def __call__(self) -> Any:
        from ingestd.daemon.client import UploadError

        client_class = tracing_client_class()
        self.wall0, self.t0 = time.time(), time.perf_counter()
        self.clock.start()
        try:
            with client_class(
                self.server.base_url,
                parallel=self.parallel,
                chunking="cdc",
                state_dir=self.state_dir,
                on_complete=self._on_complete,
            ) as client:
                # new=True: a re-upload of the same file is a new upload (whose
                # job the bench measures), not answered with the accepted file.
                self.result = client.upload(self.path, progress=self.clock, new=True)
        except UploadError as exc:  # e.g. a plugin rejected the file: the job says why
            self.error = exc
        finally:
            self.clock.stop()
            self.t1, self.wall1 = time.perf_counter(), time.time()
        return self.result

    @property
    def seconds(self) -> float:
        assert self.t0 is not None and self.t1 is not None
        return self.t1 - self.t0

    def summary(self, blake3: str) -> dict[str, Any]:
        r = self.result
        fields = ("file_id", "upload_id", "bytes_total", "bytes_sent", "chunks_total")
        fields += ("chunks_sent", "chunks_skipped", "blake3", "resumed")
        res = {f: getattr(r, f, None) for f in fields} if r is not None else None
        ok = self.error is None and r is not None and r.blake3 == blake3
        return {
            "file": self.path.name,
            "size_bytes": self.size,
            "seconds": self.seconds,
            "mib_s": self.size / MIB / self.seconds,
            "phases": self.clock.phases(),
            "job_id": self.job_id,
            "result": res,
            "error": None if self.error is None else str(self.error),
            "ok": ok,
        }


def get_job(base_url: str, job_id: str, wait: float = 0.0) -> dict[str, Any]:
    params = {"wait": f"{wait:g}"} if wait else None
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT + wait) as http:
        r = http.get(f"/v1/jobs/{job_id}", params=params)
    r.raise_for_status()
    return r.json()


def wait_job(base_url: str, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"job {job_id} did not finish within {timeout:.0f}s")
        job = get_job(base_url, job_id, wait=min(JOB_WAIT, max(1.0, left)))
        if job["state"] in FINISHED:
            return job


class JobMonitor(threading.Thread):
    """Polls a job (and its file) until stopped: when the file record appeared
    (the completion is done, the plugins start) and every state seen."""

    def __init__(self, base_url: str, job_id: str) -> None:
        super().__init__(name="job-monitor", daemon=True)
        self.base_url = base_url
        self.job_id = job_id
        self.stop_event = threading.Event()
        self.states: list[tuple[float, str]] = []
        self.file_seen: float | None = None
        self.errors = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT) as http:
            while not self.stop_event.is_set():
                try:
                    job = http.get(f"/v1/jobs/{self.job_id}").json()
                    now = time.time()
                    if not self.states or self.states[-1][1] != job["state"]:
                        self.states.append((now, job["state"]))
                    if self.file_seen is None and job.get("file_id"):
                        r = http.get(f"/v1/files/{job['file_id']}")
                        if r.status_code == 200:
                            self.file_seen = time.time()
                    if job["state"] in FINISHED:
                        return
                except (httpx.HTTPError, ValueError, KeyError):
                    self.errors += 1
                self.stop_event.wait(POLL_INTERVAL)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(REQUEST_TIMEOUT + 5)


# -- analysis -------------------------------------------------------------------------


def job_summary(job: dict[str, Any], size: int) -> dict[str, Any]:
    timings: dict[str, dict[str, float]] = job.get("timings") or {}
    validate = timings.get("datasets", {}).get("validate")
    scan = timings.get("pii", {}).get("scan")
    total = job["updated"] - job["created"]
    plugins = sum(s for stages in timings.values() for s in stages.values())
    by_stage = {
        stage: sum(stages.get(stage, 0.0) for stages in timings.values()) for stage in STAGES
    }
    errors = [
        f"{plugin}.{stage}: {answer['error']}"
        for plugin, stages in (job.get("results") or {}).items()
        if isinstance(stages, dict)
        for stage, answer in stages.items()
        if isinstance(answer, dict) and "error" in answer
    ]
    return {
        "job_id": job["id"],
        "state": job["state"],
        "verdict": job.get("verdict"),
        "error": job.get("error"),
        "job_seconds": total,
        "completion_seconds": total - plugins,
        "plugins_seconds": plugins,
        "stage_seconds": by_stage,
        "validate_seconds": validate,
        "scan_seconds": scan,
        "validate_mib_s": size / MIB / validate if validate else None,
        "scan_mib_s": size / MIB / scan if scan else None,
        "plugin_errors": errors,
        "timings": timings,
        "results": job.get("results"),
    }


def overlap(a0: float, a1: float, b0: float | None, b1: float | None) -> float | None:
    if b0 is None or b1 is None:
        return None
    return max(0.0, min(a1, b1) - max(a0, b0))


def busy_overlap(busy: Upload, job: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Seconds of the busy upload spent beside each part of the job. The plugin
    stages run one after another and the job ends right after the last, so
    their windows are laid out backwards from the job's end with their timings;
    the completion (verify, materialize) is what comes before."""
    assert busy.wall0 is not None and busy.wall1 is not None
    b0, b1 = busy.wall0, busy.wall1
    plugins_start = job["updated"] - summary["plugins_seconds"]
    out: dict[str, Any] = {
        "upload_window_s": b1 - b0,
        "completion": overlap(b0, b1, job["created"], plugins_start),
        "plugins": overlap(b0, b1, plugins_start, job["updated"]),
        "plugins_started_after_upload_start_s": plugins_start - b0,
        "job_finished_after_upload_s": job["updated"] - b1,
    }
    t = plugins_start
    for stage in STAGES:
        seconds = summary["stage_seconds"][stage]
        out[f"stage_{stage}"] = overlap(b0, b1, t, t + seconds)
        t += seconds
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"

"""Prometheus metrics of one daemon (its own registry, so tests can run many).

With `server.workers` > 1 the kernel hands each connection, a scrape of
`/metrics` included, to any worker. With a registry per worker, each scrape
would show one worker's counters: figures jumping between workers' totals,
which Prometheus reads as counter resets. So workers use prometheus-client's
multiprocess mode: each writes its counters and histograms to memory-mapped
files in `<data dir>/metrics/<master>/`, and whichever worker answers sums
them all (a worker that died and was restarted keeps its counts there). The
`ingestd_store_*` and `ingestd_uploads_open` gauges are read from the shared
index at scrape time; the `process_*` figures are those of the worker that
answered.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ingestd import cas
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# Seconds: from a health check to a chunk of many MiB on a slow link.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Seconds a job takes: verifying and running the plugins over a file.
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class _StoreCollector(Collector):
    """The store's size and open uploads, read at scrape time (the tenants'
    usage summed: a few LMDB records, no walk of the objects)."""

    def __init__(self, figures: Callable[[], cas.TenantUsage | None]) -> None:
        self._figures = figures

    def collect(self):
        f = self._figures()
        if f is None:  # the store is not open (yet)
            return
        gauges = [
            (
                "ingestd_store_logical_bytes",
                "Sizes of the live files (what was uploaded)",
                f.logical_bytes,
            ),
            ("ingestd_store_files", "Live files (accepted or processing)", f.files),
            (
                "ingestd_store_physical_bytes",
                "Chunk bytes the files and uploads use, each chunk once per tenant "
                "(the object bytes on disk, unless tenants share chunks)",
                f.physical_bytes,
            ),
            ("ingestd_store_chunks", "Chunks the files and uploads use, once per tenant", f.chunks),
            ("ingestd_uploads_open", "Uploads in flight (state open), all APIs", f.open_uploads),
            ("ingestd_uploads_open_bytes", "Declared sizes of the open uploads", f.open_bytes),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _master_id(pid: int) -> str:
    """The master's pid and start time (so a reused pid is not the same master)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return f"{pid}-{started}"


def use_shared_files(data_dir: Path) -> Path:
    """Switch this process (a worker of a master) to multiprocess metrics, in
    the master's directory under `<data_dir>/metrics`; the directories of
    earlier masters are removed (one daemon holds a data directory at a time).
    Call before any metric is created."""
    root = Path(data_dir) / "metrics"
    mine = root / _master_id(os.getppid())
    mine.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False) and entry.name != mine.name:
            shutil.rmtree(entry.path, ignore_errors=True)
    os.environ[MULTIPROC_ENV] = str(mine)
    values.ValueClass = values.MultiProcessValue()
    return mine


class _WorkerCollector(Collector):
    def __init__(self, worker: str) -> None:
        self._labels = [worker, str(os.getpid())]

    def collect(self):
        family = GaugeMetricFamily(
            "ingestd_worker",
            "The worker process that answered this scrape (its process_* figures are its own)",
            labels=["worker", "pid"],
        )
        family.add_metric(self._labels, 1)
        yield family


class Metrics:
    def __init__(
        self,
        store_figures: Callable[[], cas.TenantUsage | None] | None = None,
        *,
        shared_dir: Path | None = None,
        worker: str | None = None,
    ) -> None:
        """`shared_dir`: a worker's (from `use_shared_files`): the metrics are
        the sum of every worker's files there. `worker`: its slot's name."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        if store_figures is not None:
            self.registry.register(_StoreCollector(store_figures))
        if worker is not None:
            self.registry.register(_WorkerCollector(worker))
        if shared_dir is not None:
            MultiProcessCollector(self.registry, path=str(shared_dir))
            # The metrics below write to the files, which the collector reads.
            r = None
        else:
            r = self.registry
        self.requests = Histogram(
            "ingestd_request_duration_seconds",
            "HTTP requests, by method, route (the URL rule) and status, until the "
            "last byte of the answer",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.received_bytes = Counter(
            "ingestd_received_bytes",
            "Body bytes of chunk PUTs, seed chunk parts and tus PATCHes read, by API",
            ["api"],
            registry=r,
        )
        self.deduplicated_bytes = Counter(
            "ingestd_deduplicated_bytes",
            "Bytes clients did not send because the server had them (chunks of a "
            "declared /v1 chunk list attached without their bytes), by API",
            ["api"],
            registry=r,
        )
        self.stored_bytes = Counter(
            "ingestd_stored_bytes",
            "Bytes of new objects written to the store (bytes received whose object "
            "existed already are not counted), by API",
            ["api"],
            registry=r,
        )
        self.chunks = Counter(
            "ingestd_chunks",
            "Chunks: stored (attached from received bytes), repeated (the upload had "
            "them already), deduplicated (attached without their bytes)",
            ["result"],
            registry=r,
        )
        self.uploads = Counter(
            "ingestd_uploads",
            "Uploads by API and what happened: created, completed (all bytes in, "
            "handed to processing), cancelled, expired",
            ["api", "state"],
            registry=r,
        )
        self.jobs = Counter(
            "ingestd_jobs",
            "Processing jobs finished, by verdict",
            ["verdict"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "ingestd_job_duration_seconds",
            "Processing jobs, from start to verdict, by verdict",
            ["verdict"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.plugin_outcomes = Counter(
            "ingestd_plugin_verdicts",
            "Per plugin and job: ok (answered), rejected (its answer rejected the "
            "file), error (raised or timed out)",
            ["plugin", "outcome"],
            registry=r,
        )
        self.plugin_errors = Counter(
            "ingestd_plugin_errors",
            "Plugin hook calls that raised or timed out",
            ["plugin", "stage"],
            registry=r,
        )
        self.deliveries = Counter(
            "ingestd_outbox_deliveries",
            "Outbox delivery attempts, by result (delivered, retry, dead)",
            ["plugin", "result"],
            registry=r,
        )
        self.gc_runs = Counter(
            "ingestd_gc_runs", "Maintenance passes (expiry and garbage collection)", registry=r
        )
        self.gc_reclaimed_objects = Counter(
            "ingestd_gc_reclaimed_objects", "Objects garbage collection deleted", registry=r
        )
        self.gc_reclaimed_bytes = Counter(
            "ingestd_gc_reclaimed_bytes", "Bytes garbage collection freed", registry=r
        )
        self.access_refusals = Counter(
            "ingestd_access_refusals",
            "Requests refused by access control (401, 403, 421, 429), by problem code",
            ["code"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

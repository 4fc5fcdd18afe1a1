"""The one place that builds the upload core: the store (and so which
backends hold chunks and the index), then each service with exactly what it
needs. The HTTP app, the pytest fixture and the data-dir commands all start
from here; a new backend is chosen in `open_store` and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import trio
from ingestd import cas
from ingestd.plugins import Plugins

from .config import Config
from .ingest import Ingest, max_stream_size
from .jobs import JobRunner
from .leader import become_leader
from .limits import Limits
from .maintenance import Maintenance
from .metrics import Metrics
from .outbox import OutboxService
from .threads import Threads


def index_settings(config: Config) -> dict[str, Any]:
    """`cas.open_index`'s `backend` and `postgres` for `config` (the plugin
    worker and the commands open the same index from them)."""
    settings: dict[str, Any] = {"backend": config.index.backend}
    if config.index.backend == "postgres":
        i = config.index
        settings["postgres"] = {"dsn": i.dsn, "schema": i.schema, "pool_size": i.pool_size}
    return settings


def open_index(config: Config, *, readonly: bool = False, moving_into: bool = False) -> Any:
    """The index alone, for the commands that read or change only records
    (`moving_into`: `ingestd migrate` opens its target)."""
    return cas.open_index(
        config.data_dir, **index_settings(config), readonly=readonly, moving_into=moving_into
    )


def chunk_store_settings(config: Config) -> dict[str, Any]:
    """`cas.open_chunk_store`'s arguments for `config` (the plugin worker
    opens the same store from them)."""
    s = config.storage
    settings: dict[str, Any] = {"backend": s.backend, "durable": s.durability == "fsync"}
    if config.index.backend == "postgres":
        # Where each chunk lives is recorded beside the index, not on this host's disk.
        settings["pack_index"] = index_settings(config)["postgres"]
    if s.backend == "s3":
        allow_http = s.s3.endpoint.startswith("http://")  # as the operator wrote it
        settings["s3"] = {**msgspec.structs.asdict(s.s3), "allow_http": allow_http}
    return settings


def open_chunks(
    config: Config, *, readonly: bool = False, worker: str | None = None
) -> cas.ChunkStore:
    """The chunk store `config` chooses (fsck of a live daemon's directory
    reads it). `worker`: see `open_store`."""
    return cas.open_chunk_store(
        config.data_dir, **chunk_store_settings(config), readonly=readonly, worker=worker
    )


def open_store(
    config: Config, limits: Limits | None = None, *, worker: str | None = None
) -> cas.Store:
    """The store `config` describes (blocks: opens the index). `worker`: a
    name of its own among the processes sharing the directory (its temp
    files are kept apart)."""
    limits = limits or Limits(config)
    s = config.storage
    return cas.Store(
        config.data_dir,
        durability=s.durability,
        materialize=s.materialize,
        completed_dir=config.completed_dir,
        session_ttl=s.session_ttl,
        process_files=True,
        worker=worker,
        dedup_scope=config.auth.dedup_scope,
        quota_for=limits.quota_for,
        max_stream_size=max_stream_size(config),
        chunks=open_chunks(config, worker=worker),
        index=index_settings(config),
    )


@dataclass(frozen=True, slots=True)
class Core:
    """The upload core of one daemon process and its background services."""

    config: Config
    store: cas.Store
    threads: Threads
    plugins: Plugins
    metrics: Metrics
    limits: Limits
    ingest: Ingest
    jobs: JobRunner
    outbox: OutboxService
    maintenance: Maintenance
    # Whether `close` closes the store (not when the caller gave it).
    owns_store: bool

    async def run_duties(self) -> None:
        """Jobs, deliveries and maintenance, once this process leads (one of
        those sharing the data directory does), until cancelled."""
        with await become_leader(self.store):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.maintenance.run)
                nursery.start_soon(self.jobs.run)
                nursery.start_soon(self.outbox.run)

    def close(self) -> None:
        if self.owns_store:
            self.store.close()


def build_core(
    config: Config,
    plugins: Plugins,
    metrics: Metrics,
    *,
    store: cas.Store | None = None,
    worker: str | None = None,
) -> Core:
    """Open the store (unless given) and build the services over it; blocks.

    `worker`: this process is one of several sharing the data directory."""
    limits = Limits(config)
    owns_store = store is None
    if store is None:
        store = open_store(config, limits, worker=worker)
    threads = Threads()
    outbox = OutboxService(
        store, threads, plugins, metrics, max_age=config.plugins.delivery_max_age
    )
    jobs = JobRunner(
        store,
        threads,
        plugins,
        metrics,
        outbox,
        data_dir=config.data_dir,
        chunk_store=chunk_store_settings(config),
        index=index_settings(config),
        shared=worker is not None,
    )
    return Core(
        config=config,
        store=store,
        threads=threads,
        plugins=plugins,
        metrics=metrics,
        limits=limits,
        ingest=Ingest(config, store, threads, plugins, metrics, limits, jobs),
        jobs=jobs,
        outbox=outbox,
        maintenance=Maintenance(store, threads, metrics, config.storage),
        owns_store=owns_store,
    )

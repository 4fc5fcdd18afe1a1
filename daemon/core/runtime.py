"""What the HTTP handlers share: the config, the store and the thread limiter."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from ingestd import cas
from ingestd.cas import Store
from quart import current_app

from .config import Config

T = TypeVar("T")
log = logging.getLogger("ingestd")


class Runtime:
    def __init__(
        self, config: Config, store: Store | None = None, worker: str | None = None
    ) -> None:
        self.config = config
        # One of several processes sharing the data directory (see master.py).
        self.worker = worker
        self.store = store
        self._owns_store = store is None
        # Store calls block on disk and on group commits; bound the threads.
        self.limiter = trio.CapacityLimiter(64)
        # Set by create_app (their modules import this one).
        self.ingest: Any = None  # ingest.Ingest, the upload core
        self.jobs: Any = None  # JobRunner
        self.outbox: Any = None  # OutboxService
        self.plugins: Any = None  # ingestd.plugins.Plugins
        self.metrics: Any = None  # Metrics
        self.auth: Any = None  # auth.Authenticator
        self.rate_limits: Any = None  # auth.RateLimiter

    def tenant_limits(self, tenant: str) -> tuple[int | None, int | None, int]:
        """(max logical bytes, max open uploads, max file size) for a tenant."""
        q = self.config.quotas
        own = q.tenants.get(tenant)

        def pick(name: str) -> int:
            value = getattr(own, name, None) if own is not None else None
            return getattr(q, name) if value is None else value

        max_bytes, max_open = pick("max_bytes"), pick("max_open_uploads")
        max_file = pick("max_file_size") or self.config.limits.max_file_size
        return max_bytes or None, max_open or None, min(max_file, self.config.limits.max_file_size)

    def quota_for(self, tenant: str) -> cas.Quota:
        max_bytes, max_open, _ = self.tenant_limits(tenant)
        return cas.Quota(max_bytes=max_bytes, max_open_uploads=max_open)

    def open(self) -> None:
        if self.store is None:
            s = self.config.storage
            self.store = Store(
                self.config.data_dir,
                durability=s.durability,
                materialize=s.materialize,
                completed_dir=self.config.completed_dir,
                session_ttl=s.session_ttl,
                process_files=True,
                worker=self.worker,
                dedup_scope=self.config.auth.dedup_scope,
                quota_for=self.quota_for,
            )

    def close(self) -> None:
        if self._owns_store and self.store is not None:
            self.store.close()
            self.store = None

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call in a worker thread."""
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )

    def count_maintenance(self, expired: int, deleted: int, freed: int) -> None:
        m = self.metrics
        m.gc_runs.inc()
        m.gc_reclaimed_objects.inc(deleted)
        m.gc_reclaimed_bytes.inc(freed)
        if expired:
            # Which API created an expired upload is not recorded with it.
            m.uploads.labels("unknown", "expired").inc(expired)

    async def maintain(self) -> None:
        """Expire old sessions and collect garbage, forever.

        Expiry and reference-count collection run every `maintenance_interval`;
        the orphan sweep walks every object on disk, so it runs once per
        `gc_grace` (and at the first pass after start-up, to clean up after a crash).
        """
        s = self.config.storage
        last_sweep = -float("inf")
        while True:
            await trio.sleep(s.maintenance_interval)
            try:
                expired = await self.run(self.store.expire_sessions)
                deleted, freed = await self.run(self.store.collect_garbage, s.gc_grace)
                if trio.current_time() - last_sweep >= s.gc_grace:
                    orphans, orphan_bytes = await self.run(self.store.sweep_orphans, s.gc_grace)
                    last_sweep = trio.current_time()
                    deleted, freed = deleted + orphans, freed + orphan_bytes
            except Exception:  # housekeeping must never take the daemon down
                log.exception("maintenance pass failed; retrying next interval")
                continue
            self.count_maintenance(len(expired), deleted, freed)
            if expired or deleted:
                log.info(
                    "expired %d sessions; deleted %d objects (%d bytes)",
                    len(expired),
                    deleted,
                    freed,
                )


def runtime() -> Runtime:
    return current_app.extensions["ingestd"]

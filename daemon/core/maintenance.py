"""Expiry and garbage collection, run by the leader forever (see `leader`)."""

from __future__ import annotations

import logging

import trio
from ingestd import cas

from .config import StorageConfig
from .metrics import Metrics
from .threads import Threads

log = logging.getLogger("ingestd")


class Maintenance:
    def __init__(
        self, store: cas.Store, threads: Threads, metrics: Metrics, settings: StorageConfig
    ) -> None:
        self._store = store
        self._threads = threads
        self._metrics = metrics
        self._settings = settings

    def count(self, expired: int, deleted: int, freed: int) -> None:
        m = self._metrics
        m.gc_runs.inc()
        m.gc_reclaimed_objects.inc(deleted)
        m.gc_reclaimed_bytes.inc(freed)
        if expired:
            # Which API created an expired upload is not recorded with it.
            m.uploads.labels("unknown", "expired").inc(expired)

    async def run(self) -> None:
        """Expire old sessions and collect garbage, forever.

        Expiry and reference-count collection run every `maintenance_interval`;
        the orphan sweep walks every object on disk, so it runs once per
        `gc_grace` (and at the first pass after start-up, to clean up after a crash).
        """
        s, store, run = self._settings, self._store, self._threads.run
        last_sweep = -float("inf")
        while True:
            await trio.sleep(s.maintenance_interval)
            try:
                expired = await run(store.expire_sessions)
                deleted, freed = await run(store.collect_garbage, s.gc_grace)
                if trio.current_time() - last_sweep >= s.gc_grace:
                    orphans, orphan_bytes = await run(store.sweep_orphans, s.gc_grace)
                    last_sweep = trio.current_time()
                    deleted, freed = deleted + orphans, freed + orphan_bytes
            except Exception:  # housekeeping must never take the daemon down
                log.exception("maintenance pass failed; retrying next interval")
                continue
            self.count(len(expired), deleted, freed)
            if expired or deleted:
                log.info(
                    "expired %d sessions; deleted %d objects (%d bytes)",
                    len(expired),
                    deleted,
                    freed,
                )

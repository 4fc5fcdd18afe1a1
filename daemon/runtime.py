"""What the HTTP handlers share: the config, the store and the thread limiter."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from quart import current_app

from ingestd.cas import Store

from .config import Config

T = TypeVar("T")


class Runtime:
    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.store = store
        self._owns_store = store is None
        # Store calls block on disk and on group commits; bound the threads.
        self.limiter = trio.CapacityLimiter(64)

    def open(self) -> None:
        if self.store is None:
            s = self.config.storage
            self.store = Store(
                self.config.data_dir,
                durability=s.durability,
                materialize=s.materialize,
                completed_dir=self.config.completed_dir,
                session_ttl=s.session_ttl,
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

    async def maintain(self) -> None:
        """Expire old sessions and collect garbage, forever."""
        s = self.config.storage
        while True:
            await trio.sleep(s.maintenance_interval)
            await self.run(self.store.expire_sessions)
            await self.run(self.store.collect_garbage, s.gc_grace)


def runtime() -> Runtime:
    return current_app.extensions["ingestd"]

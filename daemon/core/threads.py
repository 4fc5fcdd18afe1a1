"""Blocking calls (the store's disk and index work) off the event loop, bounded."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import trio

P = ParamSpec("P")
T = TypeVar("T")

# Store calls block on disk and on group commits; bound the threads.
DEFAULT_THREADS = 64


class Threads:
    def __init__(self, limit: int = DEFAULT_THREADS) -> None:
        self.limiter = trio.CapacityLimiter(limit)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in a worker thread."""
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )

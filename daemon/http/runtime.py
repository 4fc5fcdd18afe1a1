"""What the HTTP handlers share, built once the store is open (see `app`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from ingestd import cas
from quart import current_app

from ..core.config import Config
from ..core.ingest import Ingest
from ..core.jobs import JobRunner
from ..core.metrics import Metrics
from ..core.services import Core
from .auth import Authenticator, RateLimiter

P = ParamSpec("P")
T = TypeVar("T")

EXTENSION = "ingestd"


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    store: cas.Store
    ingest: Ingest
    jobs: JobRunner
    metrics: Metrics
    auth: Authenticator
    rate_limits: RateLimiter
    core: Core

    @classmethod
    def over(cls, core: Core, auth: Authenticator, rate_limits: RateLimiter) -> Runtime:
        return cls(
            config=core.config,
            store=core.store,
            ingest=core.ingest,
            jobs=core.jobs,
            metrics=core.metrics,
            auth=auth,
            rate_limits=rate_limits,
            core=core,
        )

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A blocking store call, in a worker thread."""
        return await self.core.threads.run(fn, *args, **kwargs)


def runtime() -> Runtime:
    """The app's runtime (set before it serves its first request)."""
    return current_app.extensions[EXTENSION]

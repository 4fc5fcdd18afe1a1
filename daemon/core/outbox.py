"""The outbox service: delivers what plugins queued, until it arrives.

Messages live in the store (LMDB), so they survive restarts. Each is handed
to its plugin's `ingestd_deliver`; a failure is retried after 1, 2, 4, …
seconds (at most 10 minutes apart) until the message is older than
`[plugins] delivery_max_age`, or the plugin raises `DeliveryFailed` (it will
never succeed), when it is kept as "dead" for inspection.
"""

from __future__ import annotations

import logging
import math

import blake3
import trio
from ingestd import cas
from ingestd.plugins import DeliveryFailed, OutboxMessage, Plugins
from ingestd.plugins.processing import call_hook

from .metrics import Metrics
from .threads import Threads

log = logging.getLogger("ingestd.outbox")

MAX_BACKOFF = 600.0


class StoreOutbox:
    """The `Outbox` a plugin sees in its context: messages tagged with its name."""

    def __init__(self, store: cas.Store, service: OutboxService, plugin: str) -> None:
        self._store = store
        self._service = service
        self._plugin = plugin

    def enqueue(self, payload, *, key=None) -> str:
        # Keys are the plugin's business: namespace and hash them, so that two
        # plugins never collide and any length (or secret in a URL) is fine.
        message_id = None
        if key is not None:
            digest = blake3.blake3(f"{self._plugin}\0{key}".encode()).hexdigest()[:32]
            message_id = f"msg_{digest}"
        message_id = self._store.outbox.put(self._plugin, dict(payload), message_id)
        self._service.wake()
        return message_id


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt` (1-based): 1, 2, 4, … ≤ 10 min."""
    return min(2.0 ** (attempt - 1), MAX_BACKOFF)


class OutboxService:
    def __init__(
        self,
        store: cas.Store,
        threads: Threads,
        plugins: Plugins,
        metrics: Metrics,
        *,
        max_age: float,
    ) -> None:
        """`max_age`: seconds after which a message that still fails is dead."""
        self._store = store
        self._threads = threads
        self._plugins = plugins
        self._metrics = metrics
        self._max_age = max_age
        self._wakeup = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    def wake(self) -> None:
        """Deliver soon; callable from any thread."""
        if self._token is None:
            return
        try:
            self._token.run_sync_soon(self._wakeup.set)
        except trio.RunFinishedError:
            pass

    async def run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        store, run = self._store, self._threads.run
        while True:
            self._wakeup = trio.Event()
            for entry in await run(store.outbox.due):
                await self._deliver(entry)
            next_time = await run(store.outbox.next_time)
            delay = math.inf if next_time is None else max(next_time - store.clock(), 0.05)
            with trio.move_on_after(min(delay, 60.0)):
                await self._wakeup.wait()

    async def _deliver(self, entry: cas.OutboxEntry) -> None:
        plugins, store, run = self._plugins, self._store, self._threads.run
        impls = [i for i in plugins.hookimpls("ingestd_deliver") if i.plugin_name == entry.plugin]
        message = OutboxMessage(entry.id, entry.plugin, entry.payload, entry.attempt, entry.created)
        try:
            if not impls:
                raise RuntimeError(f"plugin {entry.plugin!r} is not loaded or cannot deliver")
            available = {"message": message, "config": plugins.configs.get(entry.plugin, {})}
            impl = impls[0]
            kwargs = {k: available[k] for k in impl.argnames if k in available}
            await call_hook(impl.function, kwargs, plugins.settings.timeout, self._threads.limiter)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            now = store.clock()
            too_old = now - entry.created > self._max_age
            too_old = too_old or isinstance(exc, DeliveryFailed)
            retry_at = None if too_old else now + backoff(entry.attempt)
            await run(store.outbox.failed, entry.id, error, retry_at)
            self._metrics.deliveries.labels(entry.plugin, "dead" if too_old else "retry").inc()
            log.warning(
                "delivery %s by %s failed (attempt %d): %s%s",
                entry.id,
                entry.plugin,
                entry.attempt,
                error,
                "; giving up" if too_old else "",
                extra={"plugin": entry.plugin, "delivery_id": entry.id, "attempt": entry.attempt},
            )
            return
        await run(store.outbox.done, entry.id)
        self._metrics.deliveries.labels(entry.plugin, "delivered").inc()

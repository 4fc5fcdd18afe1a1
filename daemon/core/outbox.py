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
from ingestd.plugins import DeliveryFailed, OutboxMessage
from ingestd.plugins.processing import call_hook

from .runtime import Runtime

log = logging.getLogger("ingestd.outbox")

MAX_BACKOFF = 600.0


class StoreOutbox:
    """The `Outbox` a plugin sees in its context: messages tagged with its name."""

    def __init__(self, rt: Runtime, plugin: str) -> None:
        self._rt = rt
        self._plugin = plugin

    def enqueue(self, payload, *, key=None) -> str:
        # Keys are the plugin's business: namespace and hash them, so that two
        # plugins never collide and any length (or secret in a URL) is fine.
        message_id = None
        if key is not None:
            digest = blake3.blake3(f"{self._plugin}\0{key}".encode()).hexdigest()[:32]
            message_id = f"msg_{digest}"
        message_id = self._rt.store.outbox.put(self._plugin, dict(payload), message_id)
        self._rt.outbox.wake()
        return message_id


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt` (1-based): 1, 2, 4, … ≤ 10 min."""
    return min(2.0 ** (attempt - 1), MAX_BACKOFF)


class OutboxService:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
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
        store = self._rt.store
        while True:
            self._wakeup = trio.Event()
            for entry in await self._rt.run(store.outbox.due):
                await self._deliver(entry)
            next_time = await self._rt.run(store.outbox.next_time)
            delay = math.inf if next_time is None else max(next_time - store.clock(), 0.05)
            with trio.move_on_after(min(delay, 60.0)):
                await self._wakeup.wait()

    async def _deliver(self, entry: cas.OutboxEntry) -> None:
        rt = self._rt
        plugins = rt.plugins
        impls = [i for i in plugins.hookimpls("ingestd_deliver") if i.plugin_name == entry.plugin]
        message = OutboxMessage(entry.id, entry.plugin, entry.payload, entry.attempt, entry.created)
        try:
            if not impls:
                raise RuntimeError(f"plugin {entry.plugin!r} is not loaded or cannot deliver")
            available = {"message": message, "config": plugins.configs.get(entry.plugin, {})}
            impl = impls[0]
            kwargs = {k: available[k] for k in impl.argnames if k in available}
            await call_hook(impl.function, kwargs, plugins.settings.timeout, rt.limiter)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            now = rt.store.clock()
            too_old = now - entry.created > rt.config.plugins.delivery_max_age
            too_old = too_old or isinstance(exc, DeliveryFailed)
            retry_at = None if too_old else now + backoff(entry.attempt)
            await rt.run(rt.store.outbox.failed, entry.id, error, retry_at)
            rt.metrics.deliveries.labels(entry.plugin, "dead" if too_old else "retry").inc()
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
        await rt.run(rt.store.outbox.done, entry.id)
        rt.metrics.deliveries.labels(entry.plugin, "delivered").inc()

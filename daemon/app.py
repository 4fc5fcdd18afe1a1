"""The Quart application: API surfaces, error handling and the store's lifetime."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgspec
import trio
from ingestd import cas
from ingestd.cas import FORMAT_VERSION
from ingestd.plugins import PluginConfigError, Plugins, PluginSettings, build_plugins
from quart import Response
from quart_schema import Info, QuartSchema
from quart_trio import QuartTrio

from . import problems, seed_api, tus_api, v1_api
from .config import Config, ConfigError
from .ingest import Ingest
from .jobs import JobRunner
from .leader import become_leader
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .outbox import OutboxService
from .runtime import Runtime, runtime

log = logging.getLogger("ingestd")

# Room for multipart headers and fields around a chunk of max_chunk_size.
MULTIPART_OVERHEAD = 64 << 10


class Health(msgspec.Struct):
    status: str
    formatVersion: int


def load_plugins(config: Config, extra: Mapping[str, object] | None = None) -> Plugins:
    """The daemon's plugin manager, per `[plugins]`; raises ConfigError if invalid."""
    p = config.plugins
    settings = PluginSettings(
        enabled=p.enabled,
        disabled=p.disabled,
        timeout=p.timeout,
        on_error=p.on_error,
        autoload=p.autoload,
        isolation=p.isolation,
        reuse_verdicts=p.reuse_verdicts,
        tables=config.plugin_tables,
    )
    try:
        return build_plugins(settings, extra=extra)
    except PluginConfigError as exc:
        raise ConfigError(str(exc)) from None


def create_app(
    config: Config,
    store: cas.Store | None = None,
    plugins: Plugins | None = None,
    worker: str | None = None,
) -> QuartTrio:
    """Build the app. With `store` given, the caller owns it; `plugins` default
    to those `config` names (built-ins and entry points)."""
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.limits.max_chunk_size + MULTIPART_OVERHEAD
    app.config["QUART_SCHEMA_CONVERSION_PREFERENCE"] = "msgspec"
    QuartSchema(
        app,
        info=Info(
            title="ingestd",
            version="0.1.0",
            description="Resumable, deduplicating ingest of large AI files.",
        ),
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        conversion_preference="msgspec",
    )
    rt = Runtime(config, store, worker=worker)
    rt.plugins = plugins if plugins is not None else load_plugins(config)
    rt.metrics = Metrics()
    rt.ingest = Ingest(rt)
    rt.jobs = JobRunner(rt)
    rt.outbox = OutboxService(rt)
    app.extensions["ingestd"] = rt
    background = trio.CancelScope()

    @app.before_serving
    async def _open() -> None:
        await rt.run(rt.open)
        app.nursery.start_soon(_background)

    background_done = trio.Event()

    async def _background() -> None:
        try:
            with background:
                # One process of those sharing the data directory runs these.
                with await become_leader(rt.store):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(rt.maintain)
                        nursery.start_soon(rt.jobs.run)
                        nursery.start_soon(rt.outbox.run)
        finally:
            background_done.set()

    @app.after_serving
    async def _close() -> None:
        background.cancel()
        # The store must outlive every task that uses it.
        await background_done.wait()
        await rt.run(rt.close)

    @app.get("/healthz")
    async def healthz() -> Health:
        """Liveness: answers once the store is open."""
        return Health(status="ok" if runtime().store else "starting", formatVersion=FORMAT_VERSION)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(rt.metrics.render(), content_type=CONTENT_TYPE_LATEST)

    app.register_blueprint(seed_api.bp)
    app.register_blueprint(v1_api.bp)
    tus_api.install(app, config)
    problems.register(app)
    return app

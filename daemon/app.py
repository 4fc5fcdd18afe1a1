"""The Quart application: API surfaces, error handling and the store's lifetime."""

from __future__ import annotations

import logging

import msgspec
import trio
from ingestd import cas
from ingestd.cas.records import FORMAT_VERSION
from quart_schema import Info, QuartSchema
from quart_trio import QuartTrio

from . import problems, seed_api, v1_api
from .config import Config
from .jobs import JobRunner
from .runtime import Runtime, runtime

log = logging.getLogger("ingestd")

# Room for multipart headers and fields around a chunk of max_chunk_size.
MULTIPART_OVERHEAD = 64 << 10


class Health(msgspec.Struct):
    status: str
    formatVersion: int


def create_app(config: Config, store: cas.Store | None = None) -> QuartTrio:
    """Build the app. With `store` given, the caller owns it (tests do this)."""
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
    rt = Runtime(config, store)
    rt.jobs = JobRunner(rt)
    app.extensions["ingestd"] = rt
    background = trio.CancelScope()

    @app.before_serving
    async def _open() -> None:
        await rt.run(rt.open)
        app.nursery.start_soon(_background)

    async def _background() -> None:
        with background:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rt.maintain)
                nursery.start_soon(rt.jobs.run)

    @app.after_serving
    async def _close() -> None:
        background.cancel()
        await rt.run(rt.close)

    @app.get("/healthz")
    async def healthz() -> Health:
        """Liveness: answers once the store is open."""
        return Health(status="ok" if runtime().store else "starting", formatVersion=FORMAT_VERSION)

    app.register_blueprint(seed_api.bp)
    app.register_blueprint(v1_api.bp)
    problems.register(app)
    return app

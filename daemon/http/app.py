"""The Quart application: API surfaces, error handling and the store's lifetime."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import msgspec
import trio
from ingestd import cas
from ingestd.cas import FORMAT_VERSION
from ingestd.plugins import PluginConfigError, Plugins, PluginSettings, build_plugins
from quart import Response, g, request
from quart_schema import Info, QuartSchema
from quart_trio import QuartTrio

from ..core import logs
from ..core.config import Config, ConfigError, is_loopback
from ..core.metrics import CONTENT_TYPE_LATEST, Metrics, use_shared_files
from ..core.services import Core, build_core
from . import problems, seed_api, tus_api, v1_api, webpage
from .auth import TENANT_HEADER, Authenticator, RateLimiter, acting_as
from .client_limit import PerClientLimit
from .errors import ApiError
from .jsonbody import StrictJSONRequest
from .openapi import CompleteOpenAPIProvider
from .request_log import RequestLog
from .runtime import EXTENSION, Runtime, runtime

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


# Surfaces anyone may reach (they hold no tenant's data): liveness, the API
# description, the web page's static files. /metrics decides for itself.
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json", "/docs", "/redoc", "/"})
OPEN_PREFIXES = ("/static/",)
READ_METHODS = frozenset({"GET", "HEAD"})


def store_figures(app: QuartTrio) -> cas.TenantUsage | None:
    """Every tenant's usage summed: the store's size and open uploads."""
    rt: Runtime | None = app.extensions.get(EXTENSION)
    if rt is None:
        return None
    usages = list(rt.store.all_usage().values())
    fields = cas.TenantUsage.__struct_fields__
    return cas.TenantUsage(**{name: sum(getattr(u, name) for u in usages) for name in fields})


def api_of(path: str, *, tus_prefix: str) -> str | None:
    """The upload API a request path belongs to, if any."""
    if path.startswith("/api/upload/"):
        return "seed"
    if path.startswith("/v1/"):
        return "v1"
    if path.startswith(tus_prefix) or path == tus_prefix.rstrip("/"):
        return "tus"
    return None


def required_scope(method: str, path: str, tus_prefix: str) -> str | None:
    """The scope a request needs, or None for an open one."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if method == "OPTIONS" and path.startswith(tus_prefix.rstrip("/")):
        return None  # CORS preflights carry no credentials
    if path == "/v1/tokens" or path.startswith("/v1/tokens/"):
        return "admin"
    return "read" if method in READ_METHODS else "write"


def create_app(
    config: Config,
    store: cas.Store | None = None,
    plugins: Plugins | None = None,
    worker: str | None = None,
) -> QuartTrio:
    """Build the app. With `store` given, the caller owns it; `plugins` default
    to those `config` names (built-ins and entry points)."""
    # No default static folder: `webpage` serves /static/ with its own headers.
    app = QuartTrio(__name__, static_folder=None)
    app.request_class = StrictJSONRequest
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
        # Served by `webpage` from local files (quart-schema's pages use a CDN).
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        conversion_preference="msgspec",
        openapi_provider_class=CompleteOpenAPIProvider,
    )
    plugins = plugins if plugins is not None else load_plugins(config)
    if worker is not None:
        # Each of a worker's log lines says which worker it is (tasks and
        # worker threads started from here on inherit this context).
        logs.bind(worker=worker)
    # Workers sum their metrics through shared files (see metrics.py).
    shared = None if worker is None else use_shared_files(config.data_dir)
    app_metrics = Metrics(functools.partial(store_figures, app), shared_dir=shared, worker=worker)
    auth = Authenticator(config)
    rate_limits = RateLimiter(config)
    background = trio.CancelScope()
    background_done = trio.Event()

    @app.before_serving
    async def _open() -> None:
        core = await trio.to_thread.run_sync(
            functools.partial(build_core, config, plugins, app_metrics, store=store, worker=worker)
        )
        app.extensions[EXTENSION] = Runtime.over(core, auth, rate_limits)
        app.nursery.start_soon(_background, core)

    async def _background(core: Core) -> None:
        try:
            with background:
                await core.run_duties()
        finally:
            background_done.set()

    @app.after_serving
    async def _close() -> None:
        background.cancel()
        # The store must outlive every task that uses it.
        await background_done.wait()
        rt: Runtime | None = app.extensions.pop(EXTENSION, None)
        if rt is not None:
            await trio.to_thread.run_sync(rt.core.close)

    tus_prefix = config.tus.prefix

    @app.before_request
    async def _note_request() -> None:
        """The request's route (its URL rule) and upload, for its log line and metrics."""
        rule = request.url_rule
        args = request.view_args or {}
        logs.note(
            route=rule.rule if rule is not None else None,
            upload_id=args.get("upload_id"),
            file_id=args.get("file_id"),
        )

    @app.before_request
    async def _authorize() -> None:
        """Every request: its Host (without auth), its token, scope and rate."""
        rt = runtime()
        try:
            rt.auth.check_host(request.headers.get("Host"))
            scope = required_scope(request.method, request.path, tus_prefix)
            if scope is None:
                return
            headers = request.headers
            principal = rt.auth.authenticate(rt.store.tokens, headers.get("Authorization"))
            principal = acting_as(principal, headers.get(TENANT_HEADER))
            principal.require(scope)
            rt.rate_limits.check(principal)
        except ApiError as exc:
            rt.metrics.access_refusals.labels(exc.code).inc()
            raise
        if rt.auth.due_touch(principal):
            app.nursery.start_soon(_touch_token, rt, principal.token_id)
        g.principal = principal
        logs.note(tenant=principal.tenant)

    @app.get("/healthz")
    async def healthz() -> Health:
        """Liveness: answers once the store is open."""
        ready = EXTENSION in app.extensions
        return Health(status="ok" if ready else "starting", formatVersion=FORMAT_VERSION)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics. With auth on, per `auth.metrics`: open to clients
        on this host ("loopback"), to anyone ("open"), or to admin tokens."""
        rt, mode = runtime(), config.auth.metrics
        if config.auth_required and mode != "open":
            # The peer's address from the server (not a header a client could send).
            peer = (request.scope.get("client") or ("",))[0]
            if not (mode == "loopback" and is_loopback(peer)):
                principal = rt.auth.authenticate(
                    rt.store.tokens, request.headers.get("Authorization")
                )
                principal.require("admin")
        return Response(rt.metrics.render(), content_type=CONTENT_TYPE_LATEST)

    app.asgi_app = RequestLog(
        PerClientLimit(app.asgi_app, config.limits.max_requests_per_client),
        app_metrics,
        functools.partial(api_of, tus_prefix=tus_prefix),
    )
    app.register_blueprint(seed_api.bp)
    v1_api.install(app)
    app.register_blueprint(webpage.bp)
    tus_api.install(app, config)
    problems.register(app)
    return app


async def _touch_token(rt: Runtime, token_id: str) -> None:
    """Stamp a token's last use, in the background. Best effort: a stamp
    missed (the store closing at shutdown, a full disk) only leaves an older
    "last used", and must not fail the app."""
    try:
        await rt.run(rt.store.tokens.touch, token_id)
    except cas.StorageError as exc:
        log.info("token %s: last use not recorded: %s", token_id, exc)

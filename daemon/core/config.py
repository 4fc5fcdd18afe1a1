"""Configuration: `config.toml`, then environment overrides, then CLI flags.

Every key can be overridden by ``INGESTD_<SECTION>_<KEY>`` (for example
``INGESTD_SERVER_PORT=9000``). The original specification's ``UPLOADS_DIR``,
``COMPLETED_DIR`` and ``CHUNK_SIZE`` are honoured too, below the ``INGESTD_``
names. Sizes may be integers (bytes) or strings such as ``"64 MiB"``.
Relative paths are taken from the current directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveSize = Annotated[int, msgspec.Meta(gt=0)]
# A limit: 0 is none.
Limit = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
PerSecond = Annotated[float, msgspec.Meta(ge=0)]


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    # Processes serving the one listening socket and data directory.
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # Host names, besides loopback ones, that a daemon without auth answers
    # (any other Host header is refused, against DNS rebinding).
    allowed_hosts: list[str] = []
    # Serve HTTPS with this certificate (PEM) and private key.
    certfile: str = ""
    keyfile: str = ""
    # On SIGTERM/SIGINT: requests in flight get this long to finish, then are
    # cut off (a cut-off chunk is not kept; tus keeps the bytes it received).
    # An idle keep-alive connection also holds the stop this long.
    shutdown_grace: Seconds = 3.0


class AuthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Bearer tokens on every request. Unset: on, unless server.host is loopback.
    required: bool | None = None
    # "tenant": a tenant's chunk list is answered only from what it holds
    # itself (no probing another's content); "global": across tenants.
    dedup_scope: Literal["tenant", "global"] = "tenant"
    # Who may read /metrics with auth on: "loopback" (clients on this host,
    # or an admin token), "token" (an admin token), "open" (anyone).
    metrics: Literal["loopback", "token", "open"] = "loopback"
    # Requests per second per token (sustained; 0 is no limit) and the burst
    # above it, by the token's scope.
    rate_read: PerSecond = 50.0
    burst_read: Limit = 100
    rate_write: PerSecond = 500.0
    burst_write: Limit = 1000
    rate_admin: PerSecond = 0.0
    burst_admin: Limit = 0


class TenantQuota(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One tenant's limits, where they differ from [quotas]."""

    max_bytes: Limit | None = None
    max_open_uploads: Limit | None = None
    max_file_size: Limit | None = None


class QuotasConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Per tenant, 0 is no limit. Bytes: its files' sizes plus its open
    # uploads' declared sizes (logical: before deduplication).
    max_bytes: Limit = 0
    max_open_uploads: Limit = 0
    # The largest file (0: limits.max_file_size).
    max_file_size: Limit = 0
    # [quotas.tenants.<name>]: a tenant's own limits.
    tenants: dict[str, TenantQuota] = {}


class S3Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[storage.s3]`: the bucket of `backend = "s3"`. Empty keys are left to
    the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_REGION, AWS_ENDPOINT_URL)."""

    endpoint: str = ""
    bucket: str = ""
    # Where in the bucket, e.g. "ingestd/" (objects go under <prefix>packs/).
    prefix: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Where chunk bytes live: "local" (packs under data_dir) or "s3".
    backend: Literal["local", "s3"] = "local"
    s3: S3Config = msgspec.field(default_factory=S3Config)
    data_dir: str = "data"
    # Empty means <data_dir>/completed.
    completed_dir: str = ""
    chunk_size: PositiveSize = 1 << 20
    durability: Literal["fsync", "none"] = "fsync"
    materialize: Literal["copy", "none"] = "copy"
    # Open sessions expire this long after creation; their chunks are released.
    session_ttl: Seconds = 7 * 24 * 3600.0
    # Unreferenced chunks are deleted only after this long.
    gc_grace: Seconds = 3600.0
    # How often expiry and garbage collection run.
    maintenance_interval: Seconds = 60.0
    # Free space kept on the data directory's disk: a new upload that would
    # leave less is refused (507) before the disk is full. 0: none.
    reserve: Limit = 0
    # Bounds for variable-length (content-defined) chunks a client declares
    # in /v1; clients cut files with FastCDC at these sizes.
    cdc_min_size: PositiveSize = 256 << 10
    cdc_avg_size: PositiveSize = 1 << 20
    cdc_max_size: PositiveSize = 4 << 20


class IndexConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[index]`: where sessions, files, jobs, tokens and tenants are recorded."""

    # "lmdb" (data_dir/index.lmdb, the default) or "postgres".
    backend: Literal["lmdb", "postgres"] = "lmdb"
    # A libpq connection string or URI; empty: libpq's PG* environment variables.
    dsn: str = ""
    # The PostgreSQL schema holding the tables (made and migrated at start).
    schema: str = "ingestd"
    # Connections per process (the daemon's worker processes each have their own pool).
    pool_size: int = 8


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_file_size: PositiveSize = 1 << 40
    max_chunk_size: PositiveSize = 64 << 20
    # A chunk body must arrive within body_timeout seconds plus its length at
    # min_body_rate (bytes per second), or the request ends with 408: a client
    # trickling bytes cannot hold a connection for days.
    body_timeout: Seconds = 60.0
    min_body_rate: PositiveSize = 16 << 10
    # Requests one client address may have in flight at once (429 beyond).
    max_requests_per_client: Annotated[int, msgspec.Meta(ge=1)] = 256


class PluginsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # When non-empty, only these plugins run; `disabled` ones never do.
    enabled: list[str] = []
    disabled: list[str] = []
    # Seconds one plugin may spend on one hook call.
    timeout: Seconds = 300.0
    # A plugin error rejects the file ("reject": fail closed) or is only recorded.
    on_error: Literal["reject", "accept"] = "reject"
    # Load third-party plugins from the `ingestd` entry-point group.
    autoload: bool = True
    # Run validation, scanning and description in a child process per job
    # ("process"), so CPU-heavy plugins do not slow uploads, or in threads.
    isolation: Literal["process", "thread"] = "process"
    # Content the same plugins and settings already accepted under the same
    # name and metadata is not examined again (the job says which it reused).
    reuse_verdicts: bool = True
    # Outbox deliveries (e.g. webhooks) are retried until this old, in seconds.
    delivery_max_age: Seconds = 2 * 24 * 3600.0


class TusConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Where the tus 1.0 endpoint lives: POST here creates an upload, and
    # uploads are <prefix><id>.
    prefix: str = "/files/"
    # The largest tus upload (Tus-Max-Size); the smaller of this and
    # limits.max_file_size applies.
    max_size: PositiveSize = 1 << 40
    # Origins browsers may call the tus endpoint from; "*" is any, [] none.
    cors_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])


class LoggingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # "json" (one object per line), "console" (for people), or "auto": console
    # when stderr is a terminal, JSON otherwise. `serve --log-format` overrides.
    format: Literal["auto", "json", "console"] = "auto"


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    index: IndexConfig = msgspec.field(default_factory=IndexConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    tus: TusConfig = msgspec.field(default_factory=TusConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    quotas: QuotasConfig = msgspec.field(default_factory=QuotasConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    # The `[plugins.<name>]` tables, each parsed by its plugin.
    plugin_tables: dict[str, dict[str, Any]] = {}

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir).absolute()

    @property
    def completed_dir(self) -> Path:
        if self.storage.completed_dir:
            return Path(self.storage.completed_dir).absolute()
        return self.data_dir / "completed"

    @property
    def auth_required(self) -> bool:
        if self.auth.required is None:
            return not is_loopback(self.server.host)
        return self.auth.required

    @property
    def tls(self) -> bool:
        return bool(self.server.certfile)


SEED_ENV = {
    "UPLOADS_DIR": ("storage", "data_dir"),
    "COMPLETED_DIR": ("storage", "completed_dir"),
    "CHUNK_SIZE": ("storage", "chunk_size"),
}
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str) -> int:
    match = _SIZE_RE.match(value)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise ValueError(f'{value!r} is not a size (examples: 1048576, "1 MiB", "64MiB")')
    return int(float(match.group(1)) * unit)


def _size_keys() -> list[tuple[str, str]]:
    """Keys typed as sizes accept strings such as "64 MiB"."""
    return [
        (section, f.name)
        for section, struct in _sections().items()
        for f in msgspec.structs.fields(struct)
        if f.type in (PositiveSize, Limit)
    ]


def _list_keys() -> list[tuple[str, str]]:
    return [
        (section, f.name)
        for section, struct in _sections().items()
        for f in msgspec.structs.fields(struct)
        if f.type == list[str]
    ]


def _sections() -> dict[str, type[msgspec.Struct]]:
    return {
        f.name: f.type
        for f in msgspec.structs.fields(Config)
        if isinstance(f.type, type) and issubclass(f.type, msgspec.Struct)
    }


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None

    # `[plugins.<name>]` tables belong to the plugins, which parse them.
    tables = {
        name: raw["plugins"].pop(name)
        for name, value in list(raw.get("plugins", {}).items())
        if isinstance(value, dict)
    }
    sections = _sections()
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown config section [{name}] (known: {', '.join(sections)})")
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r} must be a table [{name}]")

    def set_key(section: str, key: str, value: Any, origin: str) -> None:
        fields = {f.name: f.type for f in msgspec.structs.fields(sections[section])}
        if key in fields:
            raw.setdefault(section, {})[key] = value
            return
        # A key of a table inside the section (INGESTD_STORAGE_S3_BUCKET).
        for name, kind in fields.items():
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
                inner = key.removeprefix(f"{name}_")
                if inner != key and inner in {f.name for f in msgspec.structs.fields(kind)}:
                    raw.setdefault(section, {}).setdefault(name, {})[inner] = value
                    return
        raise ConfigError(f"{origin}: unknown key {section}.{key}")

    for env_name, (section, key) in SEED_ENV.items():
        if env_name in environ:
            set_key(section, key, environ[env_name], env_name)
    for env_name, value in environ.items():
        if not env_name.startswith("INGESTD_"):
            continue
        rest = env_name[len("INGESTD_") :].lower()
        section, _, key = rest.partition("_")
        if section not in sections:
            continue  # other INGESTD_* variables (e.g. for tools) are not config
        set_key(section, key, value, env_name)
    for (section, key), value in (overrides or {}).items():
        if value is not None:
            set_key(section, key, value, "command line")

    for section, key in _size_keys():
        value = raw.get(section, {}).get(key)
        if isinstance(value, str):
            try:
                raw[section][key] = parse_size(value)
            except ValueError as exc:
                raise ConfigError(f"invalid config {section}.{key}: {exc}") from None

    for section, key in _list_keys():
        value = raw.get(section, {}).get(key)
        if isinstance(value, str):  # from the environment: "a,b"
            raw[section][key] = [v.strip() for v in value.split(",") if v.strip()]
    for name, table in raw.get("quotas", {}).get("tenants", {}).items():
        for key, value in table.items() if isinstance(table, dict) else ():
            if isinstance(value, str) and key != "max_open_uploads":
                try:
                    table[key] = parse_size(value)
                except ValueError as exc:
                    raise ConfigError(
                        f"invalid config quotas.tenants.{name}.{key}: {exc}"
                    ) from None
    raw["plugin_tables"] = tables
    try:
        # strict=False lets environment strings become ints, floats and bools.
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {_name_key(str(exc))}") from None
    _check(config)
    return config


def _name_key(message: str) -> str:
    # msgspec says "... - at `$.server.port`"; say "server.port: ..." instead.
    match = re.search(r"^(.*) - at `\$\.(.+)`$", message)
    if match:
        return f"{match.group(2)}: {match.group(1)}"
    return message


def _check(config: Config) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", config.index.schema):
        raise ConfigError(
            f"invalid config index.schema: {config.index.schema!r} must be a lower-case "
            "SQL identifier (a-z, 0-9, _)"
        )
    if config.index.pool_size < 1:
        raise ConfigError("invalid config index.pool_size: must be at least 1")
    if config.storage.backend == "s3" and not config.storage.s3.bucket:
        raise ConfigError(
            'invalid config storage.s3.bucket: storage.backend = "s3" needs a bucket '
            "(or INGESTD_STORAGE_S3_BUCKET)"
        )
    if config.storage.chunk_size > config.limits.max_chunk_size:
        raise ConfigError(
            f"invalid config storage.chunk_size: {config.storage.chunk_size} is larger than "
            f"limits.max_chunk_size ({config.limits.max_chunk_size})"
        )
    s = config.storage
    if not s.cdc_min_size <= s.cdc_avg_size <= s.cdc_max_size:
        raise ConfigError(
            "invalid config storage.cdc_avg_size: need cdc_min_size <= cdc_avg_size <= "
            f"cdc_max_size, got {s.cdc_min_size}, {s.cdc_avg_size}, {s.cdc_max_size}"
        )
    if s.cdc_max_size > config.limits.max_chunk_size:
        raise ConfigError(
            f"invalid config storage.cdc_max_size: {s.cdc_max_size} is larger than "
            f"limits.max_chunk_size ({config.limits.max_chunk_size})"
        )
    _check_tus_prefix(config.tus.prefix)
    if not is_loopback(config.server.host) and not config.auth_required:
        raise ConfigError(
            f"invalid config auth.required: server.host {config.server.host!r} is not a "
            "loopback address, and serving it without authentication would let anyone on the "
            "network read and delete every file. Turn auth on ([auth] required = true, or "
            "INGESTD_AUTH_REQUIRED=true) and give each client a token: "
            "ingestd token create --tenant NAME --scope write"
        )
    server = config.server
    if bool(server.certfile) != bool(server.keyfile):
        raise ConfigError(
            "invalid config server.keyfile: server.certfile and server.keyfile go together"
        )
    for key in ("certfile", "keyfile"):
        path = getattr(server, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"invalid config server.{key}: {path} is not a file")


_TUS_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+/$")
# First path segments other surfaces of the daemon use.
_RESERVED_SEGMENTS = {
    "v1",
    "api",
    "healthz",
    "metrics",
    "docs",
    "redoc",
    "openapi.json",
    "static",
}


def _check_tus_prefix(prefix: str) -> None:
    if not _TUS_PREFIX.match(prefix):
        raise ConfigError(
            f'invalid config tus.prefix: {prefix!r} must be a path such as "/files/" '
            "(starting and ending with /)"
        )
    if prefix.split("/")[1] in _RESERVED_SEGMENTS:
        raise ConfigError(f"invalid config tus.prefix: {prefix!r} is used by another API")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

"""Who is asking: bearer tokens, scopes, tenants, rate limits and `Host` checks.

A token is ``igd_<id>_<secret>``; the index keeps its id, tenant, scopes and
the SHA-256 of the whole token, never the token itself (`cas.Tokens`). A
request's token is looked up by id and compared in constant time; a revoked
token is gone from the index, so every worker refuses it from the next
request on. Scopes nest: ``read`` (list, describe, download, job status) ⊂
``write`` (upload, complete, cancel, delete) ⊂ ``admin`` (any tenant, with
the ``Ingestd-Tenant`` header; protected `/metrics`).

With auth off (a loopback daemon) every request is the default tenant's,
with every scope, but only when its `Host` names a loopback address or one
of `server.allowed_hosts`: a web page elsewhere cannot reach the daemon
through DNS rebinding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ingestd import cas

from ..core.config import Config, is_loopback
from ..core.scopes import SCOPES
from .errors import ApiError

# What each scope a token is created with allows.
GRANTS = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}
TOKEN_PREFIX = "igd_"
_TOKEN = re.compile(r"igd_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TENANT_HEADER = "Ingestd-Tenant"
# A token's `last_used` is written at most this often (it costs an index write).
TOUCH_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    scopes: frozenset[str]
    # None: auth is off.
    token_id: str | None = None
    token_name: str | None = None
    # The scope the token was created with: which rate limit applies.
    scope: str = "admin"

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ApiError(
                403,
                "scope_required",
                f"this token's scope ({self.scope}) does not allow this; "
                f"it needs a token with the {scope!r} scope",
                required=scope,
            )


ANONYMOUS = Principal(tenant=cas.DEFAULT_TENANT, scopes=GRANTS["admin"])


def check_tenant_name(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise ValueError(
            f"tenant {tenant!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return tenant


def parse_duration(text: str) -> float:
    """Seconds in '30d', '12h', '45m', '90s' or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 30d, 12h, 90m)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[match.group(2)]
    return float(match.group(1)) * unit


def _digest(token: str) -> bytes:
    # The secret is 256 random bits: a fast hash is as safe as a slow one.
    return hashlib.sha256(token.encode()).digest()


def create_token(
    tokens: cas.Tokens,
    *,
    tenant: str,
    scope: str = "write",
    name: str | None = None,
    expires_in: float | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[str, cas.TokenRecord]:
    """Make a token; the token string is returned once and never stored."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    check_tenant_name(tenant)
    token_id = secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    now = clock()
    record = cas.TokenRecord(
        id=token_id,
        name=name or f"{tenant}-{token_id[:6]}",
        tenant=tenant,
        scopes=[scope],
        secret_sha256=_digest(token),
        created=now,
        expires=None if expires_in is None else now + expires_in,
    )
    tokens.add(record)
    return token, record


class Authenticator:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.required = config.auth_required
        self.allowed_hosts = {h.lower() for h in config.server.allowed_hosts}
        self.clock = clock
        self._touched: dict[str, float] = {}

    def check_host(self, host: str | None) -> None:
        """Without auth, answer only requests addressed to this host by a
        loopback name (or an allowed one)."""
        if self.required:
            return
        name = _host_name(host or "")
        if name in self.allowed_hosts or is_loopback(name) or name.endswith(".localhost"):
            return
        raise ApiError(
            421,
            "host_not_allowed",
            f"this daemon has no authentication and answers only requests for a loopback "
            f"address, not Host {host!r}; add it to server.allowed_hosts or turn auth on",
        )

    def authenticate(self, tokens: cas.Tokens, authorization: str | None) -> Principal:
        """The principal of a request's `Authorization` header; 401 if it has none
        or an invalid one (auth on)."""
        if not self.required:
            return ANONYMOUS
        if not authorization:
            raise _unauthorized(
                "missing_token",
                "this daemon requires a token: send 'Authorization: Bearer <token>' "
                "(an operator creates one with: ingestd token create --tenant NAME)",
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized(
                "invalid_token", "the Authorization header must be 'Bearer <token>'"
            )
        match = _TOKEN.fullmatch(token)
        record = tokens.get(match.group(1)) if match else None
        # Compared even when no record was found, so that timing does not tell.
        expected = record.secret_sha256 if record is not None else b"\0" * 32
        if not hmac.compare_digest(_digest(token), expected) or record is None:
            raise _unauthorized(
                "invalid_token", "the token is not valid: unknown, revoked or mistyped"
            )
        if record.expires is not None and record.expires <= self.clock():
            raise _unauthorized(
                "token_expired",
                f"the token {record.name!r} expired at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(record.expires))}",
            )
        scope = max(record.scopes, key=SCOPES.index)
        return Principal(
            tenant=record.tenant,
            scopes=GRANTS[scope],
            token_id=record.id,
            token_name=record.name,
            scope=scope,
        )

    def due_touch(self, principal: Principal) -> bool:
        """Whether to record the token's use now (at most once a TOUCH_INTERVAL)."""
        if principal.token_id is None:
            return False
        now = self.clock()
        if now - self._touched.get(principal.token_id, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
            return False
        self._touched[principal.token_id] = now
        return True


def acting_as(principal: Principal, header: str | None) -> Principal:
    """An admin may act on another tenant's data with the `Ingestd-Tenant` header."""
    if not header or header == principal.tenant:
        return principal
    principal.require("admin")
    try:
        tenant = check_tenant_name(header)
    except ValueError as exc:
        raise ApiError(400, "invalid_tenant", str(exc)) from None
    return dataclasses.replace(principal, tenant=tenant)


def _unauthorized(code: str, detail: str) -> ApiError:
    challenge = 'Bearer realm="ingestd"'
    if code != "missing_token":
        challenge += ', error="invalid_token"'
    return ApiError(401, code, detail, headers={"WWW-Authenticate": challenge})


def _host_name(host: str) -> str:
    """The name in a Host header, without its port."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    if name and port.isdigit():
        host = name
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.rstrip(".")
    return host


class RateLimiter:
    """Token buckets, one per API token: `rate` requests per second with a
    `burst` above it, by the token's scope. In-process: with several workers
    each enforces the limit on the requests it serves."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        a = config.auth
        self.limits = {
            "read": (a.rate_read, a.burst_read),
            "write": (a.rate_write, a.burst_write),
            "admin": (a.rate_admin, a.burst_admin),
        }
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, principal: Principal) -> None:
        """Take one request from the token's bucket; 429 with Retry-After if empty."""
        if principal.token_id is None:
            return
        rate, burst = self.limits[principal.scope]
        if rate <= 0:
            return
        capacity = max(float(burst), 1.0)
        now = self.clock()
        level, last = self._buckets.get(principal.token_id, (capacity, now))
        level = min(capacity, level + (now - last) * rate)
        if level < 1.0:
            self._buckets[principal.token_id] = (level, now)
            wait = (1.0 - level) / rate
            raise ApiError(
                429,
                "rate_limited",
                f"more than {rate:g} requests per second (burst {burst}) with this token; "
                f"retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, round(wait + 0.499)))},
                limit=rate,
                burst=burst,
            )
        self._buckets[principal.token_id] = (level - 1.0, now)


def caller() -> Principal:
    """The principal of the request being handled (set before every request)."""
    from quart import g

    return g.principal

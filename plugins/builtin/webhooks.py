"""Built-in plugin "webhooks": signed HTTP notifications of each decision.

For every accepted or rejected file, ``ingestd_notify`` queues one event per
configured URL in the daemon's durable outbox; the outbox service hands each
message back to ``ingestd_deliver``, which POSTs it signed per the Standard
Webhooks spec (https://www.standardwebhooks.com/) and raises on failure so the
daemon retries with backoff. ``ingestd_pipeline`` queues a
``pipeline.requested`` event for accepted files when ``pipeline_url`` is set,
the hook point for fine-tuning or curation jobs.

Event and message ids are derived from the file id, so processing that re-runs
after a crash queues the same messages (the outbox deduplicates by key) and a
receiver sees the same ``webhook-id`` on every retry. Outbox keys and error
messages name a URL by its origin and a digest, never in full: webhook URLs
often carry a token in their path, and keys and errors end up in logs.

Config, ``[plugins.webhooks]``::

    urls = ["https://hooks.example/ingest"]
    secret = "whsec_..."          # base64, at least 24 bytes
    timeout = 10                  # seconds per delivery attempt
    events = ["file.accepted", "file.rejected"]
    pipeline_url = ""             # receives "pipeline.requested"
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
from ingestd.plugins import HookContext, Outcome, hookimpl
from ingestd.plugins.types import OutboxMessage
from standardwebhooks import Webhook

PLUGIN_NAME = "webhooks"
FILE_EVENTS = ("file.accepted", "file.rejected")
PIPELINE_EVENT = "pipeline.requested"
# The spec's advice: secrets between 24 and 64 random bytes.
MIN_SECRET_BYTES = 24
# How much of a failing receiver's answer goes into the error message.
_MAX_ERROR_BODY = 200


class WebhooksConfig(msgspec.Struct, forbid_unknown_fields=True):
    urls: list[str] = []
    secret: str = ""
    timeout: float = 10
    events: list[str] = msgspec.field(default_factory=lambda: list(FILE_EVENTS))
    pipeline_url: str = ""

    def __post_init__(self) -> None:
        # ValueError here becomes the daemon's start-up config error.
        for url in self.urls:
            _check_url("urls", url)
        if self.pipeline_url:
            _check_url("pipeline_url", self.pipeline_url)
        if (self.urls or self.pipeline_url) and not self.secret:
            raise ValueError("secret: required when urls or pipeline_url is set")
        if self.secret:
            _check_secret(self.secret)
        if not self.timeout > 0:
            raise ValueError("timeout: must be greater than 0")
        unknown = sorted(set(self.events) - set(FILE_EVENTS))
        if unknown:
            raise ValueError(f"events: unknown {unknown}, expected some of {list(FILE_EVENTS)}")

    def __repr__(self) -> str:
        # Configs end up in logs and test reports; the secret must not.
        fields = {f: getattr(self, f) for f in self.__struct_fields__}
        fields["secret"] = "<set>" if self.secret else ""
        return f"WebhooksConfig({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


class WebhookDeliveryError(Exception):
    """A delivery attempt failed; the daemon retries it later."""


@hookimpl
def ingestd_config_schema(plugin_name: str) -> type | None:
    return WebhooksConfig if plugin_name == PLUGIN_NAME else None


@hookimpl
def ingestd_notify(ctx: HookContext, outcome: Outcome) -> dict[str, Any] | None:
    config = _config(ctx.config)
    event_type = "file.accepted" if outcome.accepted else "file.rejected"
    if not config.urls or event_type not in config.events:
        return None
    event_id = f"evt_{ctx.facts.file_id}_{event_type}"
    event = _event(event_type, _file_data(ctx, outcome))
    for url in config.urls:
        _enqueue(ctx, url, event_id, event)
    return {"queued": len(config.urls), "event_id": event_id}


@hookimpl
def ingestd_pipeline(ctx: HookContext, outcome: Outcome) -> str | None:
    config = _config(ctx.config)
    if not config.pipeline_url or not outcome.accepted:
        return None
    job_id = f"pl_{ctx.facts.file_id}"
    event_id = f"evt_{ctx.facts.file_id}_{PIPELINE_EVENT}"
    event = _event(PIPELINE_EVENT, {"job_id": job_id, **_file_data(ctx, outcome)})
    _enqueue(ctx, config.pipeline_url, event_id, event)
    return job_id


@hookimpl
def ingestd_deliver(message: OutboxMessage, config: Any) -> None:
    config = _config(config)
    try:
        url = message.payload["url"]
        event_id = message.payload["event_id"]
        event = message.payload["event"]
    except KeyError as exc:
        raise WebhookDeliveryError(f"message {message.id} has no {exc.args[0]!r}") from None
    where = describe_url(url)
    if not config.secret:
        raise WebhookDeliveryError(
            f"cannot sign {event_id} for {where}: [plugins.webhooks] secret is not set"
        )
    # Deterministic key order: every retry sends the same bytes.
    body = msgspec.json.encode(event, order="deterministic").decode()
    # Signed afresh on each attempt: receivers refuse timestamps older than
    # a few minutes, and a retry can come much later.
    now = datetime.now(tz=UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "ingestd-webhooks",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(config.secret).sign(event_id, now, body),
    }
    # No redirects: the signed event goes to the configured URL or nowhere.
    try:
        with (
            httpx.Client(timeout=config.timeout, follow_redirects=False) as client,
            client.stream("POST", url, content=body.encode(), headers=headers) as response,
        ):
            if response.is_success:
                return
            excerpt = _read_excerpt(response)
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        raise WebhookDeliveryError(
            f"POST {where} for {event_id} (attempt {message.attempt}) failed: {detail}"
        ) from exc
    raise WebhookDeliveryError(
        f"POST {where} for {event_id} (attempt {message.attempt}) answered "
        f"{response.status_code} {response.reason_phrase}" + (f": {excerpt}" if excerpt else "")
    )


def message_key(event_id: str, url: str) -> str:
    """The outbox key of `event_id` for `url`: stable, short (LMDB keys are at
    most 511 bytes, URLs are not) and free of the URL's secrets."""
    return f"{event_id}|{_url_digest(url)}"


def describe_url(url: str) -> str:
    """`url` for messages and logs: its origin and the digest in its message key."""
    try:
        parsed = httpx.URL(url)
        origin = f"{parsed.scheme}://{parsed.netloc.decode('ascii', 'replace')}"
    except (httpx.InvalidURL, TypeError):
        origin = "<invalid url>"
    return f"{origin}/… (url {_url_digest(url)})"


def _url_digest(url: str) -> str:
    return hashlib.sha256(str(url).encode()).hexdigest()[:16]


def _config(config: Any) -> WebhooksConfig:
    # The daemon passes the parsed struct; a raw table (the plugin registered
    # under another name) is parsed here the same way.
    if isinstance(config, WebhooksConfig):
        return config
    return msgspec.convert(dict(config or {}), WebhooksConfig, strict=False)


def _enqueue(ctx: HookContext, url: str, event_id: str, event: dict[str, Any]) -> str:
    payload = {"url": url, "event_id": event_id, "event": event}
    return ctx.outbox.enqueue(payload, key=message_key(event_id, url))


def _event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": event_type, "timestamp": _iso8601(time.time()), "data": data}


def _file_data(ctx: HookContext, outcome: Outcome) -> dict[str, Any]:
    facts = ctx.facts
    detection = outcome.detection
    return {
        "file_id": facts.file_id,
        "upload_id": facts.upload_id,
        "tenant": facts.tenant,
        "filename": facts.filename,
        "size": facts.size,
        "blake3": facts.blake3,
        "sha256": facts.sha256,
        "reason": outcome.reason or None,
        "detection": dataclasses.asdict(detection) if detection is not None else None,
        # Plugins' describe output, as the file's metadata shows it.
        "metadata": msgspec.to_builtins(dict(outcome.metadata)),
        "parents": list(outcome.parents),
    }


def _read_excerpt(response: httpx.Response) -> str:
    # Read only the start of the answer: a receiver's error page can be large.
    chunk = b""
    for part in response.iter_bytes():
        chunk += part
        if len(chunk) >= _MAX_ERROR_BODY:
            break
    text = chunk[:_MAX_ERROR_BODY].decode("utf-8", "replace").strip()
    return text + ("…" if len(chunk) > _MAX_ERROR_BODY else "")


def _check_url(key: str, url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{key}: {url!r} is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{key}: {url!r} is not an absolute http(s) URL")


def _check_secret(secret: str) -> None:
    encoded = secret.removeprefix("whsec_")
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("secret: not base64 (expected whsec_<base64>)") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"secret: {len(raw)} bytes, expected at least {MIN_SECRET_BYTES}")


def _iso8601(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

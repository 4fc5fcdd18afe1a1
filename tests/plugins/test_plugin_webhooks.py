"""The built-in "webhooks" plugin: config, queueing on notify/pipeline, signed delivery.

Queueing runs in-process through `run_plugins`; delivery calls
`ingestd_deliver` directly against a real HTTP receiver on 127.0.0.1 that
verifies Standard Webhooks signatures (`tests/support/webhooks.py`).
"""

from __future__ import annotations

import base64
import os
import socket

import blake3
import msgspec
import pytest
from ingestd.plugins import PluginConfigError, PluginSettings, Verdict, build_plugins, hookimpl
from ingestd.plugins.builtin import webhooks
from ingestd.plugins.testing import run_plugins
from ingestd.plugins.types import OutboxMessage
from support.webhooks import WebhookReceiver

DATA = b"a,b\n1,2\n"
FILE_ID = "f" * 32  # the id `run_plugins` gives the file under test
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
URLS = ["http://127.0.0.1:9/a", "https://hooks.example/b"]

unit = pytest.mark.unit


class Rejecter:
    @hookimpl
    def ingestd_validate(self, ctx):
        return Verdict.reject("row 2 has 3 columns, expected 2")


async def process(table, *, reject=False, messages=None, metadata=None):
    plugins = {"webhooks": webhooks}
    if reject:
        plugins["rejecter"] = Rejecter()
    collected = [] if messages is None else messages
    outcome = await run_plugins(
        DATA,
        "data.csv",
        builtins={},
        plugins=plugins,
        config={"webhooks": table},
        messages=collected,
        metadata=metadata,
    )
    return outcome, collected


def parse(table) -> webhooks.WebhooksConfig:
    return msgspec.convert(table, webhooks.WebhooksConfig, strict=False)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- config ------------------------------------------------------------------


@unit
def test_config_defaults_and_parsing():
    config = build_plugins(
        PluginSettings(autoload=False, tables={"webhooks": {"timeout": "2.5"}}),
        builtins={"webhooks": "ingestd.plugins.builtin.webhooks"},
    ).configs["webhooks"]

    assert config == webhooks.WebhooksConfig(timeout=2.5)
    assert config.urls == [] and config.pipeline_url == ""
    assert config.events == ["file.accepted", "file.rejected"]


@unit
@pytest.mark.parametrize(
    ("table", "names"),
    [
        ({"urls": ["http://127.0.0.1/x"]}, "secret"),
        ({"urls": ["ftp://host/x"], "secret": SECRET}, "urls"),
        ({"pipeline_url": "not a url", "secret": SECRET}, "pipeline_url"),
        ({"secret": "whsec_c2hvcnQ="}, "secret"),
        ({"secret": "whsec_***"}, "secret"),
        ({"timeout": 0}, "timeout"),
        ({"events": ["file.deleted"]}, "events"),
        ({"url": "http://127.0.0.1/x"}, "url"),
    ],
)
def test_invalid_config_stops_start_up_naming_the_key(table, names):
    with pytest.raises(PluginConfigError, match=rf"\[plugins\.webhooks\].*{names}"):
        build_plugins(
            PluginSettings(autoload=False, tables={"webhooks": table}),
            builtins={"webhooks": "ingestd.plugins.builtin.webhooks"},
        )


@unit
def test_config_repr_hides_the_secret():
    assert SECRET.removeprefix("whsec_") not in repr(parse({"secret": SECRET}))


# -- queueing ----------------------------------------------------------------


@unit
async def test_notify_queues_one_stable_message_per_url():
    table = {"urls": URLS, "secret": SECRET}
    outcome, messages = await process(table, metadata={"project": "x"})

    assert outcome.accepted
    event_id = f"evt_{FILE_ID}_file.accepted"
    assert outcome.results["webhooks"]["notify"] == {"queued": 2, "event_id": event_id}
    assert [m.id for m in messages] == [webhooks.message_key(event_id, url) for url in URLS]
    assert all(m.plugin == "webhooks" for m in messages)
    for message, url in zip(messages, URLS, strict=True):
        assert message.payload["url"] == url
        assert message.payload["event_id"] == event_id
        event = message.payload["event"]
        assert event["type"] == "file.accepted"
        assert event["timestamp"].endswith("Z")
        data = event["data"]
        assert data["file_id"] == FILE_ID
        assert data["filename"] == "data.csv"
        assert data["size"] == len(DATA)
        assert data["blake3"] == blake3.blake3(DATA).hexdigest()
        assert data["tenant"] == "default"
        assert data["reason"] is None
        assert data["parents"] == []
        assert set(data) >= {"upload_id", "sha256", "detection", "metadata"}
        # The event travels through the durable outbox: it must be plain JSON.
        assert msgspec.json.decode(msgspec.json.encode(message.payload)) == message.payload

    # Processing re-run after a crash: same keys, so the outbox keeps one copy each.
    _, again = await process(table, messages=messages)
    assert [m.id for m in again] == [m.id for m in messages]
    assert len(again) == 2


@unit
async def test_rejection_is_notified_with_its_reason():
    outcome, messages = await process({"urls": URLS[:1], "secret": SECRET}, reject=True)

    assert not outcome.accepted
    [message] = messages
    assert message.id == webhooks.message_key(f"evt_{FILE_ID}_file.rejected", URLS[0])
    assert message.payload["event"]["type"] == "file.rejected"
    assert "row 2 has 3 columns" in message.payload["event"]["data"]["reason"]


@unit
async def test_nothing_queued_without_urls_or_for_unsubscribed_events():
    outcome, messages = await process({})
    assert messages == [] and "webhooks" not in outcome.results

    table = {"urls": URLS, "secret": SECRET, "events": ["file.accepted"]}
    outcome, messages = await process(table, reject=True)
    assert messages == [] and "webhooks" not in outcome.results


@unit
async def test_pipeline_is_requested_for_accepted_files_only():
    pipeline_url = "http://127.0.0.1:9/pipeline"
    table = {"secret": SECRET, "pipeline_url": pipeline_url}

    outcome, messages = await process(table)
    job_id = f"pl_{FILE_ID}"
    assert outcome.results["webhooks"]["pipeline"] == {"value": job_id}
    [message] = messages
    event_id = f"evt_{FILE_ID}_pipeline.requested"
    assert message.id == webhooks.message_key(event_id, pipeline_url)
    assert message.payload["url"] == pipeline_url
    assert message.payload["event"]["type"] == "pipeline.requested"
    assert message.payload["event"]["data"]["job_id"] == job_id
    assert message.payload["event"]["data"]["file_id"] == FILE_ID

    outcome, messages = await process(table, reject=True)
    assert messages == [] and "webhooks" not in outcome.results


@unit
async def test_keys_and_errors_never_carry_the_url_in_full():
    # Webhook URLs often hold a token in the path; outbox keys and delivery
    # errors land in logs, and LMDB keys cannot exceed 511 bytes.
    token = "T0KEN" + "x" * 1000
    url = f"http://127.0.0.1:{closed_port()}/services/{token}"
    _, [message] = await process({"urls": [url], "secret": SECRET})

    assert token not in message.id and len(message.id.encode()) < 100
    assert message.payload["url"] == url
    with pytest.raises(webhooks.WebhookDeliveryError) as failure:
        webhooks.ingestd_deliver(message, parse({"urls": [url], "secret": SECRET}))
    assert "T0KEN" not in str(failure.value)
    assert webhooks.describe_url(url) in str(failure.value)


# -- delivery against a real receiver --------------------------------------------


@pytest.fixture
def receiver():
    with WebhookReceiver(SECRET) as receiver:
        yield receiver


def message_for(url: str, attempt: int = 1, event_type: str = "file.accepted") -> OutboxMessage:
    event_id = f"evt_{FILE_ID}_{event_type}"
    event = {
        "type": event_type,
        "timestamp": "2024-01-01T00:00:00.000Z",
        "data": {"file_id": FILE_ID, "filename": "data.csv", "metadata": {"ü": [1, 2]}},
    }
    payload = {"url": url, "event_id": event_id, "event": event}
    return OutboxMessage(webhooks.message_key(event_id, url), "webhooks", payload, attempt, 0.0)


def test_deliver_posts_a_signed_event(receiver):
    message = message_for(receiver.url)

    webhooks.ingestd_deliver(message, parse({"urls": [receiver.url], "secret": SECRET}))

    [delivery] = receiver.wait_for(1)
    assert delivery.webhook_id == message.payload["event_id"]
    assert delivery.event == message.payload["event"]
    assert delivery.path == "/hooks"
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["webhook-signature"].startswith("v1,")


def test_deliver_raises_when_the_receiver_fails(receiver):
    config = parse({"urls": [receiver.url], "secret": SECRET})
    receiver.fail_next(1, status=500)

    with pytest.raises(webhooks.WebhookDeliveryError, match=r"answered 500.*receiver answered"):
        webhooks.ingestd_deliver(message_for(receiver.url), config)
    assert receiver.deliveries == []

    # The daemon's retry: same webhook id, signed afresh, accepted this time.
    webhooks.ingestd_deliver(message_for(receiver.url, attempt=2), config)
    assert [a.status for a in receiver.attempts] == [500, 204]
    assert len({a.headers["webhook-id"] for a in receiver.attempts}) == 1
    assert len(receiver.unique_events()) == 1


def test_receiver_with_another_secret_rejects_the_signature():
    with WebhookReceiver(OTHER_SECRET) as receiver:
        config = parse({"urls": [receiver.url], "secret": SECRET})
        with pytest.raises(webhooks.WebhookDeliveryError, match="answered 401"):
            webhooks.ingestd_deliver(message_for(receiver.url), config)

    [attempt] = receiver.attempts
    assert not attempt.verified
    assert "signature" in attempt.error.lower()
    assert receiver.deliveries == []


def test_deliver_sends_only_to_the_message_url_and_follows_no_redirect(receiver):
    with WebhookReceiver(SECRET) as elsewhere:
        receiver.fail_next(1, status=307, headers={"location": elsewhere.url})
        config = parse({"urls": [receiver.url, elsewhere.url], "secret": SECRET})

        with pytest.raises(webhooks.WebhookDeliveryError, match="answered 307"):
            webhooks.ingestd_deliver(message_for(receiver.url), config)

    assert len(receiver.attempts) == 1
    assert elsewhere.attempts == []


def test_deliver_raises_on_transport_errors():
    port = closed_port()
    url = f"http://127.0.0.1:{port}/hooks"

    with pytest.raises(webhooks.WebhookDeliveryError) as failure:
        webhooks.ingestd_deliver(message_for(url), parse({"urls": [url], "secret": SECRET}))
    assert f"POST http://127.0.0.1:{port}/… (url " in str(failure.value)
    assert "failed: " in str(failure.value)


def test_deliver_without_a_secret_raises():
    # E.g. the secret was removed from the config while messages were queued.
    with pytest.raises(webhooks.WebhookDeliveryError, match="secret is not set"):
        webhooks.ingestd_deliver(message_for("http://127.0.0.1:9/x"), parse({}))


async def test_notified_events_are_delivered_after_retries(receiver):
    table = {"urls": [receiver.url], "secret": SECRET, "pipeline_url": receiver.url}
    outcome, messages = await process(table)
    assert outcome.accepted and len(messages) == 2
    config = parse(table)
    receiver.fail_next(2)

    # What the outbox service does, without the backoff: retry until delivered.
    for message in messages:
        for attempt in range(1, 4):
            try:
                webhooks.ingestd_deliver(
                    OutboxMessage(message.id, message.plugin, message.payload, attempt, 0.0),
                    config,
                )
                break
            except webhooks.WebhookDeliveryError:
                continue

    events = receiver.unique_events()
    assert set(events) == {f"evt_{FILE_ID}_file.accepted", f"evt_{FILE_ID}_pipeline.requested"}
    assert all(event["data"]["file_id"] == FILE_ID for event in events.values())
    assert [a.status for a in receiver.attempts] == [500, 500, 204, 204]

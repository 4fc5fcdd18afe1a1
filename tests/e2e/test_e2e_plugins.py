"""Plugins in the real daemon: webhooks survive a restart; jobs resume."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import httpx
import pytest
from support.e2e import Daemon
from support.webhooks import WebhookReceiver

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def upload(base: str, data: bytes, name: str) -> dict:
    with httpx.Client(base_url=base, timeout=30) as client:
        created = client.post("/v1/uploads", json={"filename": name, "size": len(data)}).json()
        size = created["chunk_size"]
        for i in created["missing"]:
            r = client.put(
                f"/v1/uploads/{created['id']}/chunks/{i}", content=data[i * size : (i + 1) * size]
            )
            assert r.status_code == 200, r.text
        job_id = client.post(f"/v1/uploads/{created['id']}/complete").json()["job_id"]
        return client.get(f"/v1/jobs/{job_id}?wait=30").json()


def test_webhook_is_retried_after_a_restart(tmp_path: Path):
    with WebhookReceiver(SECRET) as receiver:
        config = tmp_path / "config.toml"
        config.write_text(f'[plugins.webhooks]\nurls = ["{receiver.url}"]\nsecret = "{SECRET}"\n')
        receiver.fail_next(1)
        with Daemon(tmp_path / "daemon", config_path=config) as daemon:
            job = upload(daemon.base_url, b'{"text": "hello"}\n' * 100, "a.jsonl")
            assert job["state"] == "succeeded", job
            assert job["results"]["webhooks"]["notify"]["queued"] == 1
            # The first attempt is refused; kill before the retry (1 s later).
            deadline = time.monotonic() + 10
            while not receiver.attempts and time.monotonic() < deadline:
                time.sleep(0.02)
            assert receiver.attempts and not receiver.deliveries
            daemon.kill()
            # Nothing was delivered before the kill, so what arrives now was
            # sent by the restarted daemon from its durable outbox.
            assert not receiver.deliveries
            daemon.start()
            deliveries = receiver.wait_for(1, timeout=20)
        assert len(receiver.attempts) >= 2
        delivered = deliveries[0]
        assert delivered.event["type"] == "file.accepted"
        assert delivered.event["data"]["file_id"] == job["file_id"]
        # The retry carries the same event id, so receivers can deduplicate.
        first = {k.lower(): v for k, v in receiver.attempts[0].headers.items()}
        assert delivered.webhook_id == first["webhook-id"]

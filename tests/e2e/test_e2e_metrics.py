"""The real daemon's /metrics: known bytes through each API move the counters
by exactly those amounts."""

from __future__ import annotations

import base64
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.e2e import Daemon, tus_patch
from support.webhooks import WebhookReceiver

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}
PUT_ROUTE = "/v1/uploads/<upload_id>/chunks/<index>"


def scrape(c: httpx.Client) -> dict[tuple[str, frozenset], float]:
    r = c.get("/metrics")
    assert r.status_code == 200
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def v1_upload(c: httpx.Client, name: str, data: bytes, *, declare: bool = False) -> tuple:
    """(upload id, job id, chunk PUTs made)."""
    body: dict = {"filename": name, "size": len(data)}
    if declare:
        body["chunks"] = [{"hash": blake3.blake3(data).hexdigest(), "size": len(data)}]
    created = c.post("/v1/uploads", json=body).json()
    size = created["chunk_size"]
    for i in created["missing"]:
        r = c.put(f"/v1/uploads/{created['id']}/chunks/{i}", content=data[i * size :][:size])
        assert r.status_code == 200, r.text
    job_id = c.post(f"/v1/uploads/{created['id']}/complete").json()["job_id"]
    return created["id"], job_id, len(created["missing"])


def seed_upload(c: httpx.Client, name: str, data: bytes) -> str:
    init = c.post("/api/upload/init", json={"filename": name, "totalSize": len(data)}).json()
    size = init["chunkSize"]
    total = -(-len(data) // size)
    for i in range(total):
        r = c.post(
            "/api/upload/chunk",
            data={"uploadId": init["uploadId"], "chunkIndex": str(i), "totalChunks": str(total)},
            files={"chunk": ("blob", data[i * size :][:size], "application/octet-stream")},
        )
        assert r.status_code == 200, r.text
    done = c.post(f"/api/upload/complete/{init['uploadId']}").json()
    return done["downstreamJobId"]


def tus_upload(c: httpx.Client, data: bytes) -> str:
    r = c.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})
    assert r.status_code == 201
    location = r.headers["Location"]
    r = tus_patch(c, location, 0, data)
    assert r.status_code == 204, r.text
    return location.rsplit("/", 1)[1]


def wait_jobs(c: httpx.Client, job_ids: list[str]) -> list[dict]:
    return [c.get(f"/v1/jobs/{j}?wait=30").json() for j in job_ids]


def test_counters_move_by_exactly_the_bytes_sent(tmp_path: Path):
    # Sizes that are not chunk multiples; the default chunk is 1 MiB.
    v1_data = os.urandom((1 << 20) + 12_345)  # two chunks
    seed_data = os.urandom(300_001)
    tus_data = os.urandom(200_003)
    with Daemon(tmp_path / "d") as d, httpx.Client(base_url=d.base_url, timeout=30) as c:
        m0 = scrape(c)
        assert value(m0, "process_resident_memory_bytes") > 0  # the process collector
        assert value(m0, "ingestd_store_files") == 0

        # New bytes on /v1: received and stored, none deduplicated.
        _, job1, puts1 = v1_upload(c, "a.bin", v1_data)
        m1 = scrape(c)
        assert puts1 == 2
        assert moved(m0, m1, "ingestd_received_bytes_total", api="v1") == len(v1_data)
        assert moved(m0, m1, "ingestd_stored_bytes_total", api="v1") == len(v1_data)
        assert moved(m0, m1, "ingestd_deduplicated_bytes_total", api="v1") == 0
        assert moved(m0, m1, "ingestd_chunks_total", result="stored") == 2
        assert moved(m0, m1, "ingestd_uploads_total", api="v1", state="created") == 1
        assert moved(m0, m1, "ingestd_uploads_total", api="v1", state="completed") == 1
        count = "ingestd_request_duration_seconds_count"
        assert moved(m0, m1, count, method="PUT", route=PUT_ROUTE, status="200") == 2
        assert moved(m0, m1, count, method="POST", route="/v1/uploads", status="201") == 1

        # The same content again, declared: the server has it, nothing is sent.
        small = v1_data[:500_000]
        _, job_small, _ = v1_upload(c, "small.bin", small)  # stores a 500,000-byte object
        m2 = scrape(c)
        _, job2, puts2 = v1_upload(c, "again.bin", small, declare=True)
        m3 = scrape(c)
        assert puts2 == 0
        assert moved(m2, m3, "ingestd_deduplicated_bytes_total", api="v1") == len(small)
        assert moved(m2, m3, "ingestd_chunks_total", result="deduplicated") == 1
        assert moved(m2, m3, "ingestd_received_bytes_total", api="v1") == 0
        assert moved(m2, m3, "ingestd_stored_bytes_total", api="v1") == 0
        assert moved(m2, m3, count, method="PUT", route=PUT_ROUTE, status="200") == 0

        # The seed API: new bytes, then the same bytes sent again (received, not stored).
        job3 = seed_upload(c, "b.bin", seed_data)
        m4 = scrape(c)
        assert moved(m3, m4, "ingestd_received_bytes_total", api="seed") == len(seed_data)
        assert moved(m3, m4, "ingestd_stored_bytes_total", api="seed") == len(seed_data)
        assert moved(m3, m4, "ingestd_uploads_total", api="seed", state="created") == 1
        assert moved(m3, m4, "ingestd_uploads_total", api="seed", state="completed") == 1
        job4 = seed_upload(c, "b-again.bin", seed_data)
        m5 = scrape(c)
        assert moved(m4, m5, "ingestd_received_bytes_total", api="seed") == len(seed_data)
        assert moved(m4, m5, "ingestd_stored_bytes_total", api="seed") == 0
        assert moved(m4, m5, "ingestd_deduplicated_bytes_total", api="seed") == 0

        # tus: one PATCH of the whole file completes it.
        tus_upload(c, tus_data)
        m6 = scrape(c)
        assert moved(m5, m6, "ingestd_received_bytes_total", api="tus") == len(tus_data)
        assert moved(m5, m6, "ingestd_stored_bytes_total", api="tus") == len(tus_data)
        assert moved(m5, m6, "ingestd_uploads_total", api="tus", state="created") == 1
        assert moved(m5, m6, "ingestd_uploads_total", api="tus", state="completed") == 1
        patch = {"method": "PATCH", "route": "/files/<upload_id>", "status": "204"}
        assert moved(m5, m6, count, **patch) == 1

        # An upload left open, and one cancelled.
        c.post("/v1/uploads", json={"filename": "open.bin", "size": 10})
        gone = c.post("/v1/uploads", json={"filename": "gone.bin", "size": 10}).json()["id"]
        assert c.delete(f"/v1/uploads/{gone}").status_code == 204

        jobs = wait_jobs(c, [job1, job_small, job2, job3, job4])
        assert [j["verdict"] for j in jobs] == ["accepted"] * 5
        # The tus upload's job is not named by any answer: wait on the counter.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m7 = scrape(c)
            if moved(m0, m7, "ingestd_jobs_total", verdict="accepted") >= 6:
                break
            time.sleep(0.1)
        assert moved(m0, m7, "ingestd_jobs_total", verdict="accepted") == 6
        assert moved(m0, m7, "ingestd_jobs_total", verdict="rejected") == 0
        hist = "ingestd_job_duration_seconds_count"
        assert moved(m0, m7, hist, verdict="accepted") == 6
        assert moved(m0, m7, "ingestd_plugin_verdicts_total", plugin="detect", outcome="ok") == 6
        assert moved(m0, m7, "ingestd_uploads_total", api="v1", state="created") == 5
        assert moved(m0, m7, "ingestd_uploads_total", api="v1", state="completed") == 3
        assert moved(m0, m7, "ingestd_uploads_total", api="v1", state="cancelled") == 1

        # Store size, from the tenant ledger: every file's bytes, each chunk once.
        logical = len(v1_data) + 2 * len(small) + 2 * len(seed_data) + len(tus_data)
        assert value(m7, "ingestd_store_files") == 6
        assert value(m7, "ingestd_store_logical_bytes") == logical
        physical = len(v1_data) + len(small) + len(seed_data) + len(tus_data)
        assert value(m7, "ingestd_store_physical_bytes") == physical
        assert value(m7, "ingestd_uploads_open") == 1
        assert value(m7, "ingestd_uploads_open_bytes") == 10
        # Everything received was stored once, bar the seed repeat.
        received = sum(
            moved(m0, m7, "ingestd_received_bytes_total", api=a) for a in ("v1", "seed", "tus")
        )
        stored = sum(
            moved(m0, m7, "ingestd_stored_bytes_total", api=a) for a in ("v1", "seed", "tus")
        )
        assert received - stored == len(seed_data)


def test_workers_answer_the_sum_of_all_workers(tmp_path: Path):
    """With two workers a scrape reaches either; each answers every worker's counts."""
    sizes = [100_000 + i for i in range(8)]
    with Daemon(tmp_path / "d", args=["--workers", "2"]) as d:
        jobs = []
        for i, size in enumerate(sizes):
            # A new connection each: the kernel spreads them over the workers.
            with httpx.Client(base_url=d.base_url, timeout=30) as c:
                _, job, _ = v1_upload(c, f"f{i}.bin", os.urandom(size))
                jobs.append(job)
        with httpx.Client(base_url=d.base_url, timeout=30) as c:
            assert [j["verdict"] for j in wait_jobs(c, jobs)] == ["accepted"] * len(sizes)

        def one_scrape(_: int) -> dict:
            with httpx.Client(base_url=d.base_url, timeout=30) as c:
                return scrape(c)

        # Side by side, so that both workers get some of them (until both have).
        scrapes: list[dict] = []
        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                scrapes += pool.map(one_scrape, range(24))
                pids = {labels for m in scrapes for name, labels in m if name == "ingestd_worker"}
                if len(pids) == 2:
                    break
        assert len(pids) == 2, pids
        answers = []
        for m in scrapes:
            answers.append(
                (
                    value(m, "ingestd_received_bytes_total", api="v1"),
                    value(m, "ingestd_stored_bytes_total", api="v1"),
                    value(m, "ingestd_uploads_total", api="v1", state="created"),
                    value(
                        m,
                        "ingestd_request_duration_seconds_count",
                        method="PUT",
                        route=PUT_ROUTE,
                        status="200",
                    ),
                    value(m, "ingestd_jobs_total", verdict="accepted"),
                    value(m, "ingestd_store_logical_bytes"),
                )
            )
    total = sum(sizes)
    n = len(sizes)
    assert set(answers) == {(total, total, n, n, n, total)}


def test_expiry_and_garbage_collection_are_counted(tmp_path: Path):
    chunk = 64 << 10
    env = {
        "INGESTD_STORAGE_CHUNK_SIZE": str(chunk),
        "INGESTD_STORAGE_MAINTENANCE_INTERVAL": "0.2",
        "INGESTD_STORAGE_GC_GRACE": "1",
        "INGESTD_STORAGE_SESSION_TTL": "3",
    }
    data = os.urandom(200_000)  # 4 chunks: 3 of 64 KiB and 3,392 bytes
    with Daemon(tmp_path / "d", extra_env=env) as d, httpx.Client(base_url=d.base_url) as c:
        m0 = scrape(c)
        _, job, puts = v1_upload(c, "gone.bin", data)
        assert puts == 4
        file_id = wait_jobs(c, [job])[0]["file_id"]
        assert c.delete(f"/v1/files/{file_id}").status_code == 204
        # An upload that gets one chunk and is then left to expire.
        left = c.post("/v1/uploads", json={"filename": "left.bin", "size": chunk + 10}).json()
        other = os.urandom(chunk)
        assert c.put(f"/v1/uploads/{left['id']}/chunks/0", content=other).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m1 = scrape(c)
            if moved(m0, m1, "ingestd_gc_reclaimed_bytes_total") >= len(data) + chunk:
                break
            time.sleep(0.2)
        assert moved(m0, m1, "ingestd_gc_reclaimed_bytes_total") == len(data) + chunk
        assert moved(m0, m1, "ingestd_gc_reclaimed_objects_total") == 4 + 1
        assert moved(m0, m1, "ingestd_uploads_total", api="unknown", state="expired") == 1
        assert moved(m0, m1, "ingestd_gc_runs_total") >= 5  # 0.2 s apart over ≥ 3 s
        assert value(m1, "ingestd_uploads_open") == 0
        assert value(m1, "ingestd_store_files") == 0
        assert value(m1, "ingestd_store_physical_bytes") == 0


def test_plugin_errors_verdicts_and_webhook_retries_are_counted(tmp_path: Path):
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with WebhookReceiver(secret) as receiver:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[plugins.webhooks]\nurls = ["{receiver.url}"]\nsecret = "{secret}"\n'
            f'[plugins.clamav]\nsocket = "{tmp_path / "no-clamd.sock"}"\n'
        )
        receiver.fail_next(1)  # the first attempt is refused, the retry (1 s later) taken
        with Daemon(tmp_path / "d", config_path=config) as d:
            with httpx.Client(base_url=d.base_url, timeout=30) as c:
                m0 = scrape(c)
                _, job, _ = v1_upload(c, "a.bin", os.urandom(1000))
                assert wait_jobs(c, [job])[0]["verdict"] == "rejected"
                receiver.wait_for(1, timeout=20)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    m1 = scrape(c)
                    done = "ingestd_outbox_deliveries_total"
                    if moved(m0, m1, done, plugin="webhooks", result="delivered") == 1:
                        break
                    time.sleep(0.05)
    assert [e.event["type"] for e in receiver.deliveries] == ["file.rejected"]
    deliveries = "ingestd_outbox_deliveries_total"
    assert moved(m0, m1, deliveries, plugin="webhooks", result="retry") == 1
    assert moved(m0, m1, deliveries, plugin="webhooks", result="delivered") == 1
    assert moved(m0, m1, deliveries, plugin="webhooks", result="dead") == 0
    assert moved(m0, m1, "ingestd_plugin_errors_total", plugin="clamav", stage="scan") == 1
    verdicts = "ingestd_plugin_verdicts_total"
    assert moved(m0, m1, verdicts, plugin="clamav", outcome="error") == 1
    assert moved(m0, m1, verdicts, plugin="detect", outcome="ok") == 1
    assert moved(m0, m1, verdicts, plugin="webhooks", outcome="ok") == 1
    assert moved(m0, m1, "ingestd_jobs_total", verdict="rejected") == 1
    assert moved(m0, m1, "ingestd_jobs_total", verdict="accepted") == 0
    assert moved(m0, m1, "ingestd_job_duration_seconds_count", verdict="rejected") == 1

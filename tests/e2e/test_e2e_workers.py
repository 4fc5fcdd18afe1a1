"""`ingestd serve --workers 2`: two processes on one socket and one data directory.

Uploads go through both; a worker SIGKILLed mid-upload loses nothing it
acknowledged and is started again; the background services (jobs) move to
the surviving worker when the leader dies; a tus upload's single-writer lock
holds across the processes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import blake3
import httpx
import pytest
from support.e2e import Daemon, random_spans

pytestmark = pytest.mark.e2e

SIZE = 24 << 20
WAIT = 30.0


@pytest.fixture
def daemon(tmp_path: Path):
    with Daemon(tmp_path / "daemon", args=["--workers", "2"]) as d:
        yield d


def log_entries(daemon: Daemon) -> list[dict]:
    """The daemon's JSON log lines so far (the banner's plain lines skipped)."""
    entries = []
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def leader_pid(daemon: Daemon) -> int:
    text = (daemon.data_dir / "locks" / "leader").read_text().strip()
    return int(text)


def wait_for(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def two_workers(daemon: Daemon) -> list[int]:
    return wait_for(lambda: len(daemon.children()) == 2 and daemon.children(), "two workers")


class Sender:
    """Sends chunks from several threads, each on its own connection (so that
    the kernel spreads them over the workers); records what was acknowledged."""

    def __init__(self, base: str, upload_id: str, data: bytes, spans) -> None:
        self.base, self.upload_id, self.data, self.spans = base, upload_id, data, spans
        self.acked: set[int] = set()
        self.lock = threading.Lock()

    def send(self, indices: list[int], new_connection_each: bool = False) -> None:
        client = httpx.Client(timeout=30)
        try:
            for i in indices:
                o, n = self.spans[i]
                if new_connection_each:
                    client.close()
                    client = httpx.Client(timeout=30)
                try:
                    r = client.put(
                        f"{self.base}/v1/uploads/{self.upload_id}/chunks/{i}",
                        content=self.data[o : o + n],
                    )
                except httpx.TransportError:
                    # Cut off by the kill: carry on, on a new connection.
                    client.close()
                    client = httpx.Client(timeout=30)
                    continue
                assert r.status_code == 200, r.text
                with self.lock:
                    self.acked.add(i)
        finally:
            client.close()

    def run(self, indices: list[int], threads: int = 4, **kw) -> None:
        workers = [
            threading.Thread(target=self.send, args=(indices[k::threads],), kwargs=kw)
            for k in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)


def test_two_workers_share_uploads_and_survive_a_sigkill(daemon: Daemon):
    first_pids = two_workers(daemon)
    data = random.Random(7).randbytes(SIZE)
    spans = random_spans(len(data), 8, largest=1 << 20)
    chunks = [{"hash": blake3.blake3(data[o : o + n]).hexdigest(), "size": n} for o, n in spans]
    base = daemon.base_url
    created = httpx.post(
        f"{base}/v1/uploads", json={"filename": "w.bin", "size": SIZE, "chunks": chunks}, timeout=10
    ).json()
    upload_id = created["id"]
    sender = Sender(base, upload_id, data, spans)
    order = list(range(len(spans)))
    random.Random(9).shuffle(order)
    third = len(order) // 3
    sender.run(order[:third], new_connection_each=True)
    assert set(order[:third]) <= sender.acked

    # Both processes took part: each answered some of the chunks (by the
    # workers' own request lines).
    def served() -> collections.Counter:
        return collections.Counter(
            e.get("worker")
            for e in log_entries(daemon)
            if e.get("route") == "/v1/uploads/<upload_id>/chunks/<index>" and e.get("status") == 200
        )

    # A request's line is written just after its answer's last byte.
    by_worker = wait_for(lambda: (c := served()).total() >= third and c, "request lines")
    assert set(by_worker) == {"w0", "w1"}, by_worker

    # SIGKILL one worker while the next third is in flight.
    victim = first_pids[0]
    late = threading.Thread(target=sender.run, args=(order[third : 2 * third],))
    late.start()
    wait_for(lambda: len(sender.acked) > third + 2, "chunks after the first third")
    os.kill(victim, signal.SIGKILL)
    late.join(timeout=120)

    # The master starts a new worker in its place.
    pids = wait_for(
        lambda: (
            len(daemon.children()) == 2 and victim not in daemon.children() and daemon.children()
        ),
        "the killed worker to be replaced",
    )
    assert first_pids[1] in pids
    status = httpx.get(f"{base}/v1/uploads/{upload_id}", timeout=10).json()
    missing = set(status["missing"])
    assert not (sender.acked & missing), f"acknowledged but lost: {sorted(sender.acked & missing)}"
    assert status["received_chunks"] == len(spans) - len(missing)

    sender.run(sorted(missing), new_connection_each=True)
    accepted = httpx.post(f"{base}/v1/uploads/{upload_id}/complete", timeout=10)
    assert accepted.status_code == 202, accepted.text
    job = httpx.get(f"{base}/v1/jobs/{accepted.json()['job_id']}?wait=30", timeout=40).json()
    assert job["state"] == "succeeded", job
    content = httpx.get(f"{base}/v1/files/{job['file_id']}/content", timeout=30)
    assert hashlib.sha256(content.content).digest() == hashlib.sha256(data).digest()
    # Every worker's temp files went: nothing half-written is left behind.
    assert [p for p in (daemon.data_dir / "tmp").rglob("*") if p.is_file()] == []


def test_jobs_move_to_the_other_worker_when_the_leader_dies(daemon: Daemon):
    pids = two_workers(daemon)
    leader = wait_for(lambda: leader_pid(daemon) in pids and leader_pid(daemon), "a leader")
    os.kill(leader, signal.SIGKILL)
    # The survivor takes the lock (or the restarted worker does).
    new_leader = wait_for(
        lambda: (pid := leader_pid(daemon)) != leader and pid in daemon.children() and pid,
        "another leader",
    )
    assert new_leader != leader
    base = daemon.base_url
    for n in range(4):  # on new connections, so through either worker
        data = random.Random(n).randbytes(300_000 + n)
        with httpx.Client(base_url=base, timeout=10) as client:
            upload = client.post("/v1/uploads", json={"filename": f"f{n}.bin", "size": len(data)})
            upload_id = upload.json()["id"]
            r = client.put(f"/v1/uploads/{upload_id}/chunks/0", content=data)
            assert r.status_code == 200, r.text
            job_id = client.post(f"/v1/uploads/{upload_id}/complete").json()["job_id"]
        with httpx.Client(base_url=base, timeout=40) as client:
            job = client.get(f"/v1/jobs/{job_id}?wait=30").json()
            assert job["state"] == "succeeded", job
            got = client.get(f"/v1/files/{job['file_id']}/content").content
            assert blake3.blake3(got).digest() == blake3.blake3(data).digest()


def test_a_tus_upload_has_one_writer_across_workers(daemon: Daemon):
    two_workers(daemon)
    base = daemon.base_url
    size = 8 << 20
    tus = {"Tus-Resumable": "1.0.0"}
    created = httpx.post(f"{base}/files/", headers={**tus, "Upload-Length": str(size)}, timeout=10)
    assert created.status_code == 201, created.text
    url = base + created.headers["Location"]
    gate = threading.Event()

    def slow_body():
        yield b"x" * 65536
        gate.wait(20)  # holds the upload until the other requests were answered
        yield b"y" * 65536

    answers: list[int] = []
    holder = threading.Thread(
        target=lambda: answers.append(
            httpx.patch(
                url,
                content=slow_body(),
                headers={
                    **tus,
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                },
                timeout=30,
            ).status_code
        )
    )
    holder.start()
    try:
        time.sleep(0.5)
        for _ in range(6):  # new connections: some land on the other worker
            with httpx.Client(timeout=10) as client:
                r = client.patch(
                    url,
                    content=b"z" * 1000,
                    headers={
                        **tus,
                        "Upload-Offset": "0",
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
            assert r.status_code == 409, (r.status_code, r.text)
            assert r.json()["code"] == "upload_locked", r.text
    finally:
        gate.set()
        holder.join(timeout=30)
    assert answers == [204]
    head = httpx.head(url, headers=tus, timeout=10)
    assert head.headers["Upload-Offset"] == str(2 * 65536)


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestd.daemon.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_not_a_traceback(daemon: Daemon, tmp_path: Path, workers):
    second = serve(
        "--workers", workers, "--port", str(daemon.port), "--data-dir", str(tmp_path / "o")
    )
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"ingestd: cannot listen on 127.0.0.1:{daemon.port}: Address already in use"
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_one_daemon_per_data_directory(daemon: Daemon, tmp_path: Path, workers):
    # Under no slot of the running daemon (its workers clear their own at start).
    tmp_file = daemon.data_dir / "tmp" / "w9" / "keep.part"
    tmp_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_file.write_bytes(b"x")
    second = serve("--workers", workers, "--port", "0", "--data-dir", str(daemon.data_dir))
    assert second.returncode == 1
    pid = daemon.proc.pid
    assert second.stderr.strip().splitlines() == [
        f"ingestd: another ingestd (pid {pid}) is serving {daemon.data_dir}; stop it first, "
        "or give this one its own --data-dir"
    ]
    assert "serving" not in second.stdout + second.stderr.replace("is serving", "")
    assert tmp_file.exists()  # the first one's temp files were left alone
    assert httpx.get(f"{daemon.base_url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("workers", ["1", "2"])
def test_start_up_banner_and_warnings(tmp_path: Path, workers):
    with Daemon(tmp_path / "d", args=["--workers", workers]) as d:
        # Answered by a worker (with several): its request line is JSON as well.
        httpx.get(f"{d.base_url}/healthz", headers={"X-Request-Id": "banner-1"}, timeout=10)
        deadline = time.monotonic() + 10
        while "banner-1" not in d.log_tail(100_000) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = d.log_tail(100_000)
    lines = log.splitlines()
    first = next(i for i, line in enumerate(lines) if "serving" in line)
    url = f"http://127.0.0.1:{d.port}"
    assert (
        lines[first] == f"ingestd 0.1.0 serving {url} — the page at {url}/, the API at {url}/docs"
    )
    assert f"data: {d.data_dir}; auth: off; workers: {workers}" in lines[first + 1]
    assert lines[first + 2].startswith("  plugins: ") and "detect" in lines[first + 2]
    assert sum("serving" in line for line in lines) == 1  # once, by the master with workers
    # Not a terminal: every other line is a JSON object (master's and workers').
    entries = [json.loads(line) for line in lines[first + 3 :] if line]
    for warning in ("auth is off", "clamd is not configured", "storage.materialize = 'copy'"):
        found = [e for e in entries if e["event"].startswith(warning)]
        assert [e["level"] for e in found] == ["warning"], warning
    request = [e for e in entries if e.get("request_id") == "banner-1"]
    assert [(e["route"], e["status"]) for e in request] == [("/healthz", 200)]
    # A worker's lines name it; a single process's have no worker field.
    expected = {"w0", "w1"} if workers == "2" else {None}
    assert request[0].get("worker") in expected

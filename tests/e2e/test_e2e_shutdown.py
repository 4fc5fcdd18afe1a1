"""SIGTERM with chunk writes in flight on all three APIs, against the real daemon.

The daemon stops accepting connections at once, lets a write whose body
arrives within the grace period finish (and acknowledges it), cuts off one
that does not, exits 0 within the grace period, and leaves a data directory
that fsck finds clean: the acknowledged chunk is there after a restart, the
cut-off ones are not half-kept, and every upload finishes with the right bytes.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import blake3
import httpx
import pytest
from support.e2e import HOST, Daemon, tus_patch

pytestmark = pytest.mark.e2e

GRACE = 2.0  # server.shutdown_grace, set below
CHUNK = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}


def open_request(daemon: Daemon, head: str, body_part: bytes) -> socket.socket:
    """A request whose head and first body bytes are sent; the rest is up to the caller."""
    s = socket.create_connection((HOST, daemon.port), timeout=20)
    s.sendall(head.encode() + body_part)
    return s


def answer_status(s: socket.socket) -> int | None:
    """The status of the answer on `s`, or None if the connection ended without one."""
    data = b""
    try:
        while b"\r\n" not in data:
            more = s.recv(65536)
            if not more:
                return None
            data += more
    except (ConnectionResetError, TimeoutError):
        return None
    return int(data.split(b" ", 2)[1])


def fsck(daemon: Daemon) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ingestd.daemon.cli", "fsck", "--data-dir", str(daemon.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")},
    )


def test_sigterm_finishes_or_cuts_off_writes_in_flight_and_exits_0(tmp_path: Path):
    rng = random.Random(7)
    data = rng.randbytes(2 * CHUNK)
    env = {"INGESTD_SERVER_SHUTDOWN_GRACE": str(GRACE)}
    with Daemon(tmp_path / "d", extra_env=env) as daemon:
        base = daemon.base_url
        with httpx.Client(base_url=base, timeout=20) as client:
            v1 = client.post(
                "/v1/uploads", json={"filename": "v1.bin", "size": len(data), "chunk_size": CHUNK}
            ).json()
            seed = client.post(
                "/api/upload/init", json={"filename": "seed.bin", "totalSize": len(data)}
            ).json()
            r = client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})
            tus_path = httpx.URL(r.headers["Location"]).path

        # Three writes in flight: v1 chunk 0 (finishes within the grace period),
        # a seed chunk and a tus PATCH (never finish their bodies).
        v1_put = open_request(
            daemon,
            f"PUT /v1/uploads/{v1['id']}/chunks/0 HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Length: {CHUNK}\r\nContent-Type: application/octet-stream\r\n\r\n",
            data[: CHUNK // 2],
        )
        boundary = "b0undary"
        preamble = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="uploadId"\r\n\r\n'
            f"{seed['uploadId']}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="chunkIndex"\r\n\r\n0\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="totalChunks"\r\n\r\n2\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="chunk"; filename="c"\r\n\r\n'
        ).encode()
        epilogue = f"\r\n--{boundary}--\r\n".encode()
        seed_post = open_request(
            daemon,
            f"POST /api/upload/chunk HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(preamble) + CHUNK + len(epilogue)}\r\n\r\n",
            preamble + data[: CHUNK // 4],
        )
        tus_write = open_request(
            daemon,
            f"PATCH {tus_path} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n",
            data[: CHUNK + CHUNK // 2],
        )
        time.sleep(0.5)  # the daemon is reading all three

        stopped = time.monotonic()
        os.kill(daemon.proc.pid, signal.SIGTERM)
        time.sleep(0.3)
        # No new connections once the stop has begun.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz", timeout=2)
        v1_put.sendall(data[CHUNK // 2 : CHUNK])
        assert answer_status(v1_put) == 200  # finished within the grace period
        # The other two never send the rest: the daemon ends them and exits 0.
        rc = daemon.proc.wait(timeout=GRACE + 10)
        elapsed = time.monotonic() - stopped
        assert rc == 0, daemon.log_tail()
        assert elapsed < GRACE + 3, elapsed
        assert answer_status(seed_post) in (None, 503)
        for s in (v1_put, seed_post, tus_write):
            s.close()

        assert fsck(daemon).returncode == 0, fsck(daemon).stdout
        daemon.start()
        with httpx.Client(base_url=base, timeout=20) as client:
            # The acknowledged chunk is there; the rest is sent and the file checks out.
            status = client.get(f"/v1/uploads/{v1['id']}").json()
            assert status["missing"] == [1], status
            put = client.put(f"/v1/uploads/{v1['id']}/chunks/1", content=data[CHUNK:])
            assert put.status_code == 200, put.text
            done = client.post(f"/v1/uploads/{v1['id']}/complete")
            assert done.status_code in (200, 202), done.text

            seed_status = client.get(f"/api/upload/status/{seed['uploadId']}").json()
            assert seed_status["receivedChunks"] == [], seed_status  # nothing half-kept
            for i in range(2):
                r = client.post(
                    "/api/upload/chunk",
                    data={"uploadId": seed["uploadId"], "chunkIndex": str(i), "totalChunks": "2"},
                    files={"chunk": ("c", data[i * CHUNK : (i + 1) * CHUNK])},
                )
                assert r.status_code == 200, r.text
            seed_done = client.post(f"/api/upload/complete/{seed['uploadId']}")
            assert seed_done.status_code == 200, seed_done.text

            # tus keeps what it had received, on a chunk boundary or not.
            offset = int(client.head(tus_path, headers=TUS).headers["Upload-Offset"])
            assert 0 <= offset <= CHUNK + CHUNK // 2
            r = tus_patch(client, tus_path, offset, data[offset:])
            assert r.status_code == 204, r.text

            want = blake3.blake3(data).hexdigest()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                listed = client.get("/v1/files", params={"limit": 10}).json()["files"]
                if len(listed) == 3 and all(f["state"] != "processing" for f in listed):
                    break
                time.sleep(0.2)
            assert len(listed) == 3, listed
            for f in listed:
                assert f["blake3"] == want and f["state"] == "accepted", f
                body = client.get(f"/v1/files/{f['id']}/content").content
                assert blake3.blake3(body).hexdigest() == want, f
        daemon.stop()
        assert fsck(daemon).returncode == 0

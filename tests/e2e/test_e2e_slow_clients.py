"""Clients that hold the daemon: bodies that trickle, too many requests from
one address, a HEAD with a body. Against the real daemon on a socket."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from support.e2e import HOST, Daemon

pytestmark = pytest.mark.e2e


def connect(daemon: Daemon) -> socket.socket:
    s = socket.create_connection((HOST, daemon.port), timeout=30)
    return s


def read_head(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        more = s.recv(4096)
        if not more:
            break
        data += more
    return data


def test_a_trickling_chunk_body_ends_with_408(tmp_path: Path):
    # 4 KiB at 2 KiB/s must arrive within 3 s + 2 s; the test sends 1 byte a second.
    env = {
        "INGESTD_LIMITS_BODY_TIMEOUT": "3",
        "INGESTD_LIMITS_MIN_BODY_RATE": "2048",
        "INGESTD_STORAGE_CHUNK_SIZE": "4096",
    }
    with Daemon(tmp_path / "d", extra_env=env) as d:
        up = httpx.post(f"{d.base_url}/v1/uploads", json={"filename": "t", "size": 4096}).json()
        s = connect(d)
        s.sendall(
            f"PUT /v1/uploads/{up['id']}/chunks/0 HTTP/1.1\r\nHost: {HOST}\r\n"
            "Content-Length: 4096\r\n\r\n".encode()
        )
        started = time.monotonic()
        s.settimeout(1.0)
        answer = b""
        while time.monotonic() - started < 30 and b"\r\n\r\n" not in answer:
            try:
                s.sendall(b"x")
            except OSError:
                pass
            try:
                answer += s.recv(4096)
            except TimeoutError:
                pass
        elapsed = time.monotonic() - started
        s.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 5 <= elapsed < 15, elapsed
        status = httpx.get(f"{d.base_url}/v1/uploads/{up['id']}").json()
        assert status["received_chunks"] == 0  # nothing of the trickle was kept


def test_requests_in_flight_per_address_are_capped(tmp_path: Path):
    with Daemon(tmp_path / "d", extra_env={"INGESTD_LIMITS_MAX_REQUESTS_PER_CLIENT": "2"}) as d:
        held = []
        for _ in range(2):  # two requests whose bodies never finish
            s = connect(d)
            s.sendall(
                f"POST /v1/uploads HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n{".encode()
            )
            held.append(s)
        time.sleep(0.5)
        r = httpx.get(f"{d.base_url}/v1/files", timeout=10)
        assert r.status_code == 429 and r.json()["code"] == "too_many_requests"
        assert r.headers["Retry-After"] == "1"
        for s in held:
            s.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if httpx.get(f"{d.base_url}/v1/files", timeout=10).status_code == 200:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the slots were not given back")


def test_a_head_with_a_body_does_not_hang_the_connection(tmp_path: Path):
    with Daemon(tmp_path / "d") as d:
        for path in ("/v1/files", "/files/0123456789abcdef0123456789abcdef", "/healthz"):
            s = connect(d)
            head = f"HEAD {path} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
            body = "Content-Length: 10\r\n\r\n0123456789"
            then = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            s.sendall((head + body + then).encode())
            s.settimeout(10)
            data = b""
            started = time.monotonic()
            while data.count(b"HTTP/1.1 ") < 2 and time.monotonic() - started < 10:
                more = s.recv(65536)
                if not more:
                    break
                data += more
            s.close()
            assert data.count(b"HTTP/1.1 ") == 2, (path, data[:300])


def test_an_answer_before_the_body_arrives_leaves_the_connection_usable(tmp_path: Path):
    """The body comes a moment after the head (as `requests` sends it) and the
    answer is given without reading it — a method the route does not take, a
    GET with a body, an unknown path, a refused chunk on each API. The next
    request on the connection must be answered (hypercorn left it hanging)."""
    cases = [
        ("TRACE", "/api/upload/init"),
        ("GET", "/api/upload/init"),
        ("GET", "/healthz"),
        ("DELETE", "/v1/files"),
        ("QUERY", "/nowhere"),
        ("PUT", "/v1/uploads/0123456789abcdef0123456789abcdef/chunks/0"),
        ("PATCH", "/files/0123456789abcdef0123456789abcdef"),
        ("POST", "/api/upload/chunk"),
    ]
    body = b'{"filename": "x", "totalSize": 0}'
    with Daemon(tmp_path / "d") as d:
        for method, path in cases:
            s = connect(d)
            s.settimeout(10)
            statuses = []
            for _ in range(2):
                head = (
                    f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nTus-Resumable: 1.0.0\r\n"
                    f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                s.sendall(head.encode())
                time.sleep(0.05)  # the answer may be sent before the body comes
                s.sendall(body)
                answer = read_head(s)
                statuses.append(answer.split(b"\r\n")[0])
                length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                rest = answer.split(b"\r\n\r\n", 1)[1]
                while len(rest) < length:
                    rest += s.recv(65536)
            s.close()
            assert statuses[0] == statuses[1], (method, path, statuses)

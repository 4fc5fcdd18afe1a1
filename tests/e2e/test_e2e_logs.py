"""The real daemon's logs with `--log-format json`: a line per request, per job
verdict, per plugin error, and the start-up warnings, all JSON objects."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from support.e2e import Daemon

pytestmark = pytest.mark.e2e

PUT_ROUTE = "/v1/uploads/<upload_id>/chunks/<index>"


def json_lines(daemon: Daemon) -> list[dict]:
    out = []
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # a line starting with { that is not JSON fails
    return out


def wait_for(daemon: Daemon, match, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in json_lines(daemon):
            if match(entry):
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no matching log line; tail:\n{daemon.log_tail()}")


def test_json_logs_of_requests_jobs_and_plugin_errors(tmp_path: Path):
    config = tmp_path / "config.toml"
    # clamd configured but absent: the clamav plugin fails in its scan.
    config.write_text(f'[plugins.clamav]\nsocket = "{tmp_path / "no-clamd.sock"}"\n')
    data = os.urandom(5000)
    with Daemon(tmp_path / "d", config_path=config, args=["--log-format", "json"]) as d:
        with httpx.Client(base_url=d.base_url, timeout=30) as c:
            r = c.post(
                "/v1/uploads",
                json={"filename": "weights.bin", "size": len(data)},
                headers={"X-Request-Id": "create-42"},
            )
            assert r.status_code == 201
            assert r.headers["X-Request-Id"] == "create-42"
            upload_id = r.json()["id"]
            put = c.put(
                f"/v1/uploads/{upload_id}/chunks/0",
                content=data,
                headers={"X-Request-Id": "put-7/a:b"},
            )
            assert put.headers["X-Request-Id"] == "put-7/a:b"
            # Not sane (a space, a non-ASCII letter, too long): replaced by one of ours.
            odd = c.get("/v1/nowhere", headers={"X-Request-Id": "x" * 65})
            made = odd.headers["X-Request-Id"]
            assert made != "x" * 65 and len(made) == 32 and int(made, 16) >= 0
            spaced = c.get("/healthz", headers={"X-Request-Id": "a b"}).headers["X-Request-Id"]
            assert spaced != "a b" and len(spaced) == 32
            job_id = c.post(f"/v1/uploads/{upload_id}/complete").json()["job_id"]
            job = c.get(f"/v1/jobs/{job_id}?wait=30").json()
        assert job["verdict"] == "rejected"

        line = wait_for(d, lambda e: e.get("request_id") == "put-7/a:b")
        assert line["event"] == "request"
        assert line["logger"] == "ingestd.access"
        assert line["level"] == "info"
        assert line["method"] == "PUT"
        assert line["route"] == PUT_ROUTE
        assert line["status"] == 200
        assert line["bytes_in"] == len(data)
        assert line["bytes_out"] == len(put.content)
        assert 0 < line["duration"] < 30
        assert line["tenant"] == "default"
        assert line["upload_id"] == upload_id
        assert line["api"] == "v1"
        assert line["timestamp"].endswith("Z")

        created = wait_for(d, lambda e: e.get("request_id") == "create-42")
        assert (created["method"], created["route"], created["status"]) == (
            "POST",
            "/v1/uploads",
            201,
        )
        assert created["upload_id"] == upload_id  # the new upload's id, from the core
        assert created["bytes_out"] == len(r.content)
        # An unmatched path is never a route label (a client chooses it).
        miss = wait_for(d, lambda e: e.get("request_id") == made)
        assert (miss["route"], miss["status"], miss["upload_id"]) == ("<unmatched>", 404, None)

        verdict = wait_for(d, lambda e: e.get("event") == "job verdict")
        assert verdict["job_id"] == job_id
        assert verdict["file_id"] == job["file_id"]
        assert verdict["upload_id"] == upload_id
        assert verdict["verdict"] == "rejected"
        assert verdict["plugins"]["clamav"] == "error"
        assert verdict["plugins"]["detect"] == "ok"
        assert "clamav failed in scan" in verdict["reason"]
        assert 0 < verdict["duration"] < 30

        # Logged in the plugin worker process, relayed as one record, its
        # fields kept, the job bound to it.
        failed = wait_for(d, lambda e: e.get("plugin") == "clamav")
        assert failed["level"] == "warning"
        assert failed["logger"] == "ingestd.plugins"
        assert failed["stage"] == "scan"
        assert failed["error"].startswith("clamd unreachable at ")
        assert failed["event"] == f"plugin clamav failed in scan: {failed['error']}"
        assert failed["job_id"] == job_id
        assert (
            failed["exception"]
            .splitlines()[-1]
            .startswith("ingestd.plugins.builtin.clamav.ClamdError: clamd unreachable")
        )
        # The traceback is in that record, not spread over lines of its own.
        assert not any("Traceback" in e["event"] for e in json_lines(d))

        events = [e["event"] for e in json_lines(d) if e.get("level") == "warning"]
        assert any(e.startswith("auth is off") for e in events), events
        assert any(e.startswith("storage.materialize = 'copy'") for e in events), events
        assert not any(e.startswith("clamd is not configured") for e in events), events
    text = d.log_path.read_text()
    # The banner stays plain text, before the first JSON line.
    assert text.startswith("ingestd 0.1.0 serving http://127.0.0.1:")
    # Nothing else is printed outside JSON (bar the three banner lines).
    others = [ln for ln in text.splitlines() if ln and not ln.startswith("{")]
    assert len(others) == 3, others


def test_thread_isolation_logs_plugin_errors_with_the_plugin_name(tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text(
        '[plugins]\nisolation = "thread"\n'
        f'[plugins.clamav]\nsocket = "{tmp_path / "no-clamd.sock"}"\n'
    )
    with Daemon(tmp_path / "d", config_path=config, args=["--log-format", "json"]) as d:
        with httpx.Client(base_url=d.base_url, timeout=30) as c:
            upload_id = c.post("/v1/uploads", json={"filename": "a.bin", "size": 3}).json()["id"]
            c.put(f"/v1/uploads/{upload_id}/chunks/0", content=b"abc")
            job_id = c.post(f"/v1/uploads/{upload_id}/complete").json()["job_id"]
            assert c.get(f"/v1/jobs/{job_id}?wait=30").json()["verdict"] == "rejected"
        # The stdlib record of the plugin runner, its extra fields as keys.
        failed = wait_for(d, lambda e: e.get("plugin") == "clamav" and e.get("stage") == "scan")
        assert failed["logger"] == "ingestd.plugins"
        assert failed["job_id"] == job_id  # bound while the job runs, threads included
        assert failed["level"] == "warning"
        assert failed["event"].startswith("plugin clamav failed in scan: clamd unreachable")
        assert "Traceback" in failed["exception"]
        verdict = wait_for(d, lambda e: e.get("event") == "job verdict")
        assert (verdict["job_id"], verdict["plugins"]["clamav"]) == (job_id, "error")


def test_console_format_from_the_config_file(tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text('[logging]\nformat = "console"\n')
    with Daemon(tmp_path / "d", config_path=config) as d:
        httpx.get(f"{d.base_url}/healthz", headers={"X-Request-Id": "cons-1"}, timeout=10)
        deadline = time.monotonic() + 10
        while "cons-1" not in d.log_tail(100_000) and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = d.log_tail(100_000).splitlines()
    line = next(ln for ln in lines if "request_id=cons-1" in ln)
    assert "[info     ] request" in line
    for field in ("method=GET", "route=/healthz", "status=200", "bytes_in=0", "tenant=None"):
        assert field in line.split(), (field, line)
    assert not any(ln.startswith("{") for ln in lines)
    assert any("[warning  ] auth is off" in ln for ln in lines)


def test_a_download_line_counts_the_bytes_sent(tmp_path: Path):
    data = os.urandom(300_000)
    with Daemon(tmp_path / "d", args=["--log-format", "json"]) as d:
        with httpx.Client(base_url=d.base_url, timeout=30) as c:
            upload_id = c.post("/v1/uploads", json={"filename": "x.bin", "size": len(data)})
            upload_id = upload_id.json()["id"]
            c.put(f"/v1/uploads/{upload_id}/chunks/0", content=data)
            job_id = c.post(f"/v1/uploads/{upload_id}/complete").json()["job_id"]
            file_id = c.get(f"/v1/jobs/{job_id}?wait=30").json()["file_id"]
            got = c.get(f"/v1/files/{file_id}/content", headers={"X-Request-Id": "dl-1"})
            assert got.content == data
            part = c.get(
                f"/v1/files/{file_id}/content",
                headers={"X-Request-Id": "dl-2", "Range": "bytes=10-109"},
            )
            assert part.status_code == 206
        line = wait_for(d, lambda e: e.get("request_id") == "dl-1")
        assert (line["route"], line["status"]) == ("/v1/files/<file_id>/content", 200)
        assert (line["bytes_in"], line["bytes_out"]) == (0, len(data))
        assert (line["file_id"], line["upload_id"]) == (file_id, None)
        ranged = wait_for(d, lambda e: e.get("request_id") == "dl-2")
        assert (ranged["status"], ranged["bytes_out"]) == (206, 100)

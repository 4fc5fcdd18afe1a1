"""End to end: `ingestd upload/download/ls` (the /v1 client) against the real daemon.

The CLI runs as a subprocess, as a user would run it, with its resume state in
a temporary directory. Everything talks to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support.e2e import Cli, Daemon, file_blake3, sha256_file, write_random_file
from support.jsonl import insert_lines, jsonl_bytes
from support.proxy import ThrottledProxy

pytestmark = pytest.mark.e2e

KiB = 1 << 10
MiB = 1 << 20
FILE_SIZE = 32 * MiB
WAIT_TIMEOUT = 60.0


def server_info(daemon: Daemon) -> dict:
    r = httpx.get(f"{daemon.base_url}/v1/info", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def upload_status(daemon: Daemon, upload_id: str) -> dict:
    r = httpx.get(f"{daemon.base_url}/v1/uploads/{upload_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def download(cli: Cli, daemon: Daemon, file_id: str, dest: Path) -> Path:
    out = cli.run("download", file_id, "-o", str(dest), "--url", daemon.base_url).stdout
    assert Path(out.strip()) == dest
    return dest


def test_upload_download_dedup_and_ls(daemon: Daemon, cli: Cli, tmp_path: Path):
    source = tmp_path / "model.bin"
    sha = write_random_file(source, FILE_SIZE)

    first = cli.upload(daemon.base_url, str(source))
    assert first["bytes_total"] == FILE_SIZE
    assert first["bytes_sent"] == FILE_SIZE
    assert first["chunks_sent"] == first["chunks_total"] > 1
    assert first["chunks_skipped"] == 0
    assert first["resumed"] is False
    assert first["filename"] == source.name
    assert first["blake3"] == file_blake3(source)
    assert first["seconds"] > 0
    assert cli.state_files() == []  # a finished upload leaves no resume state

    copy = download(cli, daemon, first["file_id"], tmp_path / "copy.bin")
    assert sha256_file(copy) == sha

    # The same file again: the accepted file is the answer, nothing is sent.
    again = cli.upload(daemon.base_url, str(source))
    assert again["already_uploaded"] is True
    assert (again["file_id"], again["upload_id"]) == (first["file_id"], first["upload_id"])
    assert again["bytes_sent"] == 0 and again["bytes_on_server"] == FILE_SIZE

    # --new: a new upload and file record, and still nothing to send: every
    # chunk is already there.
    second = cli.upload(daemon.base_url, str(source), "--new")
    assert second["already_uploaded"] is False
    assert second["bytes_sent"] == 0
    assert second["chunks_sent"] == 0
    assert second["chunks_skipped"] == second["chunks_total"] == first["chunks_total"]
    assert second["bytes_on_server"] == FILE_SIZE
    assert second["blake3"] == first["blake3"]
    assert second["upload_id"] != first["upload_id"]
    assert second["file_id"] != first["file_id"]

    # A directory as destination: the file keeps its own name.
    into = tmp_path / "downloads"
    into.mkdir()
    out = cli.run("download", second["file_id"], "-o", str(into), "--url", daemon.base_url)
    assert Path(out.stdout.strip()) == into / source.name
    assert sha256_file(into / source.name) == sha

    listed = [
        json.loads(line)
        for line in cli.run("ls", "--json", "--url", daemon.base_url).stdout.splitlines()
    ]
    ids = {f["id"] for f in listed}
    assert {first["file_id"], second["file_id"]} <= ids
    for f in listed:
        assert f["filename"] == source.name and f["size"] == FILE_SIZE
    prefixed = cli.run("ls", "--json", "--prefix", "model.", "--url", daemon.base_url).stdout
    assert {json.loads(line)["id"] for line in prefixed.splitlines()} == ids
    assert cli.run("ls", "--json", "--prefix", "nothing", "--url", daemon.base_url).stdout == ""
    table = cli.run("ls", "--url", daemon.base_url).stdout
    assert first["file_id"] in table and second["file_id"] in table


def test_a_name_with_controls_is_kept_and_printed_escaped(daemon: Daemon, cli: Cli, tmp_path):
    name = "evil\x1b[31m\u202etab\there.bin"
    source = tmp_path / name
    source.write_bytes(os.urandom(3000))
    sent = cli.upload(daemon.base_url, str(source))
    table = cli.run("ls", "--url", daemon.base_url).stdout
    as_json = cli.run("ls", "--json", "--url", daemon.base_url).stdout
    for shown in (table, as_json):
        assert not any(c in shown for c in "\x1b\u202e\t"), repr(shown)
    assert "evil\\x1b[31m\\u202etab\\there.bin" in table
    listed = {f["id"]: f for f in map(json.loads, as_json.splitlines())}
    assert listed[sent["file_id"]]["filename"] == name  # recorded as sent


def test_insertion_near_start_sends_little(daemon: Daemon, cli: Cli, tmp_path: Path):
    original = jsonl_bytes(FILE_SIZE, seed=11)
    extra = jsonl_bytes(100 * KiB, seed=12)
    edited = insert_lines(original, 200 * KiB, extra[: extra.rindex(b"\n") + 1])
    v1, v2 = tmp_path / "train.jsonl", tmp_path / "train-v2.jsonl"
    v1.write_bytes(original)
    v2.write_bytes(edited)

    first = cli.upload(daemon.base_url, str(v1))
    assert first["bytes_sent"] == len(original)
    second = cli.upload(daemon.base_url, str(v2))
    assert second["bytes_total"] == len(edited)
    assert second["bytes_sent"] <= len(edited) // 10, second
    assert second["chunks_skipped"] > 0
    assert second["chunks_sent"] + second["chunks_skipped"] == second["chunks_total"]

    copy = download(cli, daemon, second["file_id"], tmp_path / "copy.jsonl")
    assert sha256_file(copy) == sha256_file(v2)


def test_sigkill_mid_upload_then_resume(daemon: Daemon, cli: Cli, tmp_path: Path):
    parallel = 1
    max_chunk = server_info(daemon)["chunking"]["max_size"]
    source = tmp_path / "checkpoint.bin"
    sha = write_random_file(source, FILE_SIZE)
    # Slow enough (8 s for the file) that the upload is surely caught midway.
    proxy = ThrottledProxy(daemon.port, rate=4 * MiB)
    try:
        args = ("upload", str(source), "--url", proxy.url, "--parallel", str(parallel), "--json")
        proc = cli.popen(*args)
        try:
            upload_id = _wait_for_state(cli, proc)
            received = _wait_for_chunks(daemon, upload_id, proc, at_least=2)
            assert proc.poll() is None, "the upload finished before it could be killed"
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        sent_before = proxy.upstream_bytes

        # The resume state survived the kill, and the server kept what it acknowledged.
        assert len(cli.state_files()) == 1
        status = upload_status(daemon, upload_id)
        assert status["state"] == "open"
        assert status["received_chunks"] >= received
        assert 0 < status["received_bytes"] < FILE_SIZE
        kept = status["received_bytes"]

        proxy.rate = None
        resumed = cli.upload(proxy.url, str(source), "--parallel", str(parallel))
    finally:
        proxy.close()

    assert resumed["resumed"] is True
    assert resumed["upload_id"] == upload_id
    assert resumed["bytes_total"] == FILE_SIZE
    # Only what the server lacked was sent again.
    assert resumed["bytes_sent"] <= FILE_SIZE - kept
    assert resumed["chunks_skipped"] >= status["received_chunks"]
    assert kept + resumed["bytes_sent"] <= FILE_SIZE + parallel * max_chunk
    # On the wire, across both runs: the file once, plus at most the chunks in
    # flight at the kill, plus requests' headers and the JSON chunk list.
    assert proxy.upstream_bytes <= FILE_SIZE + parallel * max_chunk + 256 * KiB, (
        sent_before,
        proxy.upstream_bytes,
    )
    assert cli.state_files() == []

    copy = download(cli, daemon, resumed["file_id"], tmp_path / "copy.bin")
    assert sha256_file(copy) == sha


def _wait_for_state(cli: Cli, proc: subprocess.Popen[str]) -> str:
    """The upload id, once the CLI has written its resume state."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while time.monotonic() < deadline:
        if files := cli.state_files():
            return json.loads(files[0].read_text())["upload_id"]
        if proc.poll() is not None:
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"upload exited {proc.returncode} before writing state: {out} {err}")
        time.sleep(0.01)
    pytest.fail(f"no state file in {cli.state_dir} within {WAIT_TIMEOUT}s")


def _wait_for_chunks(
    daemon: Daemon, upload_id: str, proc: subprocess.Popen[str], at_least: int
) -> int:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while time.monotonic() < deadline:
        received = upload_status(daemon, upload_id)["received_chunks"]
        if received >= at_least:
            return received
        if proc.poll() is not None:
            pytest.fail(f"upload exited {proc.returncode} with only {received} chunks received")
        time.sleep(0.02)
    pytest.fail(f"fewer than {at_least} chunks received within {WAIT_TIMEOUT}s")


def test_cli_errors_and_exit_codes(daemon: Daemon, cli: Cli, tmp_path: Path):
    url = daemon.base_url
    missing = cli.run("upload", str(tmp_path / "absent.bin"), "--url", url, expect=2)
    assert "no such file" in missing.stderr
    cli.run("upload", "--url", url, expect=2)  # no PATH
    present = tmp_path / "present.bin"
    present.write_bytes(b"data")
    bad = cli.run("upload", str(present), "--url", "ftp://127.0.0.1/", expect=2)
    assert "http://" in bad.stderr and "ftp://127.0.0.1/" in bad.stderr
    unknown = cli.run("download", "0" * 32, "-o", str(tmp_path / "x"), "--url", url, expect=1)
    assert "404" in unknown.stderr and "unknown_file" in unknown.stderr
    assert not (tmp_path / "x").exists()

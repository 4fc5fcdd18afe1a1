"""End to end: the `ingestd` client commands as `hf upload`, `aws s3 cp` and
rclone users expect them — directories with globs, dry runs, idempotent
uploads, verdicts and exit codes, safe and resumable downloads, output for
scripts, `login` and the environment — through the real executable against
the real daemon, and the Python `Client()` with the same configuration.

Every byte is checked by its BLAKE3. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import blake3
import httpx
import pytest
from support.e2e import (
    CLI_TIMEOUT,
    HOST,
    Cli,
    Daemon,
    cli_command,
    file_blake3,
    free_port,
    write_random_file,
)
from support.proxy import ThrottledProxy

pytestmark = pytest.mark.e2e

KiB = 1 << 10
MiB = 1 << 20
WAIT_TIMEOUT = 60.0

GOOD_JSONL = b"".join(
    b'{"text": "write to user%d@example.com", "n": %d, "ok": true}\n' % (i, i) for i in range(1000)
)
BAD_JSONL = b'{"a": 1}\n{"a": 2}\n{"a": \n'  # line 3 is not JSON: the datasets plugin rejects it


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def server_files(daemon: Daemon, headers: dict[str, str] | None = None) -> list[dict]:
    r = httpx.get(f"{daemon.base_url}/v1/files?limit=1000", headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["files"]


def usage(daemon: Daemon) -> dict:
    r = httpx.get(f"{daemon.base_url}/v1/usage", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def content_blake3(daemon: Daemon, file_id: str, headers: dict[str, str] | None = None) -> str:
    r = httpx.get(f"{daemon.base_url}/v1/files/{file_id}/content", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return blake3.blake3(r.content).hexdigest()


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "train.jsonl": GOOD_JSONL,
        "eval/dev.jsonl": b"".join(GOOD_JSONL.splitlines(keepends=True)[:500]),
        "eval/notes.txt": b"not a dataset\n",
        "deep/er/more.jsonl": b"".join(GOOD_JSONL.splitlines(keepends=True)[:333]),
        "README.md": b"# data\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_directory_upload_with_globs_and_a_dry_run_that_sends_nothing(
    daemon: Daemon, cli: Cli, tmp_path: Path
):
    root = tmp_path / "data"
    files = make_tree(root)
    url = daemon.base_url
    before = usage(daemon)

    # A dry run through a counting proxy: it hashes and asks, sends no file bytes.
    proxy = ThrottledProxy(daemon.port, rate=None)
    try:
        args = ("upload", str(root), "--dry-run", "--json", "--include", "*.jsonl")
        planned = lines(cli.run(*args, "--url", proxy.url).stdout)
    finally:
        proxy.close()
    assert [p["filename"] for p in planned] == [
        "data/deep/er/more.jsonl",
        "data/eval/dev.jsonl",
        "data/train.jsonl",
    ]
    for p in planned:
        assert p["dry_run"] is True and p["action"] == "new"
        rel = p["filename"].removeprefix("data/")
        assert p["size"] == p["bytes_to_send"] == len(files[rel])
        assert p["blake3"] == blake3.blake3(files[rel]).hexdigest()
        assert p["bytes_on_server"] == 0
    assert proxy.upstream_bytes < 8 * KiB  # a few GETs, no file content
    after = usage(daemon)
    assert after == before and after["files"] == 0 and after["open_uploads"] == 0
    assert after["physical_bytes"] == 0
    assert server_files(daemon) == []

    # The upload itself: --include and --exclude (exclude wins), recursive,
    # named by the path from the directory's parent.
    args = ("--include", "*.jsonl", "--exclude", "eval/*", "--url", url + "/", "--json")
    uploaded = lines(cli.run("upload", str(root), *args).stdout)
    names = [u["filename"] for u in uploaded]
    assert names == ["data/deep/er/more.jsonl", "data/train.jsonl"]
    for u in uploaded:
        data = files[u["filename"].removeprefix("data/")]
        assert u["state"] == "accepted" and u["verdict"] == "accepted"
        assert u["bytes_sent"] == u["bytes_total"] == len(data)
        assert u["bytes_on_server"] == 0 and u["already_uploaded"] is False
        assert u["job_id"] and u["upload_id"] and u["file_id"]
        assert u["findings"]["datasets"]["validate"]["ok"] is True
        rows = data.count(b"\n")
        assert u["summary"].startswith(f"accepted: {rows:,} rows, 3 columns; pii: ")
        assert content_blake3(daemon, u["file_id"]) == blake3.blake3(data).hexdigest()
    assert {f["filename"] for f in server_files(daemon)} == set(names)

    # A dry run now: two already uploaded (nothing to send), and the content
    # of one under a new name is on the server too.
    (root / "copy-of-train.jsonl").write_bytes(files["train.jsonl"])
    planned = {
        p["filename"]: p
        for p in lines(cli.run("upload", str(root), "--dry-run", "--json", "--url", url).stdout)
    }
    by_name = {u["filename"]: u for u in uploaded}
    assert planned["data/train.jsonl"]["action"] == "already uploaded"
    assert planned["data/train.jsonl"]["file_id"] == by_name["data/train.jsonl"]["file_id"]
    assert planned["data/train.jsonl"]["bytes_to_send"] == 0
    assert planned["data/copy-of-train.jsonl"]["action"] == "content on server"
    assert planned["data/copy-of-train.jsonl"]["bytes_to_send"] == 0
    assert planned["data/README.md"]["action"] == "new"
    assert len(server_files(daemon)) == 2  # the dry run made nothing
    # Without --json: a line per file and a total on stderr, nothing on stdout.
    done = cli.run("upload", str(root), "--dry-run", "--url", url)
    assert done.stdout == ""
    assert "already uploaded" in done.stderr and "nothing was sent" in done.stderr


def test_idempotent_upload_makes_no_new_record_and_new_does(
    daemon: Daemon, cli: Cli, tmp_path: Path
):
    source = tmp_path / "weights.bin"
    write_random_file(source, 3 * MiB + 5)
    url = daemon.base_url
    first = cli.upload(url, str(source))
    assert first["bytes_sent"] == first["bytes_total"] == 3 * MiB + 5
    # Piped, without --json: the file id alone on stdout, the verdict on stderr.
    again = cli.run("upload", str(source), "--url", url)
    assert again.stdout == first["file_id"] + "\n"
    assert "already uploaded, nothing sent" in again.stderr
    assert f"→ {first['file_id']}" in again.stderr
    assert [f["id"] for f in server_files(daemon)] == [first["file_id"]]
    # --quiet: just the id.
    quiet = cli.run("upload", str(source), "--url", url, "--quiet")
    assert (quiet.stdout, quiet.stderr) == (first["file_id"] + "\n", "")

    renamed = tmp_path / "renamed.bin"
    renamed.write_bytes(source.read_bytes())
    other = cli.upload(url, str(renamed))  # another name: a record of its own
    assert other["file_id"] != first["file_id"] and other["already_uploaded"] is False
    assert other["bytes_sent"] == 0 and other["bytes_on_server"] == 3 * MiB + 5

    forced = cli.upload(url, str(source), "--new")
    assert forced["file_id"] not in (first["file_id"], other["file_id"])
    assert forced["bytes_sent"] == 0  # a new record; the bytes were there already
    ids = {f["id"] for f in server_files(daemon)}
    assert ids == {first["file_id"], other["file_id"], forced["file_id"]}
    for file_id in ids:
        assert content_blake3(daemon, file_id) == file_blake3(source)

    # rm prints what it deleted; an unknown id fails (exit 1) without stopping the rest.
    done = cli.run("rm", forced["file_id"], "0" * 32, other["file_id"], "--url", url, expect=1)
    assert done.stdout.split() == [forced["file_id"], other["file_id"]]
    assert "unknown_file" in done.stderr
    assert [f["id"] for f in server_files(daemon)] == [first["file_id"]]


def test_rejected_upload_exits_3_with_the_reason_and_status_and_ls_show_it(
    daemon: Daemon, cli: Cli, tmp_path: Path
):
    url = daemon.base_url
    bad, good = tmp_path / "bad.jsonl", tmp_path / "good.jsonl"
    bad.write_bytes(BAD_JSONL)
    good.write_bytes(GOOD_JSONL)
    done = cli.run("upload", str(bad), "--url", url, expect=3)
    rejected_id = done.stdout.strip()
    assert len(rejected_id) == 32
    assert "rejected: datasets: line 3: invalid JSON" in done.stderr
    assert done.stderr.count("rejected:") == 1  # said once

    # Two files, one rejected: both reported, exit 3.
    out = cli.run("upload", str(good), str(bad), "--url", url, "--json", expect=3).stdout
    accepted, rejected = lines(out)
    assert accepted["state"] == "accepted" and accepted["summary"] == (
        "accepted: 1,000 rows, 3 columns; pii: 1,000 emails"
    )
    assert accepted["findings"]["pii"]["scan"]["found"]["email"] == 1000
    assert rejected["state"] == rejected["verdict"] == "rejected"
    assert rejected["reason"].startswith("datasets: line 3: invalid JSON")
    assert rejected["findings"]["datasets"]["validate"]["ok"] is False
    assert rejected["job_id"] and rejected["upload_id"]

    status = cli.run("status", rejected_id, "--url", url, expect=3).stdout
    assert "state     rejected" in status
    assert "verdict   rejected: datasets: line 3: invalid JSON" in status
    assert '  datasets.validate: {"format": "jsonl", "line": 3, "ok": false' in status
    status = json.loads(cli.run("status", accepted["file_id"], "--url", url, "--json").stdout)
    assert status["kind"] == "file" and status["state"] == "accepted"
    assert status["summary"] == "accepted: 1,000 rows, 3 columns; pii: 1,000 emails"
    assert status["job"]["id"] == accepted["job_id"] and status["job"]["state"] == "succeeded"
    assert status["file"]["blake3"] == file_blake3(good)
    # An upload id says how its upload ended, and the file it made.
    status = json.loads(cli.run("status", accepted["upload_id"], "--url", url, "--json").stdout)
    assert status["kind"] == "upload" and status["upload"]["state"] == "completed"
    assert status["file"]["id"] == accepted["file_id"]

    listed = {f["id"]: f for f in lines(cli.run("ls", "--json", "--url", url).stdout)}
    assert listed[rejected_id]["state"] == "rejected"
    assert listed[rejected_id]["summary"].startswith("rejected: datasets: line 3")
    assert listed[accepted["file_id"]]["state"] == "accepted"
    assert listed[accepted["file_id"]]["summary"] == "accepted: 1,000 rows, 3 columns"
    only = lines(cli.run("ls", "--json", "--state", "accepted", "--url", url).stdout)
    assert [f["id"] for f in only] == [accepted["file_id"]]
    table = cli.run("ls", "--url", url).stdout.splitlines()
    assert table[0].split() == ["id", "filename", "size", "state", "verdict", "created"]
    row = next(line for line in table if line.startswith(rejected_id))
    assert " rejected " in row and "datasets: line 3: invalid JSON" in row

    # A rejected file cannot be downloaded: said in one line, nothing left behind.
    out = tmp_path / "out"
    out.mkdir()
    done = cli.run("download", rejected_id, "-o", str(out / "bad.jsonl"), "--url", url, expect=1)
    assert "file_rejected" in done.stderr and done.stderr.count("\n") == 1
    assert list(out.iterdir()) == []

    # An open upload: its missing chunks.
    r = httpx.post(f"{url}/v1/uploads", json={"filename": "part.bin", "size": 3 * MiB}, timeout=10)
    open_id = r.json()["id"]
    status = cli.run("status", open_id, "--url", url).stdout
    assert "state     open" in status and "missing   3 chunks: 0-2" in status
    assert cli.run("status", "f" * 32, "--url", url, expect=1).stderr.count("\n") == 1


def test_piped_output_has_whole_ids_and_lines(daemon: Daemon, cli: Cli, tmp_path: Path):
    name = "a-very-long-name-" + "x" * 150 + ".jsonl"
    source = tmp_path / name
    source.write_bytes(GOOD_JSONL)
    result = cli.upload(daemon.base_url, str(source))
    cli.env["COLUMNS"] = "40"  # a narrow terminal's setting must not matter when piped
    table = cli.run("ls", "--url", daemon.base_url).stdout.splitlines()
    assert len(table) == 2  # the header and one row, not wrapped
    assert table[1].startswith(result["file_id"] + "  " + name + " ")
    assert "accepted" in table[1] and "1,000 rows, 3 columns" in table[1]
    status = cli.run("status", result["file_id"], "--url", daemon.base_url).stdout
    assert f"filename  {name}\n" in status and f"job       {result['job_id']} " in status


def test_download_never_overwrites_respects_the_umask_and_reports_a_missing_directory(
    daemon: Daemon, cli: Cli, tmp_path: Path
):
    url = daemon.base_url
    work = tmp_path / "work"
    work.mkdir()
    source = work / "model.bin"
    write_random_file(source, 2 * MiB + 3)
    source.chmod(0o644)
    digest = file_blake3(source)
    file_id = cli.upload(url, str(source))["file_id"]

    # The reported bug: downloading into the directory holding the source.
    done = subprocess.run(
        [*cli_command(), "download", file_id, "--url", url],
        cwd=work,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert done.returncode == 1, done
    assert "exists" in done.stderr and "--force" in done.stderr
    assert stat.S_IMODE(source.stat().st_mode) == 0o644 and file_blake3(source) == digest
    assert sorted(p.name for p in work.iterdir()) == ["model.bin"]  # no part file either

    other = tmp_path / "other.bin"
    other.write_bytes(b"keep me")
    done = cli.run("download", file_id, "-o", str(other), "--url", url, expect=1)
    assert other.read_bytes() == b"keep me" and "exists" in done.stderr
    assert list(tmp_path.glob(".*.part")) == []  # nothing left behind

    # --force overwrites; the new file's mode is what the umask gives.
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o027, 0o640)):
        done = subprocess.run(
            ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *cli_command()]
            + ["download", file_id, "-o", str(other), "--force", "--url", url],
            env=cli.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{other}\n"
        assert stat.S_IMODE(other.stat().st_mode) == mode, (oct(umask), oct(other.stat().st_mode))
        assert file_blake3(other) == digest

    # Into a directory that does not exist: one line, no traceback, nothing made.
    missing = tmp_path / "no" / "such" / "dir" / "x.bin"
    done = cli.run("download", file_id, "-o", str(missing), "--url", url, expect=1)
    assert done.stderr == f"ingestd: {missing.parent}: no such directory\n"
    assert not (tmp_path / "no").exists()
    # A file id that does not exist: one line too.
    done = cli.run("download", "0" * 32, "-o", str(tmp_path / "y"), "--url", url, expect=1)
    assert done.stderr.count("\n") == 1 and "unknown_file" in done.stderr


def test_interrupted_download_resumes_and_verifies(daemon: Daemon, cli: Cli, tmp_path: Path):
    size = 24 * MiB
    source = tmp_path / "big.bin"
    write_random_file(source, size)
    digest = file_blake3(source)
    file_id = cli.upload(daemon.base_url, str(source))["file_id"]
    dest = tmp_path / "out" / "copy.bin"
    dest.parent.mkdir()
    part = dest.parent / f".copy.bin.{digest[:16]}.part"

    proxy = ThrottledProxy(daemon.port, rate=None, down_rate=4 * MiB)
    try:
        proc = cli.popen("download", file_id, "-o", str(dest), "--url", proxy.url)
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not (part.exists() and part.stat().st_size >= 3 * MiB):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the download never got going"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, (out, err)
        assert "interrupted" in err and out == ""
        assert not dest.exists()
        kept = part.stat().st_size
        assert 3 * MiB <= kept < size
        with open(source, "rb") as f:
            assert part.read_bytes() == f.read(kept)  # what was written is the file's start

        proxy.down_rate = None
        before = proxy.downstream_bytes
        done = cli.run("download", file_id, "-o", str(dest), "--url", proxy.url)
        resumed_bytes = proxy.downstream_bytes - before
    finally:
        proxy.close()
    assert done.stdout == f"{dest}\n"
    assert file_blake3(dest) == digest
    assert not part.exists()
    # Only the rest came over the wire (plus the answers' headers and the file's facts).
    assert resumed_bytes <= size - kept + 64 * KiB, (resumed_bytes, size, kept)

    # A partial download that does not match the file is caught by the BLAKE3
    # check, removed, and the next run starts afresh.
    dest.unlink()
    part.write_bytes(os.urandom(MiB))
    done = cli.run("download", file_id, "-o", str(dest), "--url", daemon.base_url, expect=1)
    assert "BLAKE3" in done.stderr and "run it again" in done.stderr
    assert not dest.exists() and not part.exists()
    cli.run("download", file_id, "-o", str(dest), "--url", daemon.base_url)
    assert file_blake3(dest) == digest


def test_login_then_upload_without_flags_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    env = {"INGESTD_AUTH_REQUIRED": "true"}
    with Daemon(tmp_path / "d", extra_env=env) as daemon:
        cli = Cli(tmp_path / "state")
        config_home = Path(cli.env["XDG_CONFIG_HOME"])  # the test's own
        made = cli.run("token", "create", "--data-dir", str(daemon.data_dir), "--tenant", "alice")
        token = made.stdout.strip()
        source = tmp_path / "train.jsonl"
        source.write_bytes(GOOD_JSONL)

        # No token: exit 4 (authentication), said in one line.
        done = cli.run("upload", str(source), "--url", daemon.base_url, expect=4)
        assert "requires a token" in done.stderr
        # A wrong token is not saved.
        done = cli.run("login", daemon.base_url, "--token", "igd_wrong", expect=4)
        login_file = config_home / "ingestd" / "client.toml"
        assert not login_file.exists()

        cli.run("login", daemon.base_url + "/v1/", "--token", token)
        assert stat.S_IMODE(login_file.stat().st_mode) == 0o600
        saved = login_file.read_text()
        assert f'url = "{daemon.base_url}"' in saved and token in saved

        # No --url, no --token: the saved ones.
        result = json.loads(cli.run("upload", str(source), "--json").stdout)
        assert result["state"] == "accepted"
        listed = lines(cli.run("ls", "--json").stdout)
        assert [f["id"] for f in listed] == [result["file_id"]]
        headers = {"Authorization": f"Bearer {token}"}
        assert content_blake3(daemon, result["file_id"], headers) == file_blake3(source)
        out = tmp_path / "copy.jsonl"
        cli.run("download", result["file_id"], "-o", str(out))
        assert file_blake3(out) == file_blake3(source)

        # The saved token goes only to the saved URL.
        proxy = ThrottledProxy(daemon.port, rate=None)
        try:
            cli.run("ls", "--url", proxy.url, expect=4)
        finally:
            proxy.close()

        cli.run("logout")
        assert not login_file.exists()
        cli.run("ls", "--url", daemon.base_url, expect=4)

        # The environment instead: INGESTD_URL (with /v1) and INGESTD_TOKEN.
        cli.env["INGESTD_URL"] = daemon.base_url + "/v1"
        cli.env["INGESTD_TOKEN"] = token
        again = json.loads(cli.run("upload", str(source), "--json").stdout)
        assert again["file_id"] == result["file_id"] and again["already_uploaded"] is True
        assert cli.run("ls").stdout.splitlines()[1].startswith(result["file_id"] + "  ")

        # And Python's Client() reads the same environment.
        from ingestd.daemon.client import Client, Rejected

        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "py-config"))
        monkeypatch.setenv("INGESTD_URL", daemon.base_url + "/")
        monkeypatch.setenv("INGESTD_TOKEN", token)
        with Client(state_dir=tmp_path / "py-state") as client:
            found = client.upload(source)
            assert found.file_id == result["file_id"] and found.already_uploaded
            assert found.summary == "accepted: 1,000 rows, 3 columns; pii: 1,000 emails"
            bad = tmp_path / "bad.jsonl"
            bad.write_bytes(BAD_JSONL)
            with pytest.raises(Rejected) as caught:
                client.upload(bad)
            assert caught.value.result.reason.startswith("datasets: line 3")
            status = client.status(caught.value.result.file_id)
            assert status.state == "rejected" and status.job is not None
            copy = client.download(found.file_id, tmp_path / "py-copy.jsonl")
            assert file_blake3(copy) == file_blake3(source)
            client.delete(caught.value.result.file_id)
            assert [f.id for f in client.files()] == [found.file_id]


def test_an_unreachable_server_exits_5(cli: Cli, tmp_path: Path):
    # Each command retries the connection after 1, 2 and 4 s before it gives up.
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 1000)
    url = f"http://{HOST}:{free_port()}"
    done = cli.run("upload", str(source), "--url", url, expect=5)
    assert "resumable" in done.stderr or "run the same command again" in done.stderr
    cli.run("upload", str(source), "--dry-run", "--url", url, expect=5)
    cli.run("ls", "--url", url, expect=5)
    done = cli.run("download", "0" * 32, "-o", str(tmp_path / "x"), "--url", url, expect=5)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert cli.run("upload", str(tmp_path / "none"), "--url", url, expect=2).stderr.startswith(
        "ingestd: "
    )


def test_python_client_directories_idempotency_and_resumed_download(daemon: Daemon, tmp_path: Path):
    from ingestd.daemon.client import Client, DestinationExists

    root = tmp_path / "set"
    files = make_tree(root)
    with Client(daemon.base_url + "/v1", state_dir=tmp_path / "state") as client:
        results = client.upload_dir(root, include=["*.jsonl"])
        assert [r.filename for r in results] == [
            "set/deep/er/more.jsonl",
            "set/eval/dev.jsonl",
            "set/train.jsonl",
        ]
        assert all(r.state == "accepted" and r.job_id for r in results)
        again = client.upload_dir(root, include=["*.jsonl"])
        assert [r.file_id for r in again] == [r.file_id for r in results]
        assert all(r.already_uploaded and r.bytes_sent == 0 for r in again)
        planned = client.plan(root / "README.md", filename="set/README.md")
        assert planned.action == "new" and planned.bytes_to_send == len(files["README.md"])

        train = results[-1]
        dest = tmp_path / "train.jsonl"
        part = tmp_path / f".train.jsonl.{train.blake3[:16]}.part"
        part.write_bytes(GOOD_JSONL[:12345])  # as an interrupted run leaves it
        seen = []
        client.download(train.file_id, dest, progress=lambda kind, n: seen.append((kind, n)))
        assert seen[:2] == [("total", len(GOOD_JSONL)), ("kept", 12345)]
        assert sum(n for kind, n in seen if kind == "received") == len(GOOD_JSONL) - 12345
        assert blake3.blake3(dest.read_bytes()).hexdigest() == train.blake3
        with pytest.raises(DestinationExists):
            client.download(train.file_id, dest)
        status = client.status(train.file_id)
        assert status.summary.startswith("accepted: 1,000 rows, 3 columns; pii: ")

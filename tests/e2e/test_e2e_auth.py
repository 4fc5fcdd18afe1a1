"""End to end with auth on: `ingestd token …` and the clients against the real
daemon — the CLI, the seed API, tuspy, tus-js-client — over HTTP and HTTPS,
and the refusals of a daemon that would be unsafe to run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support.e2e import HOST, Cli, Daemon, cli_command, free_port, sha256_file, write_random_file
from support.tus_js import run_tus_js

pytestmark = pytest.mark.e2e

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def daemon(tmp_path: Path):
    with Daemon(tmp_path / "d", extra_env={"INGESTD_AUTH_REQUIRED": "true"}) as d:
        yield d


def token(cli: Cli, daemon: Daemon, *args: str) -> str:
    done = cli.run("token", "create", "--data-dir", str(daemon.data_dir), *args)
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("igd_"), done.stdout
    assert "shown only now" in done.stderr
    return lines[0]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_token_lifecycle_through_the_cli(daemon: Daemon, tmp_path: Path):
    cli = Cli(tmp_path / "state")
    path = tmp_path / "a.bin"
    digest = write_random_file(path, 3 * MiB + 17)
    url = daemon.base_url
    # No token: refused, and the message says what is missing.
    done = cli.run("upload", str(path), "--url", url, expect=4)  # exit 4: authentication
    assert "requires a token" in done.stderr
    done = cli.run("upload", str(path), "--url", url, "--token", "igd_nonsense", expect=4)
    assert "not valid" in done.stderr
    # Created while the daemon runs, used at once (flag and environment).
    write = token(cli, daemon, "--tenant", "alice", "--name", "ci")
    result = cli.upload(url, str(path), "--token", write)
    cli.env["INGESTD_TOKEN"] = write
    again = cli.upload(url, str(path), "--new")  # a second file record, of the same bytes
    assert again["bytes_sent"] == 0  # the tenant holds every chunk already
    del cli.env["INGESTD_TOKEN"]
    out = tmp_path / "back.bin"
    cli.run("download", result["file_id"], "-o", str(out), "--url", url, "--token", write)
    assert sha256_file(out) == digest
    # A read token lists and downloads, but cannot upload (--new: not answered
    # with the file alice already has).
    read = token(cli, daemon, "--tenant", "alice", "--scope", "read", "--name", "fetcher")
    listed = cli.run("ls", "--url", url, "--token", read, "--json").stdout.splitlines()
    assert {json.loads(line)["id"] for line in listed} == {result["file_id"], again["file_id"]}
    done = cli.run("upload", str(path), "--url", url, "--token", read, "--new", expect=4)
    assert "scope (read)" in done.stderr
    # Another tenant sees nothing of alice's.
    bob = token(cli, daemon, "--tenant", "bob")
    assert cli.run("ls", "--url", url, "--token", bob, "--json").stdout == ""
    done = cli.run(
        "download",
        result["file_id"],
        "-o",
        str(tmp_path / "x"),
        "--url",
        url,
        "--token",
        bob,
        expect=1,
    )
    assert "no file" in done.stderr
    # Listing shows names, tenants and use, never a secret.
    done = cli.run("token", "list", "--data-dir", str(daemon.data_dir))
    for secret in (write, read, bob):
        assert secret not in done.stdout and secret.split("_", 2)[2] not in done.stdout
    rows = [
        json.loads(line)
        for line in cli.run(
            "token", "list", "--json", "--data-dir", str(daemon.data_dir)
        ).stdout.splitlines()
    ]
    by_name = {row["name"]: row for row in rows}
    assert by_name["ci"]["tenant"] == "alice" and by_name["ci"]["scopes"] == ["write"]
    assert by_name["ci"]["last_used"] is not None and by_name["fetcher"]["expires"] is None
    # Revoked: refused from the next request on.
    cli.run("token", "revoke", "ci", "--data-dir", str(daemon.data_dir))
    r = httpx.get(f"{url}/v1/files", headers=bearer(write), timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"
    done = cli.run("token", "revoke", "ci", "--data-dir", str(daemon.data_dir), expect=1)
    assert "no token" in done.stderr
    # Expiry.
    brief = token(cli, daemon, "--tenant", "alice", "--expires", "1s")
    assert httpx.get(f"{url}/v1/files", headers=bearer(brief), timeout=10).status_code == 200
    time.sleep(1.2)
    r = httpx.get(f"{url}/v1/files", headers=bearer(brief), timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "token_expired"
    # The operator's view of usage.
    stats = cli.run("stats", "--tenant", "alice", "--json", "--data-dir", str(daemon.data_dir))
    usage = json.loads(stats.stdout)
    assert usage["logical_bytes"] == 2 * path.stat().st_size
    assert usage["physical_bytes"] == path.stat().st_size and usage["files"] == 2
    r = httpx.get(f"{url}/v1/usage", headers=bearer(read), timeout=10)
    assert r.json()["physical_bytes"] == usage["physical_bytes"]


def test_bad_token_arguments_are_usage_errors(tmp_path: Path):
    cli = Cli(tmp_path / "state")
    data = str(tmp_path / "data")
    done = cli.run("token", "create", "--tenant", "a/b", "--data-dir", data, expect=2)
    assert "tenant 'a/b'" in done.stderr
    done = cli.run(
        "token", "create", "--tenant", "a", "--expires", "soon", "--data-dir", data, expect=2
    )
    assert "not a duration" in done.stderr
    cli.run("token", "create", "--tenant", "a", "--name", "x", "--data-dir", data)
    done = cli.run("token", "create", "--tenant", "a", "--name", "x", "--data-dir", data, expect=2)
    assert "exists" in done.stderr


def test_seed_api_and_tuspy_with_a_token(daemon: Daemon, tmp_path: Path):
    from tusclient import client as tus_client

    cli = Cli(tmp_path / "state")
    auth = bearer(token(cli, daemon, "--tenant", "alice"))
    base = daemon.base_url
    # The seed API's shapes, unchanged, with a token.
    data = b"hello seed\n" * 10_000
    with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
        r = http.post("/api/upload/init", json={"filename": "s.txt", "totalSize": len(data)})
        assert r.status_code == 200, r.text
        init = r.json()
        size = init["chunkSize"]
        total = -(-len(data) // size)
        for i in range(total):
            r = http.post(
                "/api/upload/chunk",
                data={
                    "uploadId": init["uploadId"],
                    "chunkIndex": str(i),
                    "totalChunks": str(total),
                },
                files={"chunk": ("c", data[i * size : (i + 1) * size], "application/octet-stream")},
            )
            assert r.status_code == 200 and r.json()["success"], r.text
        done = http.post(f"/api/upload/complete/{init['uploadId']}").json()
        assert done["success"] and done["metadata"]["size"] == len(data)
        r = httpx.post(
            f"{base}/api/upload/init", json={"filename": "s", "totalSize": 1}, timeout=10
        )
        assert r.status_code == 401
    # tuspy sends the header with every request.
    path = tmp_path / "tuspy.bin"
    digest = write_random_file(path, 3 * MiB + 5)
    uploader = tus_client.TusClient(f"{base}/files/", headers=auth).uploader(
        str(path), chunk_size=MiB, metadata={"filename": "tuspy.bin"}, store_url=False, retries=0
    )
    uploader.upload()
    assert downloaded_sha256_with(uploader.url, auth) == digest
    refused = tus_client.TusClient(f"{base}/files/").uploader(
        str(path), chunk_size=MiB, store_url=False, retries=0
    )
    with pytest.raises(Exception, match="401"):
        refused.upload()


def downloaded_sha256_with(url: str, headers: dict[str, str]) -> str:
    sha = hashlib.sha256()
    with httpx.stream("GET", url, headers=headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for block in r.iter_bytes(MiB):
            sha.update(block)
    return sha.hexdigest()


def test_tus_js_client_with_a_token(daemon: Daemon, tus_js, tmp_path: Path):
    cli = Cli(tmp_path / "state")
    value = token(cli, daemon, "--tenant", "alice")
    path = tmp_path / "js.bin"
    digest = write_random_file(path, 5 * MiB + 3)
    endpoint = f"{daemon.base_url}/files/"
    result = run_tus_js(tus_js, endpoint, str(path), "--chunk-size", str(2 * MiB), "--token", value)
    assert result["event"] == "success"
    assert downloaded_sha256_with(result["url"], bearer(value)) == digest
    # Concatenation (parallel partials) with the token too.
    result = run_tus_js(tus_js, endpoint, str(path), "--parallel", "3", "--token", value)
    assert downloaded_sha256_with(result["url"], bearer(value)) == digest
    # Without it, tus-js-client fails and says why.
    r = subprocess.run(
        [*tus_js, "--endpoint", endpoint, "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 1 and "401" in r.stderr


def test_a_network_address_without_auth_is_refused(tmp_path: Path):
    env = {"INGESTD_AUTH_REQUIRED": "false", "PATH": "/usr/bin:/bin"}
    # The address is never bound: the configuration is refused first.
    r = subprocess.run(
        [
            *cli_command(),
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2
    assert "not a loopback address" in r.stderr and "ingestd token create" in r.stderr
    assert "Traceback" not in r.stderr


def test_rebinding_host_refused_on_a_loopback_daemon(tmp_path: Path):
    with Daemon(tmp_path / "d") as d:
        r = httpx.get(f"{d.base_url}/v1/files", headers={"Host": "attacker.example"}, timeout=10)
        assert r.status_code == 421 and r.json()["code"] == "host_not_allowed"
        r = httpx.get(f"{d.base_url}/v1/files", timeout=10)  # Host: 127.0.0.1:<port>
        assert r.status_code == 200
        r = httpx.get(f"{d.base_url}/v1/files", headers={"Host": f"localhost:{d.port}"}, timeout=10)
        assert r.status_code == 200


def test_https_with_a_self_signed_certificate(tmp_path: Path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    env = {
        "INGESTD_AUTH_REQUIRED": "true",
        "INGESTD_SERVER_CERTFILE": str(cert_path),
        "INGESTD_SERVER_KEYFILE": str(key_path),
    }
    with Daemon(tmp_path / "d", extra_env=env, https_ca=ca_path) as d:
        assert d.base_url.startswith("https://")
        cli = Cli(tmp_path / "state")
        value = token(cli, d, "--tenant", "alice")
        path = tmp_path / "tls.bin"
        digest = write_random_file(path, 4 * MiB + 1)
        # The CLI, trusting the CA.
        result = cli.upload(d.base_url, str(path), "--token", value, "--cacert", str(ca_path))
        assert result["bytes_sent"] == path.stat().st_size
        # Without it, the certificate is refused, in words.
        done = cli.run("upload", str(path), "--url", d.base_url, "--token", value, expect=1)
        assert "certificate" in done.stderr.lower()
        # httpx, trusting the CA: the bytes come back intact.
        with httpx.Client(base_url=d.base_url, verify=d.verify, headers=bearer(value)) as http:
            sha = hashlib.sha256()
            with http.stream("GET", f"/v1/files/{result['file_id']}/content") as r:
                assert r.status_code == 200
                for block in r.iter_bytes():
                    sha.update(block)
            assert sha.hexdigest() == digest
        # Plain HTTP to the HTTPS port gets nowhere.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{HOST}:{d.port}/v1/files", timeout=5).raise_for_status()


def test_the_cli_waits_out_rate_limits(tmp_path: Path):
    env = {
        "INGESTD_AUTH_REQUIRED": "true",
        "INGESTD_AUTH_RATE_WRITE": "6",
        "INGESTD_AUTH_BURST_WRITE": "3",
    }
    with Daemon(tmp_path / "d", extra_env=env) as d:
        cli = Cli(tmp_path / "state")
        value = token(cli, d, "--tenant", "alice")
        path = tmp_path / "many.bin"
        digest = write_random_file(path, 12 * MiB)
        started = time.monotonic()
        result = cli.upload(d.base_url, str(path), "--token", value, "--chunking", "fixed")
        elapsed = time.monotonic() - started
        assert result["chunks_sent"] == 12
        metrics = httpx.get(f"{d.base_url}/metrics", timeout=10).text  # open on loopback
        limited = [
            line
            for line in metrics.splitlines()
            if line.startswith('ingestd_access_refusals_total{code="rate_limited"}')
        ]
        assert limited and float(limited[0].split()[-1]) >= 1, metrics[-2000:]
        # About 16 requests at 6 a second after a burst of 3: it had to wait.
        assert elapsed > 1.0
        out = tmp_path / "back.bin"
        cli.run(
            "download", result["file_id"], "-o", str(out), "--url", d.base_url, "--token", value
        )
        assert sha256_file(out) == digest

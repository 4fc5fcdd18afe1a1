"""Tokens, scopes, the Host check, rate limits and quotas, through the in-process app.

conftest: 1024-byte chunks. Every answer refused here must be a problem
document that says what is wrong, and nothing already stored may change.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from ingestd.daemon.http.app import create_app
from support.auth import Secured, bearer

pytestmark = pytest.mark.api

TUS = {"Tus-Resumable": "1.0.0"}
REMOTE = {"client": ("192.0.2.7", 5555)}


async def secured_app(make_config, **env: str):
    app = create_app(make_config(INGESTD_AUTH_REQUIRED="true", **env))
    return app


async def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, await response.get_data()
    assert response.content_type == "application/problem+json"
    body = await response.get_json()
    assert body["code"] == code and body["detail"], body
    return body


async def upload(client, headers: dict[str, str], data: bytes, name: str = "a.bin") -> dict:
    """A /v1 upload of `data`, completed and processed; the job."""
    r = await client.post(
        "/v1/uploads", json={"filename": name, "size": len(data)}, headers=headers
    )
    created = await r.get_json()
    assert r.status_code == 201, created
    size = created["chunk_size"]
    for i in created["missing"]:
        piece = data[i * size : (i + 1) * size]
        r = await client.put(f"/v1/uploads/{created['id']}/chunks/{i}", data=piece, headers=headers)
        assert r.status_code == 200, await r.get_data()
    r = await client.post(f"/v1/uploads/{created['id']}/complete", headers=headers)
    job_id = (await r.get_json())["job_id"]
    r = await client.get(f"/v1/jobs/{job_id}?wait=30", headers=headers)
    job = await r.get_json()
    assert job["state"] == "succeeded", job
    return job


# -- tokens --------------------------------------------------------------------


async def test_requests_without_a_valid_token_are_refused_and_say_why(secured):
    c = secured.client
    r = await c.get("/v1/files")
    body = await problem(r, 401, "missing_token")
    assert "Authorization: Bearer" in body["detail"] and "ingestd token create" in body["detail"]
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="ingestd"'
    r = await c.get("/v1/files", headers=bearer("igd_0123456789abcdef_" + "x" * 43))
    await problem(r, 401, "invalid_token")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-token"):
        r = await c.get("/v1/files", headers={"Authorization": header})
        await problem(r, 401, "invalid_token")
    # A real token id with another secret is refused too.
    secured.token("alice", "alice")
    good = secured.tokens["alice"]
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    r = await c.get("/v1/files", headers=bearer(forged))
    await problem(r, 401, "invalid_token")
    r = await c.get("/v1/files", headers=bearer(good))
    assert r.status_code == 200 and (await r.get_json())["files"] == []


async def test_every_api_needs_the_token_but_health_docs_and_preflights_do_not(secured):
    c = secured.client
    for method, path in [
        ("POST", "/api/upload/init"),
        ("GET", "/api/upload/status/0123"),
        ("POST", "/v1/uploads"),
        ("GET", "/v1/jobs/0123"),
        ("GET", "/v1/files/0123/content"),
        ("GET", "/v1/usage"),
        ("HEAD", "/files/0123456789abcdef0123456789abcdef"),
        ("PATCH", "/files/0123456789abcdef0123456789abcdef"),
        ("DELETE", "/files/0123456789abcdef0123456789abcdef"),
        ("POST", "/files/"),
    ]:
        r = await c.open(path, method=method, headers=TUS if path.startswith("/files") else {})
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        if path.startswith("/files") and method != "HEAD":
            assert r.headers["Tus-Resumable"] == "1.0.0"
    assert (await c.get("/healthz")).status_code == 200
    assert (await c.get("/openapi.json")).status_code == 200
    r = await c.options(
        "/files/",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 204 and r.headers["Tus-Version"] == "1.0.0"
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]


async def test_scopes_read_write_admin(secured):
    c = secured.client
    write = secured.token("alice-w", "alice")
    read = secured.token("alice-r", "alice", scope="read")
    admin = secured.token("ops", "ops", scope="admin")
    data = os.urandom(3000)
    job = await upload(c, write, data)
    file_id = job["file_id"]
    # read: list, describe, download, job status; nothing that changes data.
    assert [
        f["id"] for f in (await (await c.get("/v1/files", headers=read)).get_json())["files"]
    ] == [file_id]
    r = await c.get(f"/v1/files/{file_id}/content", headers=read)
    assert hashlib.sha256(await r.get_data()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert (await c.get(f"/v1/jobs/{job['id']}", headers=read)).status_code == 200
    for method, path, kw in [
        ("POST", "/v1/uploads", {"json": {"filename": "x", "size": 1}}),
        ("DELETE", f"/v1/files/{file_id}", {}),
        ("POST", "/api/upload/init", {"json": {"filename": "x", "totalSize": 1}}),
        ("POST", "/files/", {"headers": {**TUS, "Upload-Length": "1"}}),
    ]:
        headers = {**read, **kw.pop("headers", {})}
        r = await c.open(path, method=method, headers=headers, **kw)
        body = await problem(r, 403, "scope_required")
        assert "'write'" in body["detail"] and "(read)" in body["detail"]
    # The file is untouched by the refusals.
    r = await c.get(f"/v1/files/{file_id}/content", headers=read)
    assert hashlib.sha256(await r.get_data()).hexdigest() == hashlib.sha256(data).hexdigest()
    # admin: another tenant's data with Ingestd-Tenant; others may not use it.
    r = await c.get("/v1/files", headers={**admin, "Ingestd-Tenant": "alice"})
    assert [f["id"] for f in (await r.get_json())["files"]] == [file_id]
    assert (await (await c.get("/v1/files", headers=admin)).get_json())["files"] == []
    r = await c.get("/v1/files", headers={**write, "Ingestd-Tenant": "bob"})
    await problem(r, 403, "scope_required")
    r = await c.get("/v1/files", headers={**admin, "Ingestd-Tenant": "../etc"})
    await problem(r, 400, "invalid_tenant")
    r = await c.delete(f"/v1/files/{file_id}", headers={**admin, "Ingestd-Tenant": "alice"})
    assert r.status_code == 204


async def test_revoked_and_expired_tokens_are_refused_at_once(secured):
    c = secured.client
    headers = secured.token("t", "alice")
    assert (await c.get("/v1/files", headers=headers)).status_code == 200
    secured.rt.store.tokens.revoke("t")
    await problem(await c.get("/v1/files", headers=headers), 401, "invalid_token")
    expired = secured.token("old", "alice", expires_in=-1.0)
    body = await problem(await c.get("/v1/files", headers=expired), 401, "token_expired")
    assert "'old' expired" in body["detail"]


async def test_the_index_holds_no_token_in_plain_text(secured, index_bytes):
    headers = secured.token("t", "alice")
    assert (await secured.client.get("/v1/files", headers=headers)).status_code == 200
    token = secured.tokens["t"]
    secret = token.split("_", 2)[2]  # (a secret may hold "_" itself)
    raw = index_bytes(secured.rt.config)
    assert b"secret_sha256" in raw  # it did read the token records
    assert token.encode() not in raw and secret.encode() not in raw
    # What is kept is the hash, bound to the token's id.
    record = secured.rt.store.tokens.get(token.split("_")[1])
    assert record.secret_sha256 == hashlib.sha256(token.encode()).digest()


async def test_metrics_are_open_on_loopback_and_for_admins_otherwise(make_config):
    for mode, anonymous in [("loopback", 200), ("token", 401), ("open", 200)]:
        app = create_app(make_config(INGESTD_AUTH_REQUIRED="true", INGESTD_AUTH_METRICS=mode))
        async with app.test_app() as test_app:
            s = Secured(test_app)
            c = s.client
            r = await c.get("/metrics", scope_base={"client": ("127.0.0.1", 5555)})
            assert r.status_code == anonymous, mode
            r = await c.get("/metrics", headers=s.token(f"w-{mode}", "alice"), scope_base=REMOTE)
            assert r.status_code == (200 if mode == "open" else 403), mode
            r = await c.get(
                "/metrics", headers=s.token(f"a-{mode}", "ops", "admin"), scope_base=REMOTE
            )
            assert r.status_code == 200


async def test_a_non_loopback_client_needs_an_admin_token_for_metrics(make_config):
    app = create_app(make_config(INGESTD_AUTH_REQUIRED="true"))
    async with app.test_app() as test_app:
        c = test_app.test_client()
        await problem(await c.get("/metrics", scope_base=REMOTE), 401, "missing_token")
        # A header cannot claim loopback.
        r = await c.get("/metrics", scope_base=REMOTE, headers={"Remote-Addr": "127.0.0.1"})
        await problem(r, 401, "missing_token")


# -- Host (DNS rebinding) --------------------------------------------------------


async def test_without_auth_only_loopback_host_names_are_answered(make_config):
    app = create_app(make_config(INGESTD_SERVER_ALLOWED_HOSTS="ingest.internal"))
    async with app.test_app() as test_app:
        c = test_app.test_client()
        for host in (
            "127.0.0.1:8000",
            "localhost",
            "localhost:9",
            "[::1]:8000",
            "ingest.internal:80",
            "app.localhost",
        ):
            r = await c.get("/v1/files", headers={"Host": host})
            assert r.status_code == 200, host
        for host in (
            "evil.example",
            "evil.example:8000",
            "127.0.0.1.evil.example",
            "10.0.0.5",
            "localhost.evil.example",
        ):
            r = await c.get("/v1/files", headers={"Host": host})
            body = await problem(r, 421, "host_not_allowed")
            assert "allowed_hosts" in body["detail"]
            r = await c.post("/files/", headers={"Host": host, **TUS, "Upload-Length": "3"})
            assert r.status_code == 421


async def test_with_auth_any_host_is_answered(secured):
    headers = secured.token("t", "alice")
    r = await secured.client.get("/v1/files", headers={**headers, "Host": "ingest.example.com"})
    assert r.status_code == 200


# -- rate limits -----------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after(make_config):
    app = create_app(
        make_config(
            INGESTD_AUTH_REQUIRED="true",
            INGESTD_AUTH_RATE_READ="0.5",
            INGESTD_AUTH_BURST_READ="3",
        )
    )
    async with app.test_app() as test_app:
        s = Secured(test_app)
        read = s.token("r", "alice", "read")
        write = s.token("w", "alice", "write")
        statuses = [(await s.client.get("/v1/files", headers=read)).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        r = await s.client.get("/v1/files", headers=read)
        body = await problem(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1 and body["limit"] == 0.5
        # Buckets are per token: another token (and scope) is unaffected.
        assert (await s.client.get("/v1/files", headers=write)).status_code == 200


# -- quotas ----------------------------------------------------------------------


async def test_quotas_refuse_with_the_limit_and_keep_what_is_stored(make_config):
    app = create_app(
        make_config(
            INGESTD_AUTH_REQUIRED="true",
            INGESTD_QUOTAS_MAX_BYTES="5000",
            INGESTD_QUOTAS_MAX_OPEN_UPLOADS="2",
            INGESTD_QUOTAS_MAX_FILE_SIZE="4000",
        )
    )
    async with app.test_app() as test_app:
        s = Secured(test_app)
        c = s.client
        alice = s.token("a", "alice")
        data = os.urandom(3000)
        job = await upload(c, alice, data)
        usage = await (await c.get("/v1/usage", headers=alice)).get_json()
        assert usage["logical_bytes"] == 3000 and usage["physical_bytes"] == 3000
        assert usage["limits"] == {"max_bytes": 5000, "max_open_uploads": 2, "max_file_size": 4000}
        # Too large a file: 413 naming the limit.
        r = await c.post("/v1/uploads", json={"filename": "b", "size": 4001}, headers=alice)
        body = await problem(r, 413, "file_too_large")
        assert body["limit"] == 4000
        # Past the byte quota: 507 with the figures (3000 stored + 2001 > 5000).
        r = await c.post("/v1/uploads", json={"filename": "b", "size": 2001}, headers=alice)
        body = await problem(r, 507, "quota_exceeded")
        assert body["limit"] == 5000 and body["current"] == 3000 and body["requested"] == 2001
        # The same through tus and the seed API.
        r = await c.post("/files/", headers={**alice, **TUS, "Upload-Length": "2001"})
        await problem(r, 507, "quota_exceeded")
        r = await c.post(
            "/api/upload/init", json={"filename": "b", "totalSize": 2001}, headers=alice
        )
        await problem(r, 507, "quota_exceeded")
        # Open uploads reserve their size: 1000 + 1000 fit, then the count is full.
        for _ in range(2):
            r = await c.post("/v1/uploads", json={"filename": "c", "size": 900}, headers=alice)
            assert r.status_code == 201
        r = await c.post("/v1/uploads", json={"filename": "d", "size": 1}, headers=alice)
        body = await problem(r, 429, "too_many_open_uploads")
        assert body["limit"] == 2 and body["current"] == 2
        # A deferred tus length is checked when it is declared.
        # Another tenant has its own figures.
        bob = s.token("b", "bob")
        r = await c.post("/v1/uploads", json={"filename": "e", "size": 4000}, headers=bob)
        assert r.status_code == 201
        # Nothing stored was lost.
        r = await c.get(f"/v1/files/{job['file_id']}/content", headers=alice)
        assert hashlib.sha256(await r.get_data()).digest() == hashlib.sha256(data).digest()


async def test_a_deferred_tus_length_counts_against_the_quota(make_config):
    app = create_app(make_config(INGESTD_AUTH_REQUIRED="true", INGESTD_QUOTAS_MAX_BYTES="2000"))
    async with app.test_app() as test_app:
        s = Secured(test_app)
        alice = s.token("a", "alice")
        r = await s.client.post("/files/", headers={**alice, **TUS, "Upload-Defer-Length": "1"})
        assert r.status_code == 201
        location = r.headers["Location"]
        r = await s.client.patch(
            location,
            data=b"x" * 10,
            headers={
                **alice,
                **TUS,
                "Upload-Offset": "0",
                "Upload-Length": "2001",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        body = await problem(r, 507, "quota_exceeded")
        assert body["limit"] == 2000


async def test_per_tenant_quota_overrides(tmp_path, make_config):
    config = make_config(INGESTD_AUTH_REQUIRED="true", INGESTD_QUOTAS_MAX_BYTES="1000")
    from ingestd.daemon.core.config import TenantQuota

    config.quotas.tenants["big"] = TenantQuota(max_bytes=10_000)
    app = create_app(config)
    async with app.test_app() as test_app:
        s = Secured(test_app)
        r = await s.client.post(
            "/v1/uploads", json={"filename": "x", "size": 5000}, headers=s.token("b", "big")
        )
        assert r.status_code == 201
        r = await s.client.post(
            "/v1/uploads", json={"filename": "x", "size": 5000}, headers=s.token("s", "small")
        )
        await problem(r, 507, "quota_exceeded")


async def test_admins_manage_tokens_over_http(secured):
    c = secured.client
    admin = secured.token("ops", "ops", scope="admin")
    write = secured.token("w", "alice")
    r = await c.post("/v1/tokens", json={"tenant": "carol", "scope": "read"}, headers=write)
    await problem(r, 403, "scope_required")
    assert (await c.get("/v1/tokens", headers=write)).status_code == 403
    r = await c.post(
        "/v1/tokens", json={"tenant": "carol", "scope": "read", "name": "pipe"}, headers=admin
    )
    assert r.status_code == 201
    created = await r.get_json()
    assert created["info"]["tenant"] == "carol" and created["info"]["scopes"] == ["read"]
    carol = {"Authorization": f"Bearer {created['token']}"}
    assert (await c.get("/v1/files", headers=carol)).status_code == 200
    listed = await (await c.get("/v1/tokens", headers=admin)).get_json()
    assert {t["name"] for t in listed["tokens"]} == {"ops", "w", "pipe"}
    assert created["token"] not in str(listed)
    r = await c.post("/v1/tokens", json={"tenant": "no/slash"}, headers=admin)
    await problem(r, 400, "invalid_token_request")
    assert (await c.delete("/v1/tokens/pipe", headers=admin)).status_code == 204
    await problem(await c.get("/v1/files", headers=carol), 401, "invalid_token")
    await problem(await c.delete("/v1/tokens/pipe", headers=admin), 404, "unknown_token")
    metrics = (await (await c.get("/metrics", headers=admin)).get_data()).decode()
    assert 'ingestd_access_refusals_total{code="scope_required"} 2.0' in metrics
    assert 'ingestd_access_refusals_total{code="invalid_token"} 1.0' in metrics


def test_the_client_reads_retry_after_in_seconds_or_as_a_date():
    import email.utils
    import time

    import httpx
    from ingestd.daemon.client._retry import MAX_RETRY_AFTER, retry_after

    def answer(value: str | None) -> httpx.Response:
        return httpx.Response(429, headers={} if value is None else {"Retry-After": value})

    assert retry_after(answer("3"), 1.0) == 3.0
    assert retry_after(answer(None), 1.5) == 1.5
    assert retry_after(answer("soon"), 2.0) == 2.0
    assert retry_after(answer("99999"), 1.0) == MAX_RETRY_AFTER
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after(answer(later), 1.0) <= 31


async def test_bytes_of_an_undeclared_length_count_against_the_quota(make_config):
    app = create_app(make_config(INGESTD_AUTH_REQUIRED="true", INGESTD_QUOTAS_MAX_BYTES="3000"))
    async with app.test_app() as test_app:
        s = Secured(test_app)
        alice = s.token("a", "alice")
        r = await s.client.post("/files/", headers={**alice, **TUS, "Upload-Defer-Length": "1"})
        location = r.headers["Location"]
        patch = {**alice, **TUS, "Content-Type": "application/offset+octet-stream"}
        data = os.urandom(5000)
        r = await s.client.patch(location, data=data, headers={**patch, "Upload-Offset": "0"})
        body = await problem(r, 507, "quota_exceeded")
        assert body["offset"] == 3000  # the bytes within the quota are kept
        r = await s.client.head(location, headers={**alice, **TUS})
        assert r.headers["Upload-Offset"] == "3000"
        r = await s.client.patch(location, data=b"x", headers={**patch, "Upload-Offset": "3000"})
        await problem(r, 507, "quota_exceeded")
        # Declaring the length it has ends the upload within the quota.
        r = await s.client.patch(
            location, data=b"", headers={**patch, "Upload-Offset": "3000", "Upload-Length": "3000"}
        )
        assert r.status_code == 204, await r.get_data()

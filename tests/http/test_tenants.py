"""Tenants never see each other: every route of every API, every verb, and
deduplication that cannot be used to probe another tenant's content.

Tenant A stores uploads, files, jobs and chunks through all three APIs; tenant
B tries each route with A's ids and with ids that never existed. Each answer
to B is the same — status and body, the id aside — so that B cannot tell
A's ids from invented ones. conftest: 1024-byte chunks, CDC bounds
256..2048.
"""

from __future__ import annotations

import hashlib
import io
import os

import blake3
import pytest
from ingestd.daemon.http.app import create_app
from ingestd.daemon.http.auth import create_token
from quart.datastructures import FileStorage
from support.chunks import stored_hashes

pytestmark = pytest.mark.api

CHUNK = 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def layout(data: bytes) -> list[dict]:
    return [
        {"hash": blake3.blake3(data[i : i + CHUNK]).hexdigest(), "size": len(data[i : i + CHUNK])}
        for i in range(0, len(data), CHUNK)
    ]


def objects(config) -> set[str]:
    return stored_hashes(config)


class World:
    def __init__(self, test_app, data_dir) -> None:
        self.client = test_app.test_client()
        self.rt = test_app.app.extensions["ingestd"]
        self.data_dir = data_dir
        self.a = bearer(
            create_token(self.rt.store.tokens, tenant="alice", name="alice-pipeline")[0]
        )
        self.b = bearer(create_token(self.rt.store.tokens, tenant="bob", name="b")[0])
        self.ids: dict[str, str] = {}
        self.content: dict[str, bytes] = {}

    # -- A's things, through each API -------------------------------------------

    async def v1_upload(self, headers, data, name="a.bin", *, declare=False, complete=True):
        body = {"filename": name, "size": len(data)}
        if declare:
            body["chunks"] = layout(data)
        r = await self.client.post("/v1/uploads", json=body, headers=headers)
        created = await r.get_json()
        assert r.status_code == 201, created
        if not complete:
            return created
        for i in created["missing"]:
            r = await self.client.put(
                f"/v1/uploads/{created['id']}/chunks/{i}",
                data=data[i * CHUNK : (i + 1) * CHUNK],
                headers=headers,
            )
            assert r.status_code == 200, await r.get_data()
        r = await self.client.post(f"/v1/uploads/{created['id']}/complete", headers=headers)
        job_id = (await r.get_json())["job_id"]
        job = await (
            await self.client.get(f"/v1/jobs/{job_id}?wait=30", headers=headers)
        ).get_json()
        assert job["state"] == "succeeded", job
        return created, job

    async def seed_init(self, headers, data, name="s.bin"):
        r = await self.client.post(
            "/api/upload/init", json={"filename": name, "totalSize": len(data)}, headers=headers
        )
        assert r.status_code == 200, await r.get_data()
        return (await r.get_json())["uploadId"]

    async def seed_chunk(self, headers, upload_id, index, payload, total):
        return await self.client.post(
            "/api/upload/chunk",
            form={"uploadId": upload_id, "chunkIndex": str(index), "totalChunks": str(total)},
            files={"chunk": FileStorage(io.BytesIO(payload), filename="blob")},
            headers=headers,
        )

    async def tus_create(self, headers, length, **extra):
        r = await self.client.post(
            "/files/", headers={**headers, **TUS, "Upload-Length": str(length), **extra}
        )
        assert r.status_code == 201, await r.get_data()
        return r.headers["Location"].rsplit("/", 1)[1]

    async def tus_patch(self, headers, upload_id, offset, data):
        return await self.client.patch(
            f"/files/{upload_id}",
            data=data,
            headers={**headers, **TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS},
        )

    async def populate(self) -> None:
        """A's uploads, files and jobs in every state the routes deal with."""
        a, ids = self.a, self.ids
        ids["token"] = "alice-pipeline"  # the name of A's token
        data = self.content["file"] = os.urandom(3 * CHUNK + 100)
        created, job = await self.v1_upload(a, data)
        ids.update(v1_done=created["id"], file=job["file_id"], job=job["id"])
        opened = await self.v1_upload(a, os.urandom(2 * CHUNK), declare=True, complete=False)
        ids["v1_open"] = opened["id"]
        seed_data = os.urandom(2 * CHUNK)
        ids["seed_open"] = await self.seed_init(a, seed_data)
        r = await self.seed_chunk(a, ids["seed_open"], 0, seed_data[:CHUNK], 2)
        assert r.status_code == 200
        ids["tus_open"] = await self.tus_create(a, 3000)
        assert (await self.tus_patch(a, ids["tus_open"], 0, os.urandom(1500))).status_code == 204
        ids["tus_partial"] = await self.tus_create(a, 500, **{"Upload-Concat": "partial"})
        assert (await self.tus_patch(a, ids["tus_partial"], 0, os.urandom(500))).status_code == 204
        ids["tus_done"] = await self.tus_create(a, 10)
        assert (await self.tus_patch(a, ids["tus_done"], 0, b"0123456789")).status_code == 204

    async def a_state(self) -> dict:
        """What A sees of its things: must not change whatever B does."""
        c, a, ids = self.client, self.a, self.ids
        out = {}
        for key in ("v1_open", "v1_done"):
            body = await (await c.get(f"/v1/uploads/{ids[key]}", headers=a)).get_json()
            out[key] = {k: body[k] for k in ("state", "received_chunks", "missing")}
        out["seed"] = await (
            await c.get(f"/api/upload/status/{ids['seed_open']}", headers=a)
        ).get_json()
        for key in ("tus_open", "tus_partial", "tus_done"):
            r = await c.head(f"/files/{ids[key]}", headers={**a, **TUS})
            out[key] = (r.status_code, r.headers.get("Upload-Offset"))
        r = await c.get(f"/v1/files/{ids['file']}/content", headers=a)
        out["file"] = hashlib.sha256(await r.get_data()).hexdigest()
        out["job"] = (await (await c.get(f"/v1/jobs/{ids['job']}", headers=a)).get_json())["state"]
        return out


@pytest.fixture
async def world(make_config, tmp_path):
    app = create_app(make_config(INGESTD_AUTH_REQUIRED="true"))
    async with app.test_app() as test_app:
        w = World(test_app, tmp_path / "data")
        await w.populate()
        yield w


def never_existed() -> str:
    return os.urandom(16).hex()


async def answer(response, upload_id: str) -> tuple[int, str, bytes]:
    """Status, content type and body with the id blanked out."""
    body = await response.get_data()
    return response.status_code, response.content_type, body.replace(upload_id.encode(), b"<ID>")


# (endpoint, method, how to call it with an id) for every route that takes one.
def id_routes(w: World):
    c, b = w.client, w.b

    def seed_chunk(i):
        return w.seed_chunk(b, i, 1, b"x" * CHUNK, 2)

    return [
        ("seed.status", "GET", "seed_open", lambda i: c.get(f"/api/upload/status/{i}", headers=b)),
        (
            "seed.complete",
            "POST",
            "seed_open",
            lambda i: c.post(f"/api/upload/complete/{i}", headers=b),
        ),
        ("seed.chunk", "POST", "seed_open", seed_chunk),
        ("v1.upload_status", "GET", "v1_open", lambda i: c.get(f"/v1/uploads/{i}", headers=b)),
        ("v1.upload_status", "GET", "v1_done", lambda i: c.get(f"/v1/uploads/{i}", headers=b)),
        ("v1.upload_status", "HEAD", "v1_open", lambda i: c.head(f"/v1/uploads/{i}", headers=b)),
        (
            "v1.put_chunk",
            "PUT",
            "v1_open",
            lambda i: c.put(f"/v1/uploads/{i}/chunks/0", data=b"x" * CHUNK, headers=b),
        ),
        (
            "v1.put_chunks",
            "PUT",
            "v1_open",
            lambda i: c.put(f"/v1/uploads/{i}/chunks?from=0&count=1", data=b"x" * CHUNK, headers=b),
        ),
        (
            "v1.complete_upload",
            "POST",
            "v1_open",
            lambda i: c.post(f"/v1/uploads/{i}/complete", headers=b),
        ),
        (
            "v1.cancel_upload",
            "DELETE",
            "v1_open",
            lambda i: c.delete(f"/v1/uploads/{i}", headers=b),
        ),
        (
            "v1.cancel_upload",
            "DELETE",
            "v1_done",
            lambda i: c.delete(f"/v1/uploads/{i}", headers=b),
        ),
        ("v1.job_status", "GET", "job", lambda i: c.get(f"/v1/jobs/{i}?wait=0.1", headers=b)),
        ("v1.describe_file", "GET", "file", lambda i: c.get(f"/v1/files/{i}", headers=b)),
        ("v1.file_content", "GET", "file", lambda i: c.get(f"/v1/files/{i}/content", headers=b)),
        (
            "v1.file_content",
            "GET",
            "file",
            lambda i: c.get(f"/v1/files/{i}/content", headers={**b, "Range": "bytes=0-9"}),
        ),
        ("v1.delete_file", "DELETE", "file", lambda i: c.delete(f"/v1/files/{i}", headers=b)),
        *[
            (
                "tus.upload",
                method,
                key,
                lambda i, m=method: c.open(
                    f"/files/{i}",
                    method=m,
                    headers={**b, **TUS, "Upload-Offset": "1500", "Content-Type": OCTETS},
                    data=b"y" * 10 if m == "PATCH" else None,
                ),
            )
            for key in ("tus_open", "tus_partial", "tus_done")
            for method in ("HEAD", "GET", "PATCH", "DELETE")
        ],
        *[
            (
                "tus.upload",
                "POST",
                key,
                lambda i, m=method: c.post(
                    f"/files/{i}", headers={**b, **TUS, "X-HTTP-Method-Override": m}
                ),
            )
            for key in ("tus_open", "tus_done")
            for method in ("HEAD", "GET", "DELETE")
        ],
        # Admin only: a write token is refused alike for tokens that exist or not.
        ("v1.revoke_token", "DELETE", "token", lambda i: c.delete(f"/v1/tokens/{i}", headers=b)),
        (
            "tus.creation",
            "POST",
            "tus_partial",
            lambda i: c.post("/files/", headers={**b, **TUS, "Upload-Concat": f"final;/files/{i}"}),
        ),
    ]


async def test_b_cannot_reach_anything_of_a_through_any_route(world):
    w = world
    before = await w.a_state()
    covered = set()
    for endpoint, method, key, call in id_routes(w):
        covered.add(endpoint)
        theirs = await answer(await call(w.ids[key]), w.ids[key])
        fake = never_existed()
        invented = await answer(await call(fake), fake)
        assert theirs == invented, (endpoint, method, key, theirs, invented)
        if endpoint == "v1.revoke_token":
            assert theirs[0] == 403, theirs
        elif endpoint != "tus.creation":
            assert theirs[0] == 404, (endpoint, method, key, theirs)
        else:
            assert theirs[0] == 400, (endpoint, method, key, theirs)
    # Every route that takes an id (or names another upload) is in the list.
    routes = {
        rule.endpoint
        for rule in world.client.app.url_map.iter_rules()
        if "<" in rule.rule and rule.endpoint != "web.static_file"  # files, not tenant data
    }
    routes |= {"tus.creation", "seed.chunk"}  # the ids are in the headers or the form
    assert routes <= covered, routes - covered
    assert await w.a_state() == before


async def test_listings_and_usage_show_only_ones_own(world):
    c, b = world.client, world.b
    assert (await (await c.get("/v1/files", headers=b)).get_json())["files"] == []
    r = await c.get("/v1/files?prefix=a", headers=b)
    assert (await r.get_json())["files"] == []
    usage = await (await c.get("/v1/usage", headers=b)).get_json()
    assert usage["tenant"] == "bob"
    assert (usage["logical_bytes"], usage["physical_bytes"], usage["open_uploads"]) == (0, 0, 0)
    mine = await (await c.get("/v1/usage", headers=world.a)).get_json()
    assert mine["files"] >= 1 and mine["open_uploads"] >= 3
    listed = (await (await c.get("/v1/files", headers=world.a)).get_json())["files"]
    assert world.ids["file"] in {f["id"] for f in listed}


def _shape(body: dict) -> dict:
    """An answer without what differs between any two uploads (ids, times)."""
    return {k: v for k, v in body.items() if k not in ("id", "expires", "job_id", "upload_id")}


async def test_dedup_answers_do_not_tell_b_what_a_holds(world):
    w, c = world, world.client
    known = os.urandom(4 * CHUNK)
    await w.v1_upload(w.a, known, "a.bin", declare=True)
    held = objects(w.rt.config)
    # B declares A's content, and content nobody has: the answers are alike.
    theirs = await w.v1_upload(w.b, known, "b.bin", declare=True, complete=False)
    new = os.urandom(4 * CHUNK)
    fresh = await w.v1_upload(w.b, new, "b.bin", declare=True, complete=False)
    assert _shape(theirs) == _shape(fresh)
    assert theirs["missing"] == [0, 1, 2, 3]
    status = await (await c.get(f"/v1/uploads/{theirs['id']}", headers=w.b)).get_json()
    assert status["received_chunks"] == 0 and status["missing"] == [0, 1, 2, 3]
    # Sending the bytes: the same answer as for new bytes, and no second copy.
    r1 = await c.put(f"/v1/uploads/{theirs['id']}/chunks/0", data=known[:CHUNK], headers=w.b)
    r2 = await c.put(f"/v1/uploads/{fresh['id']}/chunks/0", data=new[:CHUNK], headers=w.b)
    one, two = await r1.get_json(), await r2.get_json()
    assert (r1.status_code, one["stored"], one["received_chunks"]) == (200, True, 1)
    assert _shape(one) == _shape(two) | {"hash": one["hash"]}
    assert blake3.blake3(known[:CHUNK]).hexdigest() in held
    assert objects(w.rt.config) - held == {blake3.blake3(new[:CHUNK]).hexdigest()}
    # Completing after sending the rest: B's own file, B's own verdict.
    for i in range(1, 4):
        r = await c.put(
            f"/v1/uploads/{theirs['id']}/chunks/{i}",
            data=known[i * CHUNK : (i + 1) * CHUNK],
            headers=w.b,
        )
        assert r.status_code == 200
    r = await c.post(f"/v1/uploads/{theirs['id']}/complete", headers=w.b)
    job = await (
        await c.get(f"/v1/jobs/{(await r.get_json())['job_id']}?wait=30", headers=w.b)
    ).get_json()
    assert job["state"] == "succeeded" and job["reused_from"] is None
    # Now B holds it: a second upload of it by B sends nothing.
    again = await w.v1_upload(w.b, known, "b2.bin", declare=True, complete=False)
    assert again["missing"] == []
    usage = await (await c.get("/v1/usage", headers=w.b)).get_json()
    assert usage["physical_bytes"] == 4 * CHUNK + CHUNK  # known, and fresh's first chunk


async def test_seed_and_tus_answers_do_not_tell_b_what_a_holds(world):
    w = world
    known = os.urandom(2 * CHUNK)
    seed_a = await w.seed_init(w.a, known)
    r = await w.seed_chunk(w.a, seed_a, 0, known[:CHUNK], 2)
    assert (await r.get_json())["message"] == "Chunk uploaded successfully"
    seed_b = await w.seed_init(w.b, known)
    r = await w.seed_chunk(w.b, seed_b, 0, known[:CHUNK], 2)
    assert r.status_code == 200
    assert await r.get_json() == {
        "success": True,
        "receivedChunks": 1,
        "message": "Chunk uploaded successfully",
    }
    # tus: B's PATCH of bytes A holds answers as for any bytes.
    tus_b = await w.tus_create(w.b, len(known))
    r = await w.tus_patch(w.b, tus_b, 0, known)
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(len(known))


async def test_global_dedup_scope_shares_across_tenants(make_config, tmp_path):
    app = create_app(make_config(INGESTD_AUTH_REQUIRED="true", INGESTD_AUTH_DEDUP_SCOPE="global"))
    async with app.test_app() as test_app:
        w = World(test_app, tmp_path / "data")
        known = os.urandom(3 * CHUNK)
        await w.v1_upload(w.a, known, declare=True)
        theirs = await w.v1_upload(w.b, known, declare=True, complete=False)
        assert theirs["missing"] == []

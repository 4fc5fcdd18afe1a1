"""GET /v1/files filters a client uses before it uploads: name, content (BLAKE3), state.

Through the in-process Quart test client, with auth on and two tenants, so that
one tenant's lookup never finds the other's file with the same name and bytes.
"""

from __future__ import annotations

import blake3
import pytest

pytestmark = pytest.mark.api


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


async def upload(client, headers: dict[str, str], name: str, data: bytes) -> dict:
    body = {"filename": name, "size": len(data), "chunks": [{"hash": b3(data), "size": len(data)}]}
    r = await client.post("/v1/uploads", json=body, headers=headers)
    assert r.status_code == 201, await r.get_data()
    created = await r.get_json()
    if created["missing"]:
        r = await client.put(f"/v1/uploads/{created['id']}/chunks/0", data=data, headers=headers)
        assert r.status_code == 200, await r.get_data()
    r = await client.post(f"/v1/uploads/{created['id']}/complete", headers=headers)
    assert r.status_code == 202, await r.get_data()
    job_id = (await r.get_json())["job_id"]
    r = await client.get(f"/v1/jobs/{job_id}?wait=10", headers=headers)
    job = await r.get_json()
    assert job["state"] in ("succeeded", "failed"), job
    return job


async def ids(client, headers: dict[str, str], **query: str) -> list[str]:
    r = await client.get("/v1/files", query_string=query, headers=headers)
    assert r.status_code == 200, await r.get_data()
    return [f["id"] for f in (await r.get_json())["files"]]


async def test_lookup_by_name_and_content_is_tenant_scoped(secured):
    client = secured.client
    alice, bob = secured.token("a", "alice"), secured.token("b", "bob")
    data = b"x" * 700
    first = await upload(client, alice, "train.bin", data)
    same_bytes_other_name = await upload(client, alice, "copy.bin", data)
    other_bytes = await upload(client, alice, "train.bin", b"y" * 700)
    bobs = await upload(client, bob, "train.bin", data)

    found = await ids(client, alice, filename="train.bin", blake3=b3(data))
    assert found == [first["file_id"]]
    assert sorted(await ids(client, alice, blake3=b3(data))) == sorted(
        [first["file_id"], same_bytes_other_name["file_id"]]
    )
    assert sorted(await ids(client, alice, filename="train.bin")) == sorted(
        [first["file_id"], other_bytes["file_id"]]
    )
    # Bob holds a file with the same name and bytes: each sees only its own.
    assert await ids(client, bob, filename="train.bin", blake3=b3(data)) == [bobs["file_id"]]
    assert await ids(client, bob, blake3=b3(b"y" * 700)) == []
    assert await ids(client, alice, filename="train.bin", state="accepted", blake3=b3(data)) == [
        first["file_id"]
    ]
    assert await ids(client, alice, filename="train.bin", state="rejected") == []


async def test_a_rejected_file_is_found_by_state_not_by_content(secured):
    client = secured.client
    alice = secured.token("a", "alice")
    bad = b'{"a": 1}\n{not json\n'
    job = await upload(client, alice, "bad.jsonl", bad)
    assert job["verdict"] == "rejected"
    assert await ids(client, alice, filename="bad.jsonl", state="rejected") == [job["file_id"]]
    # Its content is not kept, so a re-upload cannot reuse it.
    assert await ids(client, alice, blake3=b3(bad)) == []


async def test_filtered_listing_pages(secured):
    client = secured.client
    alice = secured.token("a", "alice")
    made = [
        (await upload(client, alice, "same.bin", bytes([i]) * 300))["file_id"] for i in range(5)
    ]
    for i in range(3):
        await upload(client, alice, f"other-{i}.bin", bytes([100 + i]) * 300)
    seen, after = [], ""
    for _ in range(10):
        r = await client.get(
            "/v1/files",
            query_string={"filename": "same.bin", "limit": 2, "after": after},
            headers=alice,
        )
        page = await r.get_json()
        assert len(page["files"]) <= 2
        seen += [f["id"] for f in page["files"]]
        if not page["next"]:
            break
        after = page["next"]
    assert seen == sorted(made)


async def test_lookup_filters_are_validated(secured):
    client = secured.client
    alice = secured.token("a", "alice")
    for query in ({"blake3": "abc"}, {"blake3": "G" * 64}, {"state": "happy"}):
        r = await client.get("/v1/files", query_string=query, headers=alice)
        assert r.status_code == 400, (query, await r.get_data())

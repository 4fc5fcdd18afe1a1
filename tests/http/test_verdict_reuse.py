"""Identical re-uploads: the deciding stages' earlier answers are reused, and say so.

Reuse needs the same decision key (content, name, declared metadata, tenant,
and the plugins' fingerprint: code and settings) and an earlier job that
accepted cleanly; describe and lineage still run for the new file.
"""

from __future__ import annotations

import pytest
import trio
from ingestd.daemon.http.app import create_app, load_plugins
from ingestd.plugins import Verdict, hookimpl

pytestmark = pytest.mark.api


class Counting:
    """Counts the hook calls; rejects content that starts with b"BAD"."""

    def __init__(self) -> None:
        self.validated = 0
        self.described = 0

    @hookimpl
    def ingestd_validate(self, ctx):
        self.validated += 1
        with ctx.open() as f:
            head = f.read(3)
        return Verdict(ok=head != b"BAD", reason="starts with BAD", details={"head": len(head)})

    @hookimpl
    def ingestd_describe(self, ctx):
        self.described += 1
        return {"file_id": ctx.facts.file_id}


def jsonl(n: int) -> bytes:
    return b"".join(b'{"i": %d}\n' % i for i in range(n))


async def upload(client, data: bytes, name: str = "a.jsonl", metadata: dict | None = None):
    r = await client.post(
        "/v1/uploads", json={"filename": name, "size": len(data), "metadata": metadata or {}}
    )
    created = await r.get_json()
    for i in created["missing"]:
        r = await client.put(
            f"/v1/uploads/{created['id']}/chunks/{i}", data=data[i * 1024 : (i + 1) * 1024]
        )
        assert r.status_code == 200, await r.get_data()
    r = await client.post(f"/v1/uploads/{created['id']}/complete")
    assert r.status_code == 202, await r.get_data()
    job_id = (await r.get_json())["job_id"]
    return await (await client.get(f"/v1/jobs/{job_id}?wait=20")).get_json()


def make_app(make_config, counting: Counting, **env: str):
    config = make_config(**env)
    return create_app(config, plugins=load_plugins(config, extra={"counting": counting}))


async def test_an_identical_reupload_reuses_the_verdict_and_says_so(make_config):
    counting = Counting()
    async with make_app(make_config, counting).test_app() as app:
        client = app.test_client()
        data = jsonl(300)
        first = await upload(client, data)
        assert first["state"] == "succeeded" and first["reused_from"] is None
        assert counting.validated == 1
        second = await upload(client, data)
        assert second["state"] == "succeeded" and second["verdict"] == "accepted"
        assert second["reused_from"] == first["id"]
        assert counting.validated == 1  # not asked again
        assert counting.described == 2  # describe is per file
        reused = second["results"]["counting"]["validate"]
        assert reused["reused_from_job"] == first["id"] and reused["head"] == 3
        assert second["results"]["counting"]["describe"] == {"file_id": second["file_id"]}
        assert "reused_from_job" not in second["results"]["counting"]["describe"]
        # Detection came along: the datasets plugin's facts are the first file's.
        assert second["results"]["datasets"]["validate"]["reused_from_job"] == first["id"]
        file = await (await client.get(f"/v1/files/{second['file_id']}")).get_json()
        assert file["state"] == "accepted"
        # The copy is written after the answer; the second is a link to the first's.
        for _ in range(100):
            first_file = await (await client.get(f"/v1/files/{first['file_id']}")).get_json()
            if first_file["path"]:
                break
            await trio.sleep(0.05)
        with open(first_file["path"], "rb") as f:
            assert f.read() == data
        content = await (await client.get(f"/v1/files/{second['file_id']}/content")).get_data()
        assert content == data


async def test_no_reuse_across_names_metadata_rejections_or_when_turned_off(make_config):
    counting = Counting()
    async with make_app(make_config, counting).test_app() as app:
        client = app.test_client()
        data = jsonl(200)
        await upload(client, data, name="a.jsonl")
        renamed = await upload(client, data, name="b.jsonl")
        tagged = await upload(client, data, name="a.jsonl", metadata={"split": "eval"})
        assert renamed["reused_from"] is None and tagged["reused_from"] is None
        assert counting.validated == 3
        bad = b"BAD" + data
        assert (await upload(client, bad))["verdict"] == "rejected"
        again = await upload(client, bad)
        assert again["verdict"] == "rejected" and again["reused_from"] is None
        assert counting.validated == 5
    off = Counting()
    async with make_app(make_config, off, INGESTD_PLUGINS_REUSE_VERDICTS="false").test_app() as app:
        client = app.test_client()
        first = await upload(client, data)
        second = await upload(client, data)
        assert second["reused_from"] is None and off.validated == 2
        assert first["verdict"] == second["verdict"] == "accepted"


async def test_a_changed_plugin_setting_means_a_fresh_decision(make_config):
    counting = Counting()
    data = jsonl(100)
    async with make_app(make_config, counting).test_app() as app:
        assert (await upload(app.test_client(), data))["reused_from"] is None
    async with make_app(make_config, counting, INGESTD_PLUGINS_TIMEOUT="77").test_app() as app:
        again = await upload(app.test_client(), data)
        assert again["reused_from"] is None and counting.validated == 2
    # The same settings as the second run: its decision stands.
    async with make_app(make_config, counting, INGESTD_PLUGINS_TIMEOUT="77").test_app() as app:
        third = await upload(app.test_client(), data)
        assert third["reused_from"] == again["id"] and counting.validated == 2


async def test_a_deleted_earlier_file_is_not_reused(make_config):
    counting = Counting()
    async with make_app(make_config, counting).test_app() as app:
        client = app.test_client()
        data = jsonl(100)
        first = await upload(client, data)
        assert (await client.delete(f"/v1/files/{first['file_id']}")).status_code == 204
        second = await upload(client, data)
        assert second["reused_from"] is None and counting.validated == 2

"""The plugin system: hook specs, the manager, processing through the daemon."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest
import trio
from ingestd.daemon.core.config import ConfigError
from ingestd.daemon.http.app import create_app, load_plugins
from ingestd.plugins import (
    Detection,
    PluginConfigError,
    PluginSettings,
    Refusal,
    Verdict,
    build_plugins,
    hookimpl,
    hookspecs,
)
from ingestd.plugins.testing import run_plugins

pytestmark = pytest.mark.api

TESTS = Path(__file__).resolve().parents[1]  # all of tests/
HOOKS = [name for name, fn in vars(hookspecs).items() if name.startswith("ingestd_")]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_and_tested(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) > 150, f"{hook} needs a docstring that is the author's reference"
    # Implemented in a test (or the example), or a built-in's hook called by one.
    implemented = re.compile(rf"\b{hook}\(")
    sources = [p.read_text() for p in TESTS.rglob("*.py")]
    sources += [p.read_text() for p in (TESTS.parent / "examples").rglob("*.py")]
    assert any(implemented.search(text) for text in sources), f"no test implements {hook}"


class Probe:
    """A third-party style plugin touching every processing hook."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def ingestd_config_schema(self, plugin_name):
        return None  # the raw table is fine

    @hookimpl
    def ingestd_policy(self, request, config):
        self.calls.append("policy")
        if request.filename.endswith(".exe"):
            return Refusal("executables are not datasets", status=415, code="type_refused")
        if request.size > config.get("max_size", 1 << 40):
            return Refusal("too big for this team", status=413, code="quota_exceeded")
        return None

    @hookimpl
    def ingestd_detect(self, ctx):
        with ctx.open() as f:
            if f.read(5) == b"PROBE":
                return Detection("dataset", "probe", "text/plain")
        return None

    @hookimpl
    def ingestd_validate(self, ctx):
        self.calls.append("validate")
        if ctx.detection and ctx.detection.format == "probe":
            with ctx.open() as f:
                f.seek(-3, os.SEEK_END)
                if f.read() == b"BAD":
                    return Verdict.reject("ends with BAD", offset=ctx.facts.size - 3)
            return Verdict.accept(checked=True)
        return None

    @hookimpl
    async def ingestd_scan(self, ctx):
        self.calls.append("scan")
        await trio.sleep(0)
        return Verdict.accept(seen_validate=bool(ctx.results.get("probe", {}).get("validate")))

    @hookimpl
    def ingestd_describe(self, ctx):
        return {"size": ctx.facts.size, "team": ctx.config.get("team", "none")}

    @hookimpl
    def ingestd_lineage(self, ctx):
        return list(ctx.facts.declared_metadata.get("from", []))

    @hookimpl
    def ingestd_notify(self, ctx, outcome):
        self.calls.append(f"notify:{outcome.accepted}")
        return {"told": True}

    @hookimpl
    def ingestd_pipeline(self, ctx, outcome):
        return f"train-{ctx.facts.file_id[:8]}" if outcome.accepted else None


class Exploding:
    @hookimpl
    def ingestd_validate(self, ctx):
        raise RuntimeError("validator crashed")


class Sleepy:
    @hookimpl
    async def ingestd_scan(self):
        await trio.sleep(30)


def make_app(make_config, plugins, tables=None, **env):
    config = make_config(**env)
    if tables:
        config.plugin_tables.update(tables)
    return create_app(config, plugins=load_plugins(config, extra=plugins))


async def v1_upload(client, data: bytes, name: str, **metadata) -> dict:
    r = await client.post(
        "/v1/uploads", json={"filename": name, "size": len(data), "metadata": metadata}
    )
    assert r.status_code == 201, await r.get_data()
    created = await r.get_json()
    for i in created["missing"]:
        chunk = data[i * 1024 : (i + 1) * 1024]
        assert (
            await client.put(f"/v1/uploads/{created['id']}/chunks/{i}", data=chunk)
        ).status_code == 200
    r = await client.post(f"/v1/uploads/{created['id']}/complete")
    job = await (await client.get(f"/v1/jobs/{(await r.get_json())['job_id']}?wait=20")).get_json()
    return job


async def test_processing_records_every_plugin_result(make_config):
    probe = Probe()
    app = make_app(make_config, {"probe": probe}, tables={"probe": {"team": "nlp"}})
    async with app.test_app() as test_app:
        client = test_app.test_client()
        job = await v1_upload(client, b"PROBE" + os.urandom(3000), "x.probe", **{"from": ["f1"]})
        assert job["state"] == "succeeded", job
        results = job["results"]["probe"]
        assert results["validate"] == {"ok": True, "reason": "", "checked": True}
        assert results["scan"]["seen_validate"] is True
        assert results["describe"] == {"size": 3005, "team": "nlp"}
        assert results["pipeline"] == {"value": f"train-{job['file_id'][:8]}"}
        assert results["notify"] == {"told": True}
        file = await (await client.get(f"/v1/files/{job['file_id']}")).get_json()
        assert file["state"] == "accepted" and file["parents"] == ["f1"]
        assert file["detection"]["format"] == "probe"
        assert file["described"]["probe"] == {"size": 3005, "team": "nlp"}
        assert probe.calls[-1] == "notify:True"

        job = await v1_upload(client, b"PROBE" + os.urandom(100) + b"BAD", "y.probe")
        assert job["state"] == "failed" and "ends with BAD" in job["error"]
        file = await (await client.get(f"/v1/files/{job['file_id']}")).get_json()
        assert file["state"] == "rejected" and "ends with BAD" in file["reason"]
        r = await client.get(f"/v1/files/{job['file_id']}/content")
        assert r.status_code == 410 and (await r.get_json())["code"] == "file_rejected"
        assert probe.calls[-1] == "notify:False"


async def test_policy_refuses_before_bytes(make_config):
    app = make_app(make_config, {"probe": Probe()}, tables={"probe": {"max_size": 5000}})
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.post("/v1/uploads", json={"filename": "a.exe", "size": 10})
        assert r.status_code == 415 and (await r.get_json())["code"] == "type_refused"
        r = await client.post("/api/upload/init", json={"filename": "a.csv", "totalSize": 9000})
        body = await r.get_json()
        assert r.status_code == 413 and body["code"] == "quota_exceeded"
        assert body["detail"] == "too big for this team"


async def test_seed_status_says_why_processing_rejected(make_config):
    app = make_app(make_config, {"probe": Probe()})
    async with app.test_app() as test_app:
        client = test_app.test_client()
        data = b"PROBE" + os.urandom(500) + b"BAD"
        r = await client.post(
            "/api/upload/init", json={"filename": "s.probe", "totalSize": len(data)}
        )
        upload_id = (await r.get_json())["uploadId"]
        form = {"uploadId": upload_id, "chunkIndex": "0", "totalChunks": "1"}
        import io

        from quart.datastructures import FileStorage

        files = {"chunk": FileStorage(io.BytesIO(data), filename="blob")}
        r = await client.post("/api/upload/chunk", form=form, files=files)
        assert r.status_code == 200
        done = await (await client.post(f"/api/upload/complete/{upload_id}")).get_json()
        job = await (await client.get(f"/v1/jobs/{done['downstreamJobId']}?wait=20")).get_json()
        assert job["state"] == "failed"
        status = await (await client.get(f"/api/upload/status/{upload_id}")).get_json()
        assert status["state"] == "rejected" and "ends with BAD" in status["reason"]


@pytest.mark.parametrize("on_error,state", [("reject", "failed"), ("accept", "succeeded")])
async def test_a_raising_plugin_is_recorded_not_fatal(make_config, on_error, state):
    app = make_app(make_config, {"boom": Exploding()}, INGESTD_PLUGINS_ON_ERROR=on_error)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        job = await v1_upload(client, os.urandom(2000), "z.bin")
        assert job["state"] == state, job
        assert job["results"]["boom"]["validate"] == {"error": "validator crashed"}
        metrics = (await (await client.get("/metrics")).get_data()).decode()
        assert 'ingestd_plugin_errors_total{plugin="boom",stage="validate"} 1.0' in metrics
        # The daemon still serves.
        assert (await client.get("/healthz")).status_code == 200


async def test_a_slow_plugin_times_out():
    outcome = await run_plugins(b"data", "a.txt", plugins={"sleepy": Sleepy()}, timeout=0.2)
    assert not outcome.accepted
    assert outcome.results["sleepy"]["scan"] == {"error": "timed out after 0.2 s"}


def test_manager_enable_disable_and_config_errors(monkeypatch):
    monkeypatch.setenv("INGESTD_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = build_plugins(PluginSettings(disabled=["pii", "clamav"]))
    assert "pii" not in plugins.names() and "detect" in plugins.names()
    only = build_plugins(PluginSettings(enabled=["detect"]))
    assert only.names() == ["detect"]
    with pytest.raises(PluginConfigError, match="no plugin named 'nope'"):
        build_plugins(PluginSettings(disabled=["nope"]))
    with pytest.raises(PluginConfigError, match=r"\[plugins.nope\]"):
        build_plugins(PluginSettings(tables={"nope": {}}))


def test_invalid_plugin_table_names_the_key(make_config):
    config = make_config()
    config.plugin_tables["webhooks"] = {"urls": "not-a-list"}
    with pytest.raises(ConfigError, match=r"plugins.webhooks.*urls"):
        load_plugins(config)


async def test_a_job_interrupted_by_a_crash_runs_at_start(make_config):
    from ingestd.cas import Store
    from ingestd.daemon.core.services import index_settings, open_chunks

    config = make_config()
    data = os.urandom(3000)
    # A previous daemon accepted the completion, then died before the job ran.
    chunks = open_chunks(config)
    index = index_settings(config)
    with Store(
        config.data_dir, durability="none", process_files=True, chunks=chunks, index=index
    ) as store:
        session = store.create_session(filename="late.bin", size=len(data), chunk_size=1024)
        for i in range(3):
            store.put_chunk(session.id, i, data[i * 1024 : (i + 1) * 1024])
        job_id = store.begin_completion(session.id).job_id
    app = create_app(config, plugins=load_plugins(config, extra={"probe": Probe()}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        job = await (await client.get(f"/v1/jobs/{job_id}?wait=20")).get_json()
        assert job["state"] == "succeeded" and "probe" in job["results"]
        r = await client.get(f"/v1/files/{job['file_id']}/content")
        assert await r.get_data() == data

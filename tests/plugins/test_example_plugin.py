"""The example third-party plugin, installed with pip and found by its entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from ingestd.plugins import PluginSettings, build_plugins

pytestmark = pytest.mark.api

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ingestd-license-check"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-installs the example into a private directory put on sys.path, so
    the test environment sees it without it joining the daemon `make run` serves."""
    work = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE, work / "src")
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(work / "src")],
        check=True,
    )  # fmt: skip
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("ingestd_license_check", None)


def test_installed_plugin_is_discovered_through_its_entry_point(installed_example, monkeypatch):
    names = {ep.name for ep in entry_points(group="ingestd")}
    assert "license-check" in names
    monkeypatch.delenv("INGESTD_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    assert "license-check" in build_plugins(PluginSettings()).names()
    monkeypatch.setenv("INGESTD_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "license-check" not in build_plugins(PluginSettings()).names()


async def test_example_plugin_through_the_daemon_fixture(installed_example, ingestd_daemon):
    import ingestd_license_check

    config = {"license-check": {"allowed": ["mit"]}}
    plugins = {"license-check": ingestd_license_check}
    async with ingestd_daemon(plugins=plugins, config=config, enabled=["detect"]) as d:
        # Refused before any bytes: no license.
        r = await d.client.post("/v1/uploads", json={"filename": "a.jsonl", "size": 10})
        problem = await r.get_json()
        assert r.status_code == 422 and problem["code"] == "license_required"

        good = b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(50))
        job = await d.upload(good, "a.jsonl", {"license": "MIT"})
        assert job["state"] == "succeeded", job
        assert job["results"]["license-check"]["validate"]["sampled"] == 50
        assert job["file"]["described"]["license-check"] == {"license": "MIT"}

        bad = good + b'{"title": "no text"}\n'
        job = await d.upload(bad, "b.jsonl", {"license": "mit"})
        assert job["state"] == "failed" and "line 51 has no 'text' field" in job["error"]


@pytest.mark.e2e
def test_entry_point_plugin_runs_in_the_daemons_worker_process(installed_example, tmp_path):
    import httpx
    from support.e2e import Daemon

    config = tmp_path / "config.toml"
    config.write_text('[plugins.license-check]\nallowed = ["mit"]\n')
    env = {"PYTHONPATH": str(installed_example), "INGESTD_PLUGINS_ISOLATION": "process"}
    with Daemon(tmp_path / "d", config_path=config, extra_env=env) as daemon:
        with httpx.Client(base_url=daemon.base_url, timeout=30) as client:
            data = b'{"text": "ok"}\n{"title": "no text"}\n'
            body = {"filename": "x.jsonl", "size": len(data), "metadata": {"license": "mit"}}
            created = client.post("/v1/uploads", json=body).json()
            assert client.put(f"/v1/uploads/{created['id']}/chunks/0", content=data).is_success
            job_id = client.post(f"/v1/uploads/{created['id']}/complete").json()["job_id"]
            job = client.get(f"/v1/jobs/{job_id}?wait=30").json()
    assert job["state"] == "failed" and "line 2 has no 'text' field" in job["error"]
    assert job["results"]["license-check"]["validate"]["line"] == 2
    assert job["timings"]["license-check"]["validate"] >= 0

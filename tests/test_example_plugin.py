"""The example third-party plugin, installed with pip and found by its entry point."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest
from ingestd.plugins import PluginSettings, build_plugins

pytestmark = pytest.mark.api


def test_installed_plugin_is_discovered_through_its_entry_point(monkeypatch):
    names = {ep.name for ep in entry_points(group="ingestd")}
    if "license-check" not in names:
        pytest.fail("examples/ingestd-license-check is not installed (make test installs it)")
    monkeypatch.delenv("INGESTD_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    assert "license-check" in build_plugins(PluginSettings()).names()
    monkeypatch.setenv("INGESTD_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "license-check" not in build_plugins(PluginSettings()).names()


async def test_example_plugin_through_the_daemon_fixture(ingestd_daemon):
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

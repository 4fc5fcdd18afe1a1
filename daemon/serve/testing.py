"""The ``ingestd_daemon`` pytest fixture (a ``pytest11`` plugin installed with ingestd).

It starts an in-process daemon (the real Quart app, a temporary data dir,
your plugins registered) and uploads bytes to it through the HTTP API:
``job = await d.upload(data, "x.jsonl")``. Unit tests of a plugin without a
daemon use `ingestd.plugins.testing.run_plugins`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.config import load_config
from ..http.app import create_app, load_plugins

# -- an in-process daemon ------------------------------------------------------


class InProcessDaemon:
    """The real daemon app (Quart test client, no sockets) over a temp data dir.

    ``async with InProcessDaemon(tmp_path, plugins={"mine": MyPlugin()}) as d:
    job = await d.upload(b"...", "train.jsonl")``
    """

    def __init__(
        self,
        data_dir: Any,
        *,
        plugins: Mapping[str, object] | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        enabled: list[str] | None = None,
        on_error: str = "reject",
    ) -> None:
        self.data_dir = data_dir
        self.plugins = dict(plugins or {})
        self.tables = {k: dict(v) for k, v in (config or {}).items()}
        self.enabled = enabled
        self.on_error = on_error
        self.client: Any = None
        self._test_app: Any = None

    async def __aenter__(self) -> InProcessDaemon:
        env = {
            "INGESTD_STORAGE_DATA_DIR": str(self.data_dir),
            "INGESTD_STORAGE_DURABILITY": "none",
            "INGESTD_PLUGINS_AUTOLOAD": "false",
            "INGESTD_PLUGINS_ON_ERROR": self.on_error,
        }
        if self.enabled is not None:
            env["INGESTD_PLUGINS_ENABLED"] = ",".join([*self.enabled, *self.plugins])
        config = load_config(None, environ=env)
        config.plugin_tables.update(self.tables)
        app = create_app(config, plugins=load_plugins(config, extra=self.plugins))
        self._test_app = app.test_app()
        self.client = (await self._test_app.__aenter__()).test_client()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._test_app.__aexit__(*exc)

    async def upload(
        self, data: bytes, filename: str, metadata: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Upload through ``/v1``, wait for processing; returns the job with its ``file``."""
        body = {"filename": filename, "size": len(data), "metadata": dict(metadata or {})}
        r = await self.client.post("/v1/uploads", json=body)
        created = await r.get_json()
        assert r.status_code == 201, created
        size = created["chunk_size"]
        for i in created["missing"]:
            piece = data[i * size : (i + 1) * size]
            r = await self.client.put(f"/v1/uploads/{created['id']}/chunks/{i}", data=piece)
            assert r.status_code == 200, await r.get_data()
        r = await self.client.post(f"/v1/uploads/{created['id']}/complete")
        job_id = (await r.get_json())["job_id"]
        job = await (await self.client.get(f"/v1/jobs/{job_id}?wait=60")).get_json()
        job["file"] = await (await self.client.get(f"/v1/files/{job['file_id']}")).get_json()
        return job


try:
    import pytest
except ImportError:  # pragma: no cover - only needed as a pytest plugin
    pytest = None

if pytest is not None:

    @pytest.fixture
    def ingestd_daemon(tmp_path):
        """Factory: ``async with ingestd_daemon(plugins={...}, config={...}) as d``."""

        def make(**kwargs: Any) -> InProcessDaemon:
            return InProcessDaemon(tmp_path / "ingestd-data", **kwargs)

        return make

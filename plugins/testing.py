"""Testing helpers for plugin authors; also a pytest plugin (``pytest11``).

Two levels:

- ``run_plugins(data, filename, plugins={...})`` runs the processing
  pipeline in-process over bytes, with exactly the plugins you name (plus
  the built-in ``detect`` unless you say otherwise), and returns the
  ``Outcome``: no daemon, no HTTP. Use it for unit tests of a plugin.
- The ``ingestd_daemon`` fixture starts an in-process daemon (the real Quart
  app, a temporary data dir, your plugins registered) and uploads bytes to
  it through the HTTP API: ``ingestd_daemon.upload(data, "x.jsonl")``.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Mapping
from typing import Any

import blake3

from .manager import PluginSettings, build_plugins
from .processing import Processing
from .types import FileFacts, OutboxMessage, Outcome


class MemoryOutbox:
    """An outbox that keeps messages in a list (for tests): nothing is delivered."""

    def __init__(self, plugin: str, messages: list[OutboxMessage]) -> None:
        self.plugin = plugin
        self.messages = messages

    def enqueue(self, payload: Mapping[str, Any], *, key: str | None = None) -> str:
        message_id = key or f"msg_{len(self.messages)}"
        if all(m.id != message_id for m in self.messages):
            self.messages.append(OutboxMessage(message_id, self.plugin, payload, 1, time.time()))
        return message_id


class MemoryFiles:
    """A FileLookup over a dict of file id → BLAKE3 (for tests)."""

    def __init__(self, files: Mapping[str, str] | None = None) -> None:
        self.files = dict(files or {})

    def by_blake3(self, digest: str) -> list[str]:
        return [file_id for file_id, b3 in self.files.items() if b3 == digest]

    def exists(self, file_id: str) -> bool:
        return file_id in self.files


def facts_for(data: bytes, filename: str, metadata: Mapping[str, Any] | None = None) -> FileFacts:
    """FileFacts as the store would record them for `data`."""
    return FileFacts(
        file_id="f" * 32,
        upload_id="u" * 32,
        tenant="default",
        filename=filename,
        size=len(data),
        blake3=blake3.blake3(data).hexdigest(),
        sha256=hashlib.sha256(data).hexdigest(),
        created=time.time(),
        declared_metadata=dict(metadata or {}),
    )


async def run_plugins(
    data: bytes,
    filename: str,
    *,
    plugins: Mapping[str, object] | None = None,
    builtins: Mapping[str, str] | None = None,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
    on_error: str = "reject",
    messages: list[OutboxMessage] | None = None,
    existing_files: Mapping[str, str] | None = None,
) -> Outcome:
    """Process `data` as an uploaded file named `filename`; return the outcome.

    `plugins`: name → plugin object or module, registered in addition to
    `builtins` (default: only the built-in ``detect``; pass ``{}`` for none,
    or ``ingestd.plugins.BUILTINS`` for all). `config`: ``[plugins.<name>]``
    tables. `messages`: a list that collects what plugins enqueue in their
    outbox. `existing_files`: file id → BLAKE3 of files "already stored".
    Entry-point plugins are not loaded.
    """
    from .manager import BUILTINS

    chosen = {"detect": BUILTINS["detect"]} if builtins is None else dict(builtins)
    settings = PluginSettings(
        timeout=timeout, on_error=on_error, autoload=False, tables=dict(config or {})
    )
    manager = build_plugins(settings, extra=plugins or {}, builtins=chosen)
    collected = [] if messages is None else messages
    run = Processing(
        manager,
        facts_for(data, filename, metadata),
        lambda: io.BytesIO(data),
        outbox_for=lambda plugin: MemoryOutbox(plugin, collected),
        files=MemoryFiles(existing_files),
    )
    return await run.run()


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
        # Test tooling sits on top of everything, so this one module of
        # ingestd.plugins reaches up into the daemon, and only when used.
        from ingestd.daemon.app import create_app, load_plugins
        from ingestd.daemon.config import load_config

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

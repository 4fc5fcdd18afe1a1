"""Testing helpers for plugin authors, without a daemon.

``run_plugins(data, filename, plugins={...})`` runs the processing pipeline
in-process over bytes, with exactly the plugins you name (plus the built-in
``detect`` unless you say otherwise), and returns the ``Outcome``: no
daemon, no HTTP. Use it for unit tests of a plugin. Tests through the real
app use the ``ingestd_daemon`` fixture of `ingestd.daemon.testing`.
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

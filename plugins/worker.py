"""The deciding stages of processing, run in a child process.

Validators and scanners are CPU-bound Python: in the daemon's process they
would hold the GIL for most of a job and starve the event loop that serves
uploads. So, by default, the daemon runs detect → validate → scan → describe
→ lineage for each job in a fresh ``python -m ingestd.plugins.worker``
process: it reads a request (MessagePack, which keeps binary metadata as
bytes) on stdin, builds the same plugin manager from the same settings, reads
the file from the chunk store and the index (read-only), and writes what it
found (MessagePack) on stdout. The daemon records
the verdict and runs notify/pipeline itself. What plugins queue in their
outbox during these stages is handed back and queued by the daemon.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import trio
from ingestd.cas import Files, FileState, ManifestReader, open_chunk_store, open_index

from .manager import PluginSettings, build_plugins
from .processing import Processing
from .types import FileFacts

READ_BUFFER = 1 << 20
NICENESS = 10


def make_request(
    settings: PluginSettings,
    facts: FileFacts,
    entries: list[tuple[str, int]],
    data_dir: str,
    chunk_store: Mapping[str, Any] | None = None,
    index: Mapping[str, Any] | None = None,
) -> bytes:
    facts_map = dataclasses.asdict(facts) | {"declared_metadata": dict(facts.declared_metadata)}
    return msgspec.msgpack.encode(
        {
            "settings": dataclasses.asdict(settings) | {"tables": dict(settings.tables)},
            "facts": facts_map,
            "entries": entries,
            "data_dir": data_dir,
            "chunk_store": dict(chunk_store or {}),
            "index": dict(index or {}),
        }
    )


def read_answer(raw: bytes) -> dict[str, Any]:
    return msgspec.msgpack.decode(raw)


class IndexFiles:
    """`FileLookup` over the daemon's index, opened read-only."""

    def __init__(self, data_dir: Path, index: Mapping[str, Any], tenant: str) -> None:
        self._index = open_index(data_dir, **index, readonly=True)
        self._files = Files(self._index, refs=None, sessions=None)
        self._tenant = tenant

    def by_blake3(self, digest: str) -> list[str]:
        with self._index.reader() as txn:
            return self._files.by_blake3(txn, digest, self._tenant)

    def exists(self, file_id: str) -> bool:
        with self._index.reader() as txn:
            file = self._files.find(txn, file_id)
        return file is not None and file.tenant == self._tenant and file.state != FileState.REJECTED

    def close(self) -> None:
        self._index.close()


class CollectingOutbox:
    def __init__(self, plugin: str, messages: list[dict[str, Any]]) -> None:
        self._plugin = plugin
        self._messages = messages

    def enqueue(self, payload: Mapping[str, Any], *, key: str | None = None) -> str:
        self._messages.append({"plugin": self._plugin, "payload": dict(payload), "key": key})
        return key or f"pending-{len(self._messages)}"


async def decide(request: dict[str, Any]) -> dict[str, Any]:
    settings = PluginSettings(**request["settings"])
    plugins = build_plugins(settings)
    facts = FileFacts(**request["facts"])
    data_dir = Path(request["data_dir"])
    chunks = open_chunk_store(data_dir, **request["chunk_store"], readonly=True)
    entries = [(h, n) for h, n in request["entries"]]
    messages: list[dict[str, Any]] = []
    files = IndexFiles(data_dir, request["index"], facts.tenant)
    try:
        run = Processing(
            plugins,
            facts,
            lambda: io.BufferedReader(ManifestReader(chunks, entries), READ_BUFFER),
            outbox_for=lambda plugin: CollectingOutbox(plugin, messages),
            files=files,
        )
        await run.decide()
    finally:
        files.close()
        chunks.close()
    return {"state": run.export_state(), "messages": messages}


# A LogRecord's own attributes: what is not one of them is a field of the line.
RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONLines(logging.Formatter):
    """A record as one JSON object: level, logger, event, its `extra=` fields
    and any traceback (as "exception")."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update((k, v) for k, v in vars(record).items() if k not in RECORD_FIELDS)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def main() -> int:
    # Background work: uploads in the daemon come first when the CPU is short.
    os.nice(NICENESS)
    # JSON lines, which the daemon logs again as its own records.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    request = msgspec.msgpack.decode(sys.stdin.buffer.read())
    answer = trio.run(decide, request)
    sys.stdout.buffer.write(msgspec.msgpack.encode(answer, enc_hook=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

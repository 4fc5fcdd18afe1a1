"""The objects hooks receive and return. Plugin authors import these."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, Protocol


@dataclass(frozen=True)
class UploadRequest:
    """An upload a client asks to start, before any bytes are accepted."""

    tenant: str
    filename: str
    size: int
    # Which API asked: "seed", "v1" or "tus".
    api: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    sha256: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Returned by `ingestd_policy` to refuse an upload; becomes a 4xx problem."""

    reason: str
    status: int = 403
    code: str = "refused_by_policy"

    def __post_init__(self) -> None:
        if not 400 <= self.status < 500:
            raise ValueError("a refusal is a client error: status must be 4xx")


@dataclass(frozen=True)
class FileFacts:
    """What the store knows about a completed upload. Never client-claimed values
    except `filename` and `declared_metadata`, which are the client's words."""

    file_id: str
    upload_id: str
    tenant: str
    filename: str
    size: int
    blake3: str
    sha256: str | None
    created: float
    declared_metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Detection:
    """Returned by `ingestd_detect`: what the file is."""

    # "dataset", "model" or "other", as in the original API's fileType.
    kind: Literal["dataset", "model", "other"]
    # Precise format: "jsonl", "csv", "parquet", "safetensors", "gguf",
    # "pickle", "pytorch-zip", "onnx", "binary", ...
    format: str
    mime_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Verdict:
    """Returned by `ingestd_validate` and `ingestd_scan`.

    `ok=False` rejects the file; `reason` says why in words the uploader can
    act on. `details` is JSON-serialisable and lands in the job's results.
    """

    ok: bool
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def accept(cls, **details: Any) -> Verdict:
        return cls(True, "", details)

    @classmethod
    def reject(cls, reason: str, **details: Any) -> Verdict:
        return cls(False, reason, details)


@dataclass(frozen=True)
class Outcome:
    """The decision on a file, given to `ingestd_notify` and `ingestd_pipeline`."""

    accepted: bool
    reason: str
    # Per plugin name, per stage: what each plugin returned (or its error).
    results: Mapping[str, Mapping[str, Any]]
    detection: Detection | None
    metadata: Mapping[str, Any]
    parents: tuple[str, ...]


@dataclass(frozen=True)
class OutboxMessage:
    """A message a plugin queued with ``ctx.outbox.enqueue``, handed back to that
    plugin's ``ingestd_deliver`` until delivery succeeds."""

    id: str
    plugin: str
    payload: Mapping[str, Any]
    attempt: int
    created: float


class DeliveryFailed(Exception):
    """Raised by ``ingestd_deliver`` when retrying cannot help (e.g. 410 Gone):
    the message is kept as dead instead of being retried."""


class Outbox(Protocol):
    """Durable at-least-once delivery: what a plugin enqueues survives restarts
    and is retried with backoff until the plugin's ``ingestd_deliver`` succeeds."""

    def enqueue(self, payload: Mapping[str, Any], *, key: str | None = None) -> str:
        """Queue `payload` (JSON-serialisable) for delivery; returns the message id.

        The same `key` (e.g. event id + destination) queued twice by the same
        plugin is one message, so a re-run of processing after a crash does not
        duplicate deliveries. Keys are hashed: any length, never logged."""
        ...


class FileLookup(Protocol):
    """Read-only queries over the tenant's files, for plugins."""

    def by_blake3(self, digest: str) -> list[str]:
        """Ids of the tenant's files with exactly this content (oldest first)."""
        ...

    def exists(self, file_id: str) -> bool:
        """Whether the tenant has a file with this id (accepted or processing)."""
        ...


@dataclass
class HookContext:
    """What a processing hook gets: facts, its own config, a reader, earlier results."""

    facts: FileFacts
    # The plugin's `[plugins.<name>]` table, parsed by its `ingestd_config_schema`
    # type when it declares one, else the raw dict.
    config: Any
    plugin_name: str
    # Filled in as the pipeline goes: the detection, and every result so far,
    # by plugin name then stage. A Verdict is stored as {"ok", "reason",
    # **details}; a dict or list answer as is; a failed call as {"error": ...}.
    detection: Detection | None
    results: Mapping[str, Mapping[str, Any]]
    log: logging.Logger
    # Why the file is rejected so far ("plugin: reason"); later stages still
    # run after a rejection, so that every finding is reported.
    rejections: tuple[str, ...]
    # Durable queue for deliveries (see ``ingestd_deliver``).
    outbox: Outbox
    # Queries over the tenant's other files.
    files: FileLookup
    _open: Callable[[], BinaryIO] = field(repr=False, default=None)  # type: ignore[assignment]

    def open(self) -> BinaryIO:
        """A new seekable, read-only binary stream over the file's content.

        Streams from the chunk store; nothing is materialised. Use it in a
        `with` block. Each call returns an independent stream.
        """
        return self._open()

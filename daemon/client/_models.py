"""Typed answers of the `/v1` API as the Python client returns them, and the
verdict in words ("accepted: 1,000 rows, 3 columns; pii: 139 emails").

The structs name the fields the client relies on; fields the server adds
later are ignored rather than refused, so an older client keeps working.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec


class ChunkSummary(msgspec.Struct):
    count: int
    min_size: int
    max_size: int


class FileInfo(msgspec.Struct, kw_only=True):
    """`GET /v1/files/{id}`."""

    id: str
    filename: str
    size: int
    blake3: str
    sha256: str | None = None
    created: float = 0.0
    metadata: dict[str, Any] = {}
    upload_id: str = ""
    path: str | None = None
    # "processing", "accepted" or "rejected" (with `reason`).
    state: str = "accepted"
    reason: str | None = None
    detection: dict[str, Any] | None = None
    described: dict[str, Any] = {}
    parents: list[str] = []
    chunks: ChunkSummary | None = None
    job_id: str | None = None


class UploadStatus(msgspec.Struct, kw_only=True):
    """`GET /v1/uploads/{id}`."""

    id: str
    filename: str = ""
    # open, completing, completed, rejected, cancelled, expired
    state: str
    size: int
    total_chunks: int
    received_chunks: int = 0
    received_bytes: int = 0
    missing: list[int] = []
    expires: float = 0.0
    job_id: str | None = None
    file_id: str | None = None
    reason: str | None = None


class JobInfo(msgspec.Struct, kw_only=True):
    """`GET /v1/jobs/{id}`: `results` holds every plugin's answer per stage."""

    id: str
    upload_id: str = ""
    file_id: str | None = None
    # queued, running, succeeded, failed
    state: str
    error: str | None = None
    results: dict[str, Any] = {}
    # "accepted" or "rejected" once processing has decided.
    verdict: str | None = None
    timings: dict[str, Any] = {}
    created: float = 0.0
    updated: float = 0.0
    reused_from: str | None = None


class _FileList(msgspec.Struct):
    """`GET /v1/files`: one page, and the cursor of the next."""

    files: list[FileInfo]
    next: str | None = None


@dataclass
class Status:
    """What `Client.status(id)` found for an upload id or a file id."""

    kind: str  # "file" or "upload"
    state: str
    file: FileInfo | None = None
    upload: UploadStatus | None = None
    job: JobInfo | None = None
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.state,
            "summary": self.summary,
            "file": msgspec.to_builtins(self.file),
            "upload": msgspec.to_builtins(self.upload),
            "job": msgspec.to_builtins(self.job),
        }


@dataclass
class UploadResult:
    """One file's upload: what was sent and what the server's plugins decided."""

    file_id: str
    upload_id: str
    filename: str
    bytes_total: int
    bytes_sent: int  # bytes of the chunks this call sent (not those the server had)
    chunks_total: int
    chunks_sent: int
    chunks_skipped: int  # chunks the server already had: dedup, or sent by an earlier run
    seconds: float
    blake3: str
    resumed: bool
    # Bytes of the chunks the server already had (dedup, or an earlier run's).
    bytes_on_server: int = 0
    # True: the tenant had this very name and content accepted; nothing was sent.
    already_uploaded: bool = False
    job_id: str | None = None
    state: str = "accepted"  # of the file: accepted, rejected (or processing)
    verdict: str | None = None
    reason: str | None = None
    summary: str = ""  # the verdict and findings in words
    findings: dict[str, Any] = field(default_factory=dict)  # each plugin's answers
    path: str = ""  # the local file

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Planned:
    """What `Client.plan` (a dry run) says an upload of one file would do."""

    path: str
    filename: str
    size: int
    chunks: int
    blake3: str
    # "already uploaded" (same name and content accepted: nothing to send),
    # "content on server" (the bytes are there under another name: nothing to
    # send), "resumable" (an earlier run's upload holds `bytes_on_server`), "new".
    action: str
    bytes_on_server: int
    bytes_to_send: int  # at most this many (chunks shared with other files are skipped)
    file_id: str | None = None  # the file that would be answered, if any

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the verdict in words --------------------------------------------------

_PII_NAMES = {
    "email": ("email", "emails"),
    "credit_card": ("card number", "card numbers"),
    "iban": ("IBAN", "IBANs"),
    "ipv4": ("IPv4 address", "IPv4 addresses"),
    "ipv6": ("IPv6 address", "IPv6 addresses"),
    "phone": ("phone number", "phone numbers"),
    "ssn": ("SSN", "SSNs"),
}


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def findings_in_words(results: dict[str, Any], described: dict[str, Any] | None = None) -> str:
    """What the plugins found, as the web page says it: rows and columns,
    tensors and parameters, PII counts, a virus."""
    described = described or {}
    parts: list[str] = []

    def answer(plugin: str, stage: str) -> dict[str, Any]:
        value = (results.get(plugin) or {}).get(stage)
        return value if isinstance(value, dict) else {}

    data = described.get("datasets") or answer("datasets", "describe")
    if isinstance(data, dict) and isinstance(data.get("rows"), int):
        text = _count(data["rows"], "row", "rows")
        if isinstance(data.get("columns"), list):
            text += ", " + _count(len(data["columns"]), "column", "columns")
        parts.append(text)
    model = described.get("models") or answer("models", "describe")
    if isinstance(model, dict) and isinstance(model.get("tensors"), int):
        text = _count(model["tensors"], "tensor", "tensors")
        if isinstance(model.get("parameters"), int):
            text += ", " + _count(model["parameters"], "parameter", "parameters")
        parts.append(text)
    found = answer("pii", "scan").get("found")
    if isinstance(found, dict):
        hits = [
            _count(n, *_PII_NAMES.get(kind, (kind, kind)))
            for kind, n in found.items()
            if isinstance(n, int) and n > 0
        ]
        if hits:
            parts.append("pii: " + ", ".join(hits))
    virus = answer("clamav", "scan")
    if virus.get("ok") is False:
        parts.append(f"clamav: {virus.get('reason')}")
    return "; ".join(parts)


def rejection_reason(results: dict[str, Any]) -> str:
    """ "plugin: reason" of the first plugin whose answer refused the file."""
    for plugin, stages in results.items():
        for out in (stages or {}).values():
            if isinstance(out, dict) and out.get("ok") is False:
                return f"{plugin}: {out.get('reason')}"
    return ""


def verdict_in_words(
    state: str,
    reason: str | None,
    results: dict[str, Any] | None = None,
    described: dict[str, Any] | None = None,
) -> str:
    """ "accepted: 1,000 rows, 3 columns; pii: 139 emails" or "rejected: datasets: line 3: …"."""
    results = results or {}
    if state == "rejected":
        why = reason or rejection_reason(results) or "no reason given"
        return f"rejected: {why.removeprefix('rejected: ')}"
    found = findings_in_words(results, described)
    return f"{state}: {found}" if found else state

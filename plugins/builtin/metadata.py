"""Built-in plugin "metadata": a file's facts, declared metadata and lineage.

``ingestd_describe`` records what the store knows about the file (checksums,
size, name, format, tenant, upload time) next to what the client declared.
``ingestd_lineage`` links the file to the parents the client declared in its
metadata (``"parents": ["<file id>", ...]``) and to earlier files of the same
tenant with identical content (a re-upload), and ``describe`` says which
link is which.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ingestd.plugins import HookContext, hookimpl

# Declared-metadata keys that steer processing rather than describe the file;
# they are consumed here and not repeated under "declared".
RESERVED_KEYS = frozenset({"parents"})

# File ids are opaque to plugins, but always short and URL-safe; anything
# else cannot name a file and is recorded as invalid instead of linked.
_FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Invalid values are echoed back to the uploader, truncated: they are client input.
_MAX_ECHO = 80


@dataclass
class Lineage:
    declared: list[str] = field(default_factory=list)
    same_content_as: list[str] = field(default_factory=list)
    # {"value": <truncated repr>, "error": <why>} per rejected declared parent.
    invalid: list[dict[str, str]] = field(default_factory=list)

    def parents(self) -> list[str]:
        return list(dict.fromkeys([*self.declared, *self.same_content_as]))


@hookimpl
def ingestd_describe(ctx: HookContext) -> dict[str, Any]:
    facts = ctx.facts
    detection = ctx.detection
    return {
        "file_id": facts.file_id,
        "upload_id": facts.upload_id,
        "filename": facts.filename,
        "size": facts.size,
        "checksums": {"blake3": facts.blake3, "sha256": facts.sha256},
        "format": asdict(detection) if detection is not None else None,
        "tenant": facts.tenant,
        "uploaded_at": iso8601(facts.created),
        "declared": declared_metadata(facts.declared_metadata),
        "lineage": asdict(find_lineage(ctx)),
    }


@hookimpl
def ingestd_lineage(ctx: HookContext) -> list[str] | None:
    return find_lineage(ctx).parents() or None


def find_lineage(ctx: HookContext) -> Lineage:
    """The declared parents (validated) and the tenant's files with the same content."""
    lineage = Lineage()
    own_id = ctx.facts.file_id
    raw = ctx.facts.declared_metadata.get("parents")
    if raw is None:
        entries: list[Any] = []
    elif isinstance(raw, list):
        entries = raw
    else:
        lineage.invalid.append(_invalid(raw, "parents must be a list of file ids"))
        entries = []
    for entry in entries:
        if not isinstance(entry, str):
            lineage.invalid.append(_invalid(entry, "not a string"))
        elif not _FILE_ID.fullmatch(entry):
            lineage.invalid.append(_invalid(entry, "not a file id"))
        elif entry == own_id:
            lineage.invalid.append(_invalid(entry, "a file cannot be its own parent"))
        elif entry not in lineage.declared:
            lineage.declared.append(entry)
    # The lookup is scoped to the uploader's tenant, so this never links
    # (or reveals) another tenant's file.
    for file_id in ctx.files.by_blake3(ctx.facts.blake3):
        if file_id != own_id and file_id not in lineage.same_content_as:
            lineage.same_content_as.append(file_id)
    return lineage


def declared_metadata(declared: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in declared.items() if key not in RESERVED_KEYS}


def iso8601(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _invalid(value: Any, error: str) -> dict[str, str]:
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _MAX_ECHO:
        text = text[:_MAX_ECHO] + "…"
    return {"value": text, "error": error}

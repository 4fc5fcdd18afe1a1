"""The index's schema in PostgreSQL and its versioned migrations.

The index keeps one ordered key/value model on both engines (so one code
path and one conformance suite serve LMDB and PostgreSQL): each kind of
record is a table of its own, `key bytea PRIMARY KEY, value bytea` (the
record as ingestd reads it). For the operator, record tables also carry the
record as `jsonb` (`record`, written beside `value`) and its main fields as
generated columns, so that `SELECT id, tenant, filename, state FROM
ingestd.files` answers without ingestd. Those columns are for reading:
ingestd reads only `value`.

A migration is applied once, in order, under an advisory lock (several
daemons may start together); `schema_version` records each one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A schema name is put into SQL text: only plain identifiers.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Tables whose values are records (MessagePack maps) and get a `record` mirror.
RECORD_TABLES = frozenset(
    {"chunks", "sessions", "files", "jobs", "outbox", "streams", "tenants", "tokens"}
)


# A readable column never refuses a write: any key or value the store may
# write (or a test, or a later version) gives the column NULL, not an error.


def _when(guard: str, expr: str) -> str:
    return f"CASE WHEN {guard} THEN {expr} END"


def _number(field: str) -> str:
    return f"record->>'{field}'"


def _ts(field: str) -> str:
    value = f"({_number(field)})::double precision"
    guard = f"jsonb_typeof(record->'{field}') = 'number' AND abs({value}) < 1e11"
    return _when(guard, f"to_timestamp({value})")


def _text(field: str) -> str:
    return f"record->>'{field}'"


def _int(field: str) -> str:
    return _when(f"jsonb_typeof(record->'{field}') = 'number'", f"({_number(field)})::numeric")


def _bool(field: str) -> str:
    return _when(f"jsonb_typeof(record->'{field}') = 'boolean'", f"({_text(field)})::boolean")


def _be_int(column: str, start: str, size: int) -> str:
    """The big-endian unsigned integer of `size` bytes of `column` from `start` (1-based)."""
    return f"('x' || encode(substring({column} from {start} for {size}), 'hex'))::bit({size * 8})"


# An upload's part key: its id, "/", the chunk index as 4 big-endian bytes.
_PART_KEY = "length(key) >= 5"
_PART_UPLOAD = _when(_PART_KEY, "encode(substring(key from 1 for length(key) - 5), 'escape')")
_PART_INDEX = _when(_PART_KEY, _be_int("key", "length(key) - 3", 4) + "::bigint")
# A manifest entry: the 32-byte BLAKE3, then the length as 8 big-endian bytes.
_ENTRY = "length(value) = 40"
_ENTRY_HASH = _when(_ENTRY, "encode(substring(value from 1 for 32), 'hex')")
_ENTRY_LENGTH = _when(_ENTRY, _be_int("value", "33", 8) + "::bigint")
# parts (attached) and declared (announced): upload, index -> chunk, length.
_PART_COLUMNS = [
    ("upload_id", "text", _PART_UPLOAD),
    ("chunk_index", "bigint", _PART_INDEX),
    ("blake3", "text", _ENTRY_HASH),
    ("length", "bigint", _ENTRY_LENGTH),
]
# A tenant's holding: tenant name, NUL, 32-byte BLAKE3 -> uses (4 bytes), size (8).
_HOLDING_KEY = "length(key) >= 33"

# table -> readable columns (name, type, expression over key/value/record).
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "meta": [("name", "text", "encode(key, 'escape')")],
    "chunks": [
        ("blake3", "text", "encode(key, 'hex')"),
        ("size", "numeric", _int("size")),
        ("refs", "numeric", _int("refs")),
        ("created", "timestamptz", _ts("created")),
        ("released", "timestamptz", _ts("released")),
    ],
    "sessions": [
        ("id", "text", _text("id")),
        ("tenant", "text", _text("tenant")),
        ("filename", "text", _text("filename")),
        ("size", "numeric", _int("size")),
        ("state", "text", _text("state")),
        ("received_bytes", "numeric", _int("received_bytes")),
        ("created", "timestamptz", _ts("created")),
        ("updated", "timestamptz", _ts("updated")),
        ("expires", "timestamptz", _ts("expires")),
        ("file_id", "text", _text("file_id")),
        ("tus", "boolean", _bool("stream")),
    ],
    "parts": _PART_COLUMNS,
    "declared": _PART_COLUMNS,
    "files": [
        ("id", "text", _text("id")),
        ("tenant", "text", _text("tenant")),
        ("filename", "text", _text("filename")),
        ("size", "numeric", _int("size")),
        ("blake3", "text", _text("blake3")),
        ("state", "text", _text("state")),
        ("created", "timestamptz", _ts("created")),
        ("upload_id", "text", _text("session_id")),
        ("path", "text", _text("path")),
    ],
    "file_hashes": [("blake3", "text", "encode(substring(key from 1 for 32), 'hex')")],
    "manifests": [
        ("file_id", "text", "encode(key, 'escape')"),
        ("chunks", "bigint", "length(value) / 40"),
    ],
    "manifest_files": [("file_id", "text", "encode(substring(key from 33), 'escape')")],
    "jobs": [
        ("id", "text", _text("id")),
        ("tenant", "text", _text("tenant")),
        ("file_id", "text", _text("file_id")),
        ("upload_id", "text", _text("session_id")),
        ("state", "text", _text("state")),
        ("verdict", "text", _text("verdict")),
        ("error", "text", _text("error")),
        ("created", "timestamptz", _ts("created")),
        ("updated", "timestamptz", _ts("updated")),
    ],
    "open_jobs": [("job_id", "text", "encode(key, 'escape')")],
    "decisions": [("job_id", "text", "encode(value, 'escape')")],
    "copies_due": [("file_id", "text", "encode(key, 'escape')")],
    "outbox": [
        ("id", "text", _text("id")),
        ("plugin", "text", _text("plugin")),
        ("state", "text", _text("state")),
        ("attempt", "numeric", _int("attempt")),
        ("next_attempt", "timestamptz", _ts("next_attempt")),
        ("last_error", "text", _text("last_error")),
    ],
    "streams": [
        ("id", "text", _text("id")),
        ("tenant", "text", _text("tenant")),
        ("kind", "text", _text("kind")),
        ("length", "numeric", _int("length")),
    ],
    "tenant_chunks": [
        (
            "tenant",
            "text",
            _when(_HOLDING_KEY, "encode(substring(key from 1 for length(key) - 33), 'escape')"),
        ),
        (
            "blake3",
            "text",
            _when(_HOLDING_KEY, "encode(substring(key from length(key) - 31), 'hex')"),
        ),
        ("uses", "bigint", _when("length(value) = 12", _be_int("value", "1", 4) + "::bigint")),
    ],
    "tenants": [
        ("tenant", "text", "encode(key, 'escape')"),
        ("files", "numeric", _int("files")),
        ("logical_bytes", "numeric", _int("logical_bytes")),
        ("physical_bytes", "numeric", _int("physical_bytes")),
        ("open_uploads", "numeric", _int("open_uploads")),
    ],
    "tokens": [
        ("id", "text", _text("id")),
        ("name", "text", _text("name")),
        ("tenant", "text", _text("tenant")),
        ("scopes", "jsonb", "record->'scopes'"),
        ("created", "timestamptz", _ts("created")),
        ("expires", "timestamptz", _ts("expires")),
        ("last_used", "timestamptz", _ts("last_used")),
    ],
}


# The pack index of the chunk store (`cas.packindex`), in the same schema
# when the index is in PostgreSQL: chunk -> (pack or object, offset, length,
# written) and pack -> (live chunks, live bytes); 16-byte ids, big-endian.
PACK_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "pack_locations": [
        ("blake3", "text", "encode(key, 'hex')"),
        (
            "pack",
            "text",
            _when("length(value) = 40", "encode(substring(value from 1 for 16), 'hex')"),
        ),
        (
            "pack_offset",
            "bigint",
            _when("length(value) = 40", _be_int("value", "17", 8) + "::bigint"),
        ),
        ("length", "bigint", _when("length(value) = 40", _be_int("value", "25", 8) + "::bigint")),
    ],
    "pack_uses": [
        ("pack", "text", "encode(key, 'hex')"),
        (
            "live_chunks",
            "bigint",
            _when("length(value) = 16", _be_int("value", "1", 8) + "::bigint"),
        ),
        (
            "live_bytes",
            "bigint",
            _when("length(value) = 16", _be_int("value", "9", 8) + "::bigint"),
        ),
    ],
}


def _tables(schema: str, columns: dict[str, list[tuple[str, str, str]]]) -> list[str]:
    out = []
    for table, readable in columns.items():
        lines = ["key bytea PRIMARY KEY", "value bytea NOT NULL"]
        if table in RECORD_TABLES:
            lines.append("record jsonb")
        lines += [
            f"{name} {kind} GENERATED ALWAYS AS ({expr}) STORED" for name, kind, expr in readable
        ]
        out.append(f'CREATE TABLE "{schema}".{table} (\n  ' + ",\n  ".join(lines) + "\n)")
    return out


def _v1(schema: str) -> list[str]:
    return [
        f'CREATE SCHEMA IF NOT EXISTS "{schema}"',
        *_tables(schema, COLUMNS),
        f'CREATE INDEX ON "{schema}".sessions (tenant, state)',
        # Not on filename: a name of up to 4096 bytes could pass B-tree's row limit.
        f'CREATE INDEX ON "{schema}".files (tenant, created)',
        f'CREATE INDEX ON "{schema}".jobs (state)',
    ]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: list[str]


def migrations(schema: str) -> list[Migration]:
    """Every migration of the schema, oldest first; never edit one that shipped."""
    return [
        Migration(1, "the index's tables, with readable columns", _v1(schema)),
        Migration(2, "the chunk store's pack index", _tables(schema, PACK_COLUMNS)),
    ]


LATEST = 2

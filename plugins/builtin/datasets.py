"""Built-in dataset checks: JSON Lines, CSV/TSV and Parquet.

``ingestd_validate`` streams the whole file once and rejects it at the first
problem, naming the line (or row); the facts it gathers on the way (rows,
columns) are what ``ingestd_describe`` reports. Optional JSON Schemas, per
filename pattern, apply to JSONL records::

    [plugins.datasets]
    max_line_bytes = 67108864
    [plugins.datasets.schemas]
    "train-*.jsonl" = { type = "object", required = ["text"] }
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
from collections import deque
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from typing import Any, BinaryIO

import fastjsonschema
import msgspec
from ingestd.plugins import Verdict, hookimpl

MiB = 1024 * 1024
FORMATS = ("jsonl", "csv", "tsv", "parquet")


class DatasetsConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[plugins.datasets]``."""

    # Glob pattern on the filename -> JSON Schema for every JSONL record; the
    # first matching pattern applies.
    schemas: dict[str, dict[str, Any]] = {}
    # A longer line (JSONL) or field (CSV) rejects the file: it bounds memory.
    max_line_bytes: int = 64 * MiB
    # Top-level keys are collected from this many leading JSONL records.
    sample_rows: int = 1000
    # How much of a CSV file the dialect and header sniffer looks at.
    csv_sniff_bytes: int = 64 * 1024
    # True/False to say whether CSV files have a header row; None to sniff.
    csv_header: bool | None = None
    # Decode every Parquet page (catches corrupt data, costs a full read);
    # False checks only the footer.
    parquet_read_data: bool = True
    # Bytes read from the file at a time.
    block_bytes: int = 8 * MiB

    def __post_init__(self) -> None:
        if self.max_line_bytes < 1 or self.block_bytes < 1 or self.sample_rows < 0:
            raise ValueError("max_line_bytes and block_bytes must be > 0, sample_rows >= 0")
        # Compile now, so that a broken schema stops the daemon at start with
        # the pattern named, not every upload later.
        for pattern, schema in self.schemas.items():
            try:
                _compiled(json.dumps(schema, sort_keys=True))
            # fastjsonschema raises assorted errors for a malformed schema
            # (AttributeError, re.error, URLError for an unreachable $ref...).
            except Exception as exc:
                message = f"schemas[{pattern!r}] is not a valid JSON Schema: {exc}"
                raise ValueError(message) from None


@hookimpl
def ingestd_config_schema(plugin_name):
    return DatasetsConfig if plugin_name == "datasets" else None


@hookimpl
def ingestd_validate(ctx):
    if ctx.detection is None or ctx.detection.format not in FORMATS:
        return None
    return _validate(ctx)


@hookimpl
def ingestd_describe(ctx):
    if ctx.detection is None or ctx.detection.format not in FORMATS:
        return None
    # Validation already streamed the file and kept the facts: reuse them.
    validated = ctx.results.get(ctx.plugin_name, {}).get("validate")
    if validated is None:
        validated = _jsonable(_validate(ctx))
    if not validated.get("ok") or "skipped" in validated:
        return None
    return {k: v for k, v in validated.items() if k not in ("ok", "reason")}


def _validate(ctx) -> Verdict:
    config: DatasetsConfig = ctx.config
    fmt = ctx.detection.format
    if fmt == "parquet":
        return validate_parquet(ctx.open, config)
    with ctx.open() as raw:
        stream = _buffered(raw)
        if fmt == "jsonl":
            pattern, schema = _schema_for(ctx.facts.filename, config)
            return validate_jsonl(stream, config, schema, pattern)
        return validate_csv(stream, config, tab_hint=fmt == "tsv")


def _jsonable(verdict: Verdict) -> dict[str, Any]:
    return {"ok": verdict.ok, "reason": verdict.reason, **verdict.details}


def _buffered(stream: BinaryIO) -> BinaryIO:
    # ctx.open() may hand back an unbuffered raw stream (one syscall per read).
    if isinstance(stream, io.RawIOBase):
        return io.BufferedReader(stream, buffer_size=MiB)
    return stream


# JSON Lines -----------------------------------------------------------------


class _Object(msgspec.Struct):
    """Decoding into a struct with no fields checks that a line is one JSON
    object and skips its contents without building Python objects: the fast
    path for rows whose keys and values nobody needs."""


_decode_object = msgspec.json.Decoder(_Object).decode
# Keys only: values stay undecoded (and unchecked beyond their syntax).
_decode_keys = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode


def _decode_full(line: bytes) -> dict[str, Any]:
    try:
        return _decode_dict(line)
    except msgspec.ValidationError:
        # msgspec refuses numbers JSON allows but a float cannot hold (1e999);
        # the standard library takes them (as inf).
        value = json.loads(line)
        if isinstance(value, dict):
            return value
        raise


class _BadLine(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@functools.lru_cache(maxsize=64)
def _compiled(schema_json: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(json.loads(schema_json))


def _schema_for(filename: str, config: DatasetsConfig) -> tuple[str | None, Callable | None]:
    for pattern, schema in config.schemas.items():
        if fnmatchcase(filename, pattern):
            return pattern, _compiled(json.dumps(schema, sort_keys=True))
    return None, None


def validate_jsonl(
    stream: BinaryIO,
    config: DatasetsConfig,
    schema: Callable[[Any], Any] | None = None,
    pattern: str | None = None,
) -> Verdict:
    """Every non-empty line must be a JSON object (and match `schema`, if any)."""
    keys: dict[str, None] = {}  # insertion-ordered set
    rows = 0
    try:
        for first_line, lines in _line_batches(stream, config):
            rows += _check_lines(lines, first_line, rows, keys, config, schema)
    except _BadLine as bad:
        details: dict[str, Any] = {"format": "jsonl", "line": bad.line}
        if pattern is not None:
            details["schema"] = pattern
        return Verdict.reject(str(bad), **details)
    facts: dict[str, Any] = {
        "format": "jsonl",
        "rows": rows,
        "columns": list(keys),
        "columns_from_rows": min(rows, config.sample_rows),
    }
    if pattern is not None:
        facts["schema"] = pattern
    return Verdict.accept(**facts)


def _line_batches(stream: BinaryIO, config: DatasetsConfig) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, complete lines), a large block at a time,
    checked to be UTF-8 and no longer than max_line_bytes."""
    tail = b""  # the unfinished last line of the previous block
    next_line = 1
    while True:
        block = stream.read(config.block_bytes)
        if not block:
            break
        data = tail + block if tail else block
        # Splitting the whole block (and popping the partial last line) avoids
        # copying the block's complete part once more.
        lines = data.split(b"\n")
        tail = lines.pop()
        _check_utf8(data, next_line, final=False)
        _check_lengths(lines, tail, len(data), next_line, config)
        if lines:
            yield next_line, lines
            next_line += len(lines)
    if tail:
        _check_utf8(tail, next_line, final=True)
        yield next_line, [tail]


def _check_utf8(data: bytes, first_line: int, final: bool) -> None:
    # The fast decoder skips string contents without checking their encoding,
    # so the whole block is checked here, in one C call. Not final: a block
    # may end inside a multi-byte character.
    try:
        codecs.utf_8_decode(data, "strict", final)
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        raise _BadLine(line, f"invalid UTF-8 ({exc.reason})") from None


def _check_lengths(
    lines: list[bytes], tail: bytes, block_len: int, first_line: int, config: DatasetsConfig
) -> None:
    limit = config.max_line_bytes
    # No line can be longer than the block it came in: skip the scan if so.
    if lines and block_len > limit and max(map(len, lines)) > limit:
        index = next(i for i, line in enumerate(lines) if len(line) > limit)
        raise _BadLine(first_line + index, _too_long(config))
    if len(tail) > limit:
        raise _BadLine(first_line + len(lines), _too_long(config))


def _too_long(config: DatasetsConfig) -> str:
    return f"line longer than max_line_bytes ({config.max_line_bytes} bytes)"


def _check_lines(
    lines: list[bytes],
    first_line: int,
    rows_before: int,
    keys: dict[str, None],
    config: DatasetsConfig,
    schema: Callable[[Any], Any] | None,
) -> int:
    """Check one batch of lines; return how many were rows (non-empty)."""
    if schema is None and rows_before >= config.sample_rows:
        try:
            # Fast path: decode every line in C, keep nothing.
            deque(map(_decode_object, lines), maxlen=0)
            return len(lines)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass  # an empty line, or a bad one: find out below, line by line
    rows = 0
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        rows += 1
        in_sample = rows_before + rows <= config.sample_rows
        try:
            if schema is not None:
                record = _decode_full(line)
            elif in_sample:
                record = _decode_keys(line)
            else:
                _decode_object(line)
                continue
        # ValidationError (valid JSON, wrong type) subclasses DecodeError.
        except (msgspec.ValidationError, ValueError):
            raise _BadLine(first_line + index, _not_an_object(line)) from None
        except msgspec.DecodeError as exc:
            raise _BadLine(first_line + index, f"invalid JSON: {exc}") from None
        if in_sample:
            keys.update(dict.fromkeys(record))
        if schema is not None:
            try:
                schema(record)
            except fastjsonschema.JsonSchemaValueException as exc:
                message = f"does not match the schema: {exc.message}"
                raise _BadLine(first_line + index, message) from None
    return rows


def _not_an_object(line: bytes) -> str:
    """Why a line the decoder refused as an object is not one."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        # msgspec stops at the first character that cannot start an object
        # ("[1, 2" is "an array" to it); the full parse says what is wrong.
        return f"invalid JSON: {exc}"
    return f"expected a JSON object, got {_json_type(value)}"


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


# CSV / TSV ------------------------------------------------------------------


def validate_csv(stream: BinaryIO, config: DatasetsConfig, tab_hint: bool = False) -> Verdict:
    """Same number of fields on every row; the dialect and header are sniffed."""
    fmt = "tsv" if tab_hint else "csv"
    sample = stream.read(config.csv_sniff_bytes)
    at_eof = len(sample) < config.csv_sniff_bytes
    if not at_eof:
        # Sniff complete lines only.
        sample = sample[: sample.rfind(b"\n") + 1] or sample
    text = sample.decode("utf-8-sig", errors="replace")
    dialect = _sniff_dialect(text, tab_hint)
    header = config.csv_header
    if header is None:
        try:
            header = csv.Sniffer().has_header(text) if text.strip() else False
        except csv.Error:
            header = False
    # The csv module's default field limit is 128 KiB, which real datasets
    # exceed; raise it to our own bound (never lower another user's setting).
    csv.field_size_limit(max(csv.field_size_limit(), config.max_line_bytes))

    stream.seek(0)
    reader_text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    # strict: a stray quote is an error rather than data, and an unterminated
    # one (a truncated file) does not swallow the rest of the file as one field.
    reader = csv.reader(reader_text, dialect, strict=True)
    width = None
    columns: list[str] | None = None
    records = 0
    try:
        for row in reader:
            if not row:  # blank line
                continue
            records += 1
            if width is None:
                width = len(row)
                columns = row if header else None
            elif len(row) != width:
                # `row` counts records (a quoted field may span lines), `line`
                # is where this one ends.
                return Verdict.reject(
                    f"line {reader.line_num} has {len(row)} fields, expected {width}",
                    format=fmt,
                    row=records,
                    line=reader.line_num,
                )
    except csv.Error as exc:
        line = reader.line_num
        return Verdict.reject(f"line {line}: {exc}", format=fmt, line=line)
    except UnicodeDecodeError as exc:
        line = reader.line_num + 1
        return Verdict.reject(f"near line {line}: invalid UTF-8 ({exc.reason})", format=fmt)
    finally:
        reader_text.detach()  # the caller's `with` closes the stream
    facts: dict[str, Any] = {
        "format": fmt,
        "rows": records - (1 if header and records else 0),
        "column_count": width or 0,
        "header": bool(header),
        "delimiter": dialect.delimiter,
    }
    if columns is not None:
        facts["columns"] = columns
    return Verdict.accept(**facts)


def _sniff_dialect(text: str, tab_hint: bool) -> type[csv.Dialect] | csv.Dialect:
    fallback = csv.excel_tab if tab_hint else csv.excel
    if not text.strip():
        return fallback
    try:
        dialect = csv.Sniffer().sniff(text, delimiters="\t" if tab_hint else ",\t;|")
    except csv.Error:
        return fallback
    # The sniffer guesses doublequote/escapechar poorly on small samples;
    # RFC 4180 quoting is what nearly every writer produces.
    dialect.doublequote = True
    return dialect


# Parquet --------------------------------------------------------------------


def validate_parquet(open_stream: Callable[[], BinaryIO], config: DatasetsConfig) -> Verdict:
    """Footer, schema, row groups; with parquet_read_data, every page too."""
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        return Verdict.accept(skipped="pyarrow not installed")
    with open_stream() as raw:
        # pyarrow wants random access: the stream is seekable, hand it over.
        try:
            parquet = pq.ParquetFile(raw, page_checksum_verification=True)
            meta = parquet.metadata
            schema = parquet.schema_arrow
            if config.parquet_read_data:
                read_rows = sum(batch.num_rows for batch in parquet.iter_batches())
                if read_rows != meta.num_rows:
                    return Verdict.reject(
                        f"invalid Parquet: footer says {meta.num_rows} rows, "
                        f"data pages hold {read_rows}",
                        format="parquet",
                    )
        except (pyarrow.ArrowException, OSError, ValueError) as exc:
            return Verdict.reject(f"invalid Parquet: {exc}", format="parquet")
    return Verdict.accept(
        format="parquet",
        rows=meta.num_rows,
        columns=schema.names,
        column_count=len(schema.names),
        types={field.name: str(field.type) for field in schema},
        row_groups=meta.num_row_groups,
        created_by=meta.created_by,
    )

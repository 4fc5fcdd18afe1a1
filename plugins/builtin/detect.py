"""Built-in detector: what a file is, from its first bytes and, as a hint, its name.

Content that positively identifies a format (magic bytes, a parseable
header) wins over the extension: a ``.jsonl`` that is a zip is a zip. When
the content says nothing definite (unknown binary, plain text), the
extension decides, so that a broken ``.safetensors`` or ``.csv`` still
reaches the validator for its format and is rejected there rather than
slipping through as "binary".
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zipfile
from pathlib import PurePosixPath
from typing import BinaryIO

from ingestd.plugins import Detection, hookimpl

# Enough for every magic number and a CSV/JSON sample, small enough to be free.
SNIFF_BYTES = 64 * 1024
# A JSONL record may be longer than the sniff window; read this far for line 1.
MAX_FIRST_LINE = 1024 * 1024

# format -> (kind, mime type)
FORMATS: dict[str, tuple[str, str]] = {
    "jsonl": ("dataset", "application/jsonl"),
    "json": ("dataset", "application/json"),
    "csv": ("dataset", "text/csv"),
    "tsv": ("dataset", "text/tab-separated-values"),
    "parquet": ("dataset", "application/vnd.apache.parquet"),
    "safetensors": ("model", "application/x-safetensors"),
    "gguf": ("model", "application/x-gguf"),
    "pickle": ("model", "application/x-python-pickle"),
    "pytorch-zip": ("model", "application/zip"),
    "onnx": ("model", "application/x-onnx"),
    "npy": ("other", "application/x-npy"),
    "zip": ("other", "application/zip"),
    "gzip": ("other", "application/gzip"),
    "zstd": ("other", "application/zstd"),
    "bzip2": ("other", "application/x-bzip2"),
    "xz": ("other", "application/x-xz"),
    "text": ("other", "text/plain"),
    "binary": ("other", "application/octet-stream"),
}

# Extensions that name a format when the content does not contradict them.
EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".safetensors": "safetensors",
    ".gguf": "gguf",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".joblib": "pickle",
    # PyTorch's legacy (pre-1.6) format is a pickle stream; the zip format is
    # recognised from content. ".bin" is too generic to mean anything alone.
    ".pt": "pickle",
    ".pth": "pickle",
    ".ckpt": "pickle",
    ".onnx": "onnx",
    ".npy": "npy",
}
TEXT_FORMATS = {"jsonl", "json", "csv", "tsv"}

COMPRESSION_MAGIC: list[tuple[bytes, str]] = [
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
]
COMPRESSION_SUFFIXES = {".gz", ".zst", ".bz2", ".xz"}


@hookimpl
def ingestd_detect(ctx):
    with ctx.open() as stream:
        return detect(stream, ctx.facts.filename, ctx.facts.size)


def detect(stream: BinaryIO, filename: str, size: int) -> Detection:
    """Detect the format of `stream` (seekable, positioned at 0)."""
    head = stream.read(SNIFF_BYTES)
    suffixes = _suffixes(filename)
    ext = suffixes[-1] if suffixes else ""

    fmt = _from_magic(stream, head, size)
    if fmt is None and head[:1] == b"{":
        first = _first_line(stream, head, size)
        # A one-line object in a ".json" file is plain JSON; anything else whose
        # first line is an object is JSON Lines, whatever the name says.
        if first is not None and _is_json_object(first):
            is_single_json = ext == ".json" and len(first) >= size - 2
            fmt = "json" if is_single_json else "jsonl"
    if fmt is None:
        fmt = EXTENSIONS.get(ext)
        if fmt == "onnx" and not _looks_like_onnx(head):
            fmt = None
    if fmt is None:
        fmt = _from_text(head, size)
    kind, mime = FORMATS[fmt]
    if fmt in ("gzip", "zstd", "bzip2", "xz"):
        # "train.jsonl.gz" is still a dataset, just compressed.
        inner = EXTENSIONS.get(suffixes[-2]) if len(suffixes) > 1 else None
        kind = FORMATS[inner][0] if inner else "other"
    return Detection(kind=kind, format=fmt, mime_type=mime)


def _suffixes(filename: str) -> list[str]:
    name = PurePosixPath(filename.replace("\\", "/")).name
    return [s.lower() for s in PurePosixPath(name).suffixes]


def _from_magic(stream: BinaryIO, head: bytes, size: int) -> str | None:
    """Formats that announce themselves in their first bytes."""
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PAR1":
        # A missing trailing PAR1 means a truncated file: still Parquet, so
        # that the validator rejects it with pyarrow's message.
        return "parquet"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _zip_format(stream)
    if _looks_like_safetensors(head, size):
        return "safetensors"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    # Pickle protocols 2..5 start with the PROTO opcode and the version.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    for magic, fmt in COMPRESSION_MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def _zip_format(stream: BinaryIO) -> str:
    # torch.save (since 1.6) writes a zip whose pickle is "<archive>/data.pkl";
    # reading the central directory is a few small reads at the end.
    try:
        stream.seek(0)
        with zipfile.ZipFile(stream) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "zip"
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return "pytorch-zip"
    return "zip"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    if len(head) < 10:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len <= size - 8 and head[8:9] == b"{"


def _looks_like_onnx(head: bytes) -> bool:
    """Best effort: an ONNX ModelProto starts with well-formed protobuf fields,
    the first normally being ir_version (field 1, varint)."""
    pos = 0
    for _ in range(3):
        if pos >= len(head):
            return pos > 0
        tag, pos = _varint(head, pos)
        if tag is None:
            return False
        field, wire = tag >> 3, tag & 7
        if field == 0 or field > 20:
            return False
        if wire == 0:
            value, pos = _varint(head, pos)
            if value is None:
                return False
        elif wire == 2:
            length, pos = _varint(head, pos)
            if length is None:
                return False
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            return False
    return True


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos


def _first_line(stream: BinaryIO, head: bytes, size: int) -> bytes | None:
    """The first line, reading past the sniff window if needed (up to a limit)."""
    end = head.find(b"\n")
    if end >= 0:
        return head[:end]
    if len(head) >= size:
        return head
    more = head + stream.read(MAX_FIRST_LINE - len(head))
    end = more.find(b"\n")
    if end >= 0:
        return more[:end]
    return more if len(more) >= size else None


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # includes UnicodeDecodeError
        return False


def _from_text(head: bytes, size: int) -> str:
    text = _decode_text(head, complete=len(head) >= size)
    if text is None:
        return "binary"
    return _sniff_delimited(text, complete=len(head) >= size) or "text"


def _decode_text(head: bytes, complete: bool) -> str | None:
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The window may cut a multi-byte character in two.
        if not complete and exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            return head[: exc.start].decode("utf-8")
        return None


def _sniff_delimited(text: str, complete: bool) -> str | None:
    """CSV or TSV if the sample has ≥ 2 rows of the same ≥ 2 fields."""
    if not complete:
        # Drop the last, possibly partial, line.
        text = text[: text.rfind("\n") + 1]
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    sample = "\n".join(lines)
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",\t;|")
    except csv.Error:
        return None
    try:
        widths = {len(row) for row in csv.reader(io.StringIO(sample), dialect) if row}
    except csv.Error:
        return None
    if len(widths) != 1 or widths.pop() < 2:
        return None
    return "tsv" if dialect.delimiter == "\t" else "csv"

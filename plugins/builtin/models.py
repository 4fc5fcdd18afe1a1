"""Built-in model checks: safetensors and GGUF headers, unsafe pickles.

- ``ingestd_validate`` rejects a safetensors or GGUF file whose header is
  malformed or whose tensors lie outside the file (a truncated upload).
- ``ingestd_describe`` reports tensor counts, dtypes, shapes, the parameter
  count and the file's own metadata, from the header alone.
- ``ingestd_scan`` runs picklescan over pickles, PyTorch checkpoints (zip or
  legacy) and ``.npy`` files, and rejects those that import dangerous
  globals such as ``os.system``, naming them.

Only headers are read; tensor data is never loaded.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Annotated, Any, BinaryIO

import msgspec
from ingestd.plugins import Verdict, hookimpl
from picklescan.scanner import SafetyLevel, ScanResult, scan_bytes, scan_numpy

try:  # the gguf package is optional: it gives the sizes of quantised tensor types
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
except ImportError:  # pragma: no cover - depends on the environment
    GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType = {}, None, None

MiB = 1024 * 1024
PICKLE_FORMATS = {"pickle", "pytorch-zip", "zip", "npy"}


class ModelsConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[plugins.models]``."""

    # safetensors' own limit on its JSON header.
    max_header_bytes: int = 100_000_000
    # describe lists the shapes of this many tensors (in file order).
    list_tensors: int = 20
    # picklescan keeps every opcode of a pickle in memory while it scans, so a
    # pickle that needs more than this much of the file read is rejected as
    # too large to scan safely (fail closed). Checkpoints (zip or legacy
    # PyTorch) need only their small pickles read, whatever their size.
    max_scan_bytes: int = 1024 * MiB
    # picklescan's strict mode: globals it does not know are dangerous; also
    # reject pickles it cannot parse to the end.
    strict_pickles: bool = False
    # GGUF metadata in describe: longer strings are cut, longer arrays summarised.
    max_value_chars: int = 1024
    max_array_items: int = 16


@hookimpl
def ingestd_config_schema(plugin_name):
    return ModelsConfig if plugin_name == "models" else None


@hookimpl
def ingestd_validate(ctx):
    fmt = ctx.detection.format if ctx.detection else None
    if fmt not in ("safetensors", "gguf"):
        return None
    try:
        header = _read_header(ctx, fmt)
    except InvalidModel as exc:
        return Verdict.reject(f"invalid {fmt}: {exc}", format=fmt)
    return Verdict.accept(format=fmt, tensors=len(header.tensors), parameters=header.parameters)


@hookimpl
def ingestd_describe(ctx):
    fmt = ctx.detection.format if ctx.detection else None
    if fmt not in ("safetensors", "gguf"):
        return None
    try:
        header = _read_header(ctx, fmt)
    except InvalidModel:
        return None  # validation has said why
    return header.describe(ctx.config)


@hookimpl
def ingestd_scan(ctx):
    fmt = ctx.detection.format if ctx.detection else None
    if fmt not in PICKLE_FORMATS:
        return None
    return scan_pickles(ctx.open, ctx.facts.filename, fmt, ctx.config)


class InvalidModel(Exception):
    """The header is malformed or does not fit the file."""


def _read_header(ctx, fmt: str) -> SafetensorsHeader | GGUFHeader:
    with ctx.open() as raw:
        stream = _buffered(raw)
        if fmt == "safetensors":
            return read_safetensors_header(stream, ctx.facts.size, ctx.config.max_header_bytes)
        return read_gguf_header(stream, ctx.facts.size, ctx.config)


def _buffered(stream: BinaryIO, size: int = MiB) -> BinaryIO:
    # ctx.open() may hand back an unbuffered raw stream; the parsers here make
    # many small reads.
    if isinstance(stream, io.RawIOBase):
        return io.BufferedReader(stream, buffer_size=size)
    return stream


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: list[int]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


# safetensors ------------------------------------------------------------------

# Bits per element, as in safetensors' Dtype::bitsize.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class _TensorInfo(msgspec.Struct):
    dtype: str
    shape: list[NonNegative]
    data_offsets: tuple[NonNegative, NonNegative]


@dataclass
class SafetensorsHeader:
    header_bytes: int
    tensors: list[Tensor]
    metadata: dict[str, str]

    @property
    def parameters(self) -> int:
        return sum(t.elements for t in self.tensors)

    def describe(self, config: ModelsConfig) -> dict[str, Any]:
        return {
            "format": "safetensors",
            "tensors": len(self.tensors),
            "parameters": self.parameters,
            "dtypes": dict(Counter(t.dtype for t in self.tensors)),
            "shapes": {t.name: t.shape for t in self.tensors[: config.list_tensors]},
            "metadata": self.metadata,
            "header_bytes": self.header_bytes,
        }


def read_safetensors_header(stream: BinaryIO, size: int, max_header: int) -> SafetensorsHeader:
    """Parse and check the header the way the safetensors library does: every
    tensor's bytes match its dtype and shape, and together they tile the data
    section exactly, with no gap, overlap or trailing bytes."""
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise InvalidModel("file is shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > max_header:
        raise InvalidModel(f"header length {header_len} exceeds the limit of {max_header} bytes")
    if 8 + header_len > size:
        raise InvalidModel(f"header length {header_len} exceeds the file size ({size} bytes)")
    raw = stream.read(header_len)
    if len(raw) != header_len:
        raise InvalidModel("file ends inside the header")
    if not raw.startswith(b"{"):
        raise InvalidModel("header does not start with '{'")
    try:
        entries = msgspec.json.decode(raw, type=dict[str, Any])
        metadata = msgspec.convert(entries.pop("__metadata__", None) or {}, dict[str, str])
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise InvalidModel(f"header is not valid JSON of the expected shape: {exc}") from None

    data_len = size - 8 - header_len
    tensors: list[Tensor] = []
    spans: list[tuple[int, int, str]] = []
    for name, value in entries.items():
        try:
            info = msgspec.convert(value, _TensorInfo)
        except msgspec.ValidationError as exc:
            raise InvalidModel(f"tensor {name!r}: {exc}") from None
        bits = SAFETENSORS_DTYPE_BITS.get(info.dtype)
        if bits is None:
            raise InvalidModel(f"tensor {name!r}: unknown dtype {info.dtype!r}")
        begin, end = info.data_offsets
        if end > data_len:
            raise InvalidModel(
                f"tensor {name!r}: data_offsets end at {end}, past the {data_len} bytes "
                "of tensor data in the file"
            )
        tensor = Tensor(name, info.dtype, list(info.shape))
        total_bits = tensor.elements * bits
        if total_bits % 8 or end - begin != total_bits // 8:
            raise InvalidModel(
                f"tensor {name!r}: data_offsets span {end - begin} bytes, but "
                f"{info.dtype}{tensor.shape} needs {total_bits / 8:g}"
            )
        tensors.append(tensor)
        spans.append((begin, end, name))

    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap"
            raise InvalidModel(f"tensor {name!r}: data_offsets start at {begin}, {problem}")
        position = end
    if position != data_len:
        raise InvalidModel(f"{data_len - position} bytes after the last tensor's data")
    return SafetensorsHeader(header_len, tensors, metadata)


# GGUF -------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32
# GGUF metadata value types (the spec's gguf_type) -> struct code.
GGUF_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
GGUF_STRING, GGUF_ARRAY = 8, 9
# GGML_MAX_DIMS in ggml.h
GGML_MAX_DIMS = 4


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[Tensor] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return sum(t.elements for t in self.tensors)

    def describe(self, config: ModelsConfig) -> dict[str, Any]:
        arch = self.metadata.get("general.architecture")
        described = {
            "format": "gguf",
            "version": self.version,
            "tensors": len(self.tensors),
            "parameters": self.parameters,
            "architecture": arch,
            "name": self.metadata.get("general.name"),
            "context_length": self.metadata.get(f"{arch}.context_length"),
            "tensor_types": dict(Counter(t.dtype for t in self.tensors)),
            "shapes": {t.name: t.shape for t in self.tensors[: config.list_tensors]},
            "metadata": self.metadata,
        }
        file_type = self.metadata.get("general.file_type")
        if LlamaFileType is not None and isinstance(file_type, int):
            try:
                described["file_type"] = LlamaFileType(file_type).name
            except ValueError:
                pass
        return described


class _GGUFReader:
    """Little reads with bounds checks: every length comes from the file and is
    checked against the bytes actually left before anything is allocated."""

    def __init__(self, stream: BinaryIO, size: int, config: ModelsConfig) -> None:
        self.stream = stream
        self.size = size
        self.pos = 0
        self.order = "<"
        self.config = config

    def read(self, n: int) -> bytes:
        if n > self.size - self.pos:
            raise InvalidModel(f"truncated: needs {n} bytes at offset {self.pos}, file ends first")
        data = self.stream.read(n)
        if len(data) != n:
            raise InvalidModel(f"truncated at offset {self.pos}")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if n > self.size - self.pos:
            raise InvalidModel(f"truncated: needs {n} bytes at offset {self.pos}, file ends first")
        self.stream.seek(n, io.SEEK_CUR)
        self.pos += n

    def scalar(self, code: str) -> Any:
        fmt = self.order + code
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self, keep: int | None = None) -> str | None:
        """A length-prefixed UTF-8 string; with `keep`, at most that many chars
        are kept (None: none are, the bytes are skipped)."""
        length = self.scalar("Q")
        if keep is None:
            self.skip(length)
            return None
        data = self.read(min(length, keep * 4))
        self.skip(length - len(data))
        text = data.decode("utf-8", errors="replace")
        return text if len(text) <= keep and len(data) == length else text[:keep] + "…"

    def value(self, kind: int, keep: bool = True) -> Any:
        if kind in GGUF_SCALARS:
            return self.scalar(GGUF_SCALARS[kind])
        if kind == GGUF_STRING:
            return self.string(self.config.max_value_chars if keep else None)
        if kind == GGUF_ARRAY:
            return self.array(keep)
        raise InvalidModel(f"unknown metadata value type {kind} at offset {self.pos - 4}")

    def array(self, keep: bool) -> Any:
        kind = self.scalar("I")
        count = self.scalar("Q")
        if keep and count <= self.config.max_array_items:
            return [self.value(kind) for _ in range(count)]
        if kind in GGUF_SCALARS:
            # Numbers nobody will see: skip them in one seek.
            self.skip(count * struct.calcsize(self.order + GGUF_SCALARS[kind]))
        else:
            # Strings and nested arrays must be walked. Each item takes at least
            # 8 bytes, so a count the file cannot hold is refused up front.
            if count * 8 > self.size - self.pos:
                raise InvalidModel(f"array of {count} items at offset {self.pos} overruns the file")
            for _ in range(count):
                self.value(kind, keep=False)
        return {"array_of": _gguf_type_name(kind), "length": count}


def _gguf_type_name(kind: int) -> str:
    names = {GGUF_STRING: "string", GGUF_ARRAY: "array"}
    scalar_names = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool"]
    names.update(enumerate(scalar_names))
    names.update({10: "u64", 11: "i64", 12: "f64"})
    return names.get(kind, str(kind))


def read_gguf_header(stream: BinaryIO, size: int, config: ModelsConfig) -> GGUFHeader:
    """Parse the GGUF header (metadata and tensor infos) and check that every
    tensor's data lies inside the file.

    The gguf package's GGUFReader needs a path to np.memmap; the store gives a
    stream, so the header (a few MiB at most) is parsed here, following the
    spec: magic, version, tensor and metadata counts, metadata key/values,
    tensor infos, then tensor data at the next multiple of the alignment.
    """
    reader = _GGUFReader(stream, size, config)
    if reader.read(4) != GGUF_MAGIC:
        raise InvalidModel("bad magic (expected b'GGUF')")
    version = reader.scalar("I")
    if version & 0xFFFF == 0:  # written on a big-endian machine
        reader.order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in GGUF_VERSIONS:
        raise InvalidModel(f"unsupported version {version} (supported: 2, 3)")
    tensor_count = reader.scalar("Q")
    kv_count = reader.scalar("Q")

    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string(keep=1024)
        metadata[key] = reader.value(reader.scalar("I"))

    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise InvalidModel(f"general.alignment {alignment!r} is not a power of two")

    header = GGUFHeader(version, metadata)
    placements: list[tuple[Tensor, int, int]] = []
    for _ in range(tensor_count):
        name = reader.string(keep=1024)
        n_dims = reader.scalar("I")
        if n_dims > GGML_MAX_DIMS:
            raise InvalidModel(f"tensor {name!r} has {n_dims} dimensions (max {GGML_MAX_DIMS})")
        shape = [reader.scalar("Q") for _ in range(n_dims)]
        ggml_type = reader.scalar("I")
        offset = reader.scalar("Q")
        tensor = Tensor(name, _ggml_type_name(ggml_type), shape)
        header.tensors.append(tensor)
        placements.append((tensor, ggml_type, offset))

    data_start = -(-reader.pos // alignment) * alignment
    data_len = size - data_start
    if data_len < 0:
        raise InvalidModel(f"truncated: tensor data would start at {data_start}, past the end")
    for tensor, ggml_type, offset in placements:
        if offset % alignment:
            raise InvalidModel(f"tensor {tensor.name!r}: offset {offset} is not aligned")
        nbytes = _ggml_nbytes(tensor, ggml_type)
        if offset + nbytes > data_len:
            raise InvalidModel(
                f"tensor {tensor.name!r}: data ends at {offset + nbytes}, past the "
                f"{data_len} bytes of tensor data in the file"
            )
    return header


def _ggml_type_name(ggml_type: int) -> str:
    if GGMLQuantizationType is not None:
        try:
            return GGMLQuantizationType(ggml_type).name
        except ValueError:
            pass
    return str(ggml_type)


def _ggml_nbytes(tensor: Tensor, ggml_type: int) -> int:
    """Bytes of a tensor's data; 0 when the type's size is unknown (the gguf
    package is missing or older than the file), so only the offset is checked."""
    sizes = GGML_QUANT_SIZES.get(ggml_type) if GGMLQuantizationType is not None else None
    if sizes is None:
        return 0
    block_size, type_size = sizes
    # Quantised types pack the first dimension in blocks.
    if tensor.shape and tensor.shape[0] % block_size:
        raise InvalidModel(
            f"tensor {tensor.name!r}: first dimension {tensor.shape[0]} is not a multiple "
            f"of the {tensor.dtype} block size {block_size}"
        )
    return tensor.elements // block_size * type_size


# Pickles ----------------------------------------------------------------------


class _TooLargeToScan(Exception):
    pass


class _ReadBudget(io.RawIOBase):
    """A stream that fails once more than `limit` bytes have been read through it.

    picklescan takes a stream (no path, no bytes) but keeps what it parses in
    memory; this bounds it. The flag survives picklescan catching the error."""

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.used = 0
        self.exceeded = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self.used >= self.limit:
            self.exceeded = True
            raise _TooLargeToScan
        view = memoryview(buffer).cast("B")[: self.limit - self.used]
        data = self.inner.read(len(view))
        view[: len(data)] = data
        self.used += len(data)
        return len(data)


def scan_pickles(open_stream, filename: str, fmt: str, config: ModelsConfig) -> Verdict | None:
    ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    with open_stream() as raw:
        budget = _ReadBudget(raw, config.max_scan_bytes)
        # A small buffer: zip scanning seeks to every member, and each seek
        # refills the buffer.
        stream = io.BufferedReader(budget, buffer_size=64 * 1024)
        result = None
        try:
            if fmt in ("zip", "pytorch-zip"):
                member = _oversized_pickle_member(stream, config.max_scan_bytes)
                if member is not None:
                    return Verdict.reject(
                        f"pickle {member!r} in the archive is too large to scan "
                        f"(more than max_scan_bytes, {config.max_scan_bytes} bytes)",
                        format=fmt,
                    )
                stream.seek(0)
            if fmt == "npy":
                result = scan_numpy(stream, filename, strict=config.strict_pickles)
            else:
                # Dispatches on content and extension: zip archives (member by
                # member), legacy PyTorch files (their leading pickles only),
                # plain pickle streams (to the end).
                result = scan_bytes(stream, filename, ext, strict=config.strict_pickles)
        except _TooLargeToScan:
            pass
        except zipfile.BadZipFile as exc:
            if fmt == "pytorch-zip":
                return Verdict.reject(f"unreadable checkpoint archive: {exc}", format=fmt)
            return None  # a broken generic zip: not a pickle problem
    if budget.exceeded or result is None:
        return Verdict.reject(
            f"pickle too large to scan: more than max_scan_bytes ({config.max_scan_bytes} bytes)",
            format=fmt,
        )
    return _pickle_verdict(result, fmt, config)


def _oversized_pickle_member(stream: BinaryIO, limit: int) -> str | None:
    """A compressed member that picklescan would scan and that inflates past
    `limit` (a zip bomb would otherwise bypass the read budget)."""
    with zipfile.ZipFile(stream) as archive:
        for info in archive.infolist():
            if info.compress_type == zipfile.ZIP_STORED or info.file_size <= limit:
                continue
            if PurePosixPath(info.filename).suffix.lower() in (".pkl", ".pickle", ".npy"):
                return info.filename
            try:
                with archive.open(info) as member:
                    start = member.read(8)
            except (RuntimeError, NotImplementedError):
                continue  # encrypted or unsupported: picklescan cannot read it either
            if start[:1] == b"\x80" or start.startswith(b"\x93NUMPY"):
                return info.filename
    return None


def _pickle_verdict(result: ScanResult, fmt: str, config: ModelsConfig) -> Verdict:
    def names(level: SafetyLevel | None = None) -> list[str]:
        return sorted({f"{g.module}.{g.name}" for g in result.globals if level in (None, g.safety)})

    dangerous = names(SafetyLevel.Dangerous)
    suspicious = names(SafetyLevel.Suspicious)
    if dangerous:
        shown = ", ".join(dangerous[:10]) + (", ..." if len(dangerous) > 10 else "")
        return Verdict.reject(
            f"unsafe pickle: imports {shown}",
            format=fmt,
            globals=dangerous,
            suspicious=suspicious,
        )
    if result.scan_err and config.strict_pickles:
        return Verdict.reject("pickle could not be parsed to the end", format=fmt)
    return Verdict.accept(
        format=fmt,
        globals=names(),
        suspicious=suspicious,
        parse_error=result.scan_err,
        pickles=result.scanned_files,
    )

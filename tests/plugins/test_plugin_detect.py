"""The built-in "detect" plugin over real files of each format."""

from __future__ import annotations

import gzip
import io
import pickle
import random
import zipfile
from collections import OrderedDict

import gguf
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingestd.plugins.testing import run_plugins
from safetensors.numpy import save as save_safetensors

pytestmark = pytest.mark.unit

BUILTINS = {"detect": "ingestd.plugins.builtin.detect"}


async def detect(data: bytes, filename: str):
    outcome = await run_plugins(data, filename, builtins=BUILTINS)
    assert outcome.accepted, outcome.reason
    return outcome.detection


def parquet_bytes() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["a", "b", "c"]}), sink)
    return sink.getvalue()


def safetensors_bytes() -> bytes:
    return save_safetensors({"w": np.zeros((2, 3), dtype=np.float32)})


def gguf_bytes(tmp_path) -> bytes:
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def torch_zip_bytes() -> bytes:
    # The layout torch.save writes: <archive>/data.pkl, data/<n>, version.
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("model/data.pkl", pickle.dumps(OrderedDict(w=1), protocol=2))
        archive.writestr("model/data/0", b"\x00" * 64)
        archive.writestr("model/version", b"3\n")
    return sink.getvalue()


def plain_zip_bytes() -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return sink.getvalue()


# A minimal ONNX ModelProto prefix: ir_version=8, producer_name, producer_version.
ONNX_PREFIX = b"\x08\x08\x12\x07pytorch\x1a\x032.1"


@pytest.mark.parametrize(
    ("make", "filename", "kind", "fmt", "mime"),
    [
        (lambda: b'{"a": 1}\n{"a": 2}\n', "train.jsonl", "dataset", "jsonl", "application/jsonl"),
        # Content alone: the first line is a JSON object.
        (lambda: b'{"a": 1}\n{"a": 2}\n', "upload", "dataset", "jsonl", "application/jsonl"),
        # The name says JSONL and the content is text: the validator decides.
        (lambda: b"not json at all\n", "x.ndjson", "dataset", "jsonl", "application/jsonl"),
        (lambda: b'{"a": 1, "b": [1, 2]}\n', "config.json", "dataset", "json", "application/json"),
        (lambda: b"a,b\n1,2\n", "table.csv", "dataset", "csv", "text/csv"),
        (lambda: b"id,name,score\n1,ann,0.5\n2,bob,0.7\n3,cy,0.1\n", "t", "dataset", "csv", None),
        (lambda: b"id\tname\n1\tann\n2\tbob\n", "t.txt", "dataset", "tsv", None),
        (parquet_bytes, "rows.bin", "dataset", "parquet", "application/vnd.apache.parquet"),
        (safetensors_bytes, "model", "model", "safetensors", None),
        (lambda: pickle.dumps({"a": 1}, protocol=2), "weights", "model", "pickle", None),
        (lambda: pickle.dumps({"a": 1}, protocol=5), "w.pkl", "model", "pickle", None),
        # Protocol 0 has no magic: the name says pickle, so it will be scanned.
        (lambda: pickle.dumps({"a": 1}, protocol=0), "w.pickle", "model", "pickle", None),
        (torch_zip_bytes, "model.pt", "model", "pytorch-zip", "application/zip"),
        (lambda: ONNX_PREFIX, "model.onnx", "model", "onnx", None),
        (plain_zip_bytes, "bundle.zip", "other", "zip", "application/zip"),
        (lambda: gzip.compress(b'{"a": 1}\n'), "train.jsonl.gz", "dataset", "gzip", None),
        (lambda: "plain words, ünïcode\n".encode(), "notes", "other", "text", "text/plain"),
        (lambda: b"\x00\x01" + random.Random(0).randbytes(4096), "blob", "other", "binary", None),
        (lambda: b"", "empty", "other", "text", "text/plain"),
    ],
)
async def test_formats_are_detected(make, filename, kind, fmt, mime):
    detection = await detect(make(), filename)
    assert (detection.kind, detection.format) == (kind, fmt)
    if mime is not None:
        assert detection.mime_type == mime


async def test_gguf_is_detected_by_magic(tmp_path):
    detection = await detect(gguf_bytes(tmp_path), "anything.bin")
    assert detection.format == "gguf" and detection.kind == "model"


@pytest.mark.parametrize(
    ("make", "filename", "fmt"),
    [
        # A zip upload named .jsonl is a zip.
        (plain_zip_bytes, "train.jsonl", "zip"),
        # A PyTorch checkpoint is recognised whatever it is called.
        (torch_zip_bytes, "data.csv", "pytorch-zip"),
        (parquet_bytes, "data.jsonl", "parquet"),
        (safetensors_bytes, "weights.gguf", "safetensors"),
        (lambda: pickle.dumps([1, 2], protocol=4), "model.safetensors", "pickle"),
        (lambda: b'{"a": 1}\n{"a": 2}\n', "data.csv", "jsonl"),
        # Not protobuf: the ".onnx" name alone does not make it ONNX.
        (lambda: b"hello world\n", "model.onnx", "text"),
    ],
)
async def test_content_beats_the_extension(make, filename, fmt):
    assert (await detect(make(), filename)).format == fmt


@pytest.mark.parametrize(
    ("data", "filename", "fmt"),
    [
        # Broken files keep the format their name claims, so that the
        # format's validator rejects them instead of letting "binary" through.
        (b"\xff" * 100, "model.safetensors", "safetensors"),
        (b"GGUX" + b"\x00" * 60, "model.gguf", "gguf"),
        (b"\x00\x01\x02 not parquet", "rows.parquet", "parquet"),
        (b"a,b\n\x00\xff\xfe", "rows.csv", "csv"),
    ],
)
async def test_unrecognised_content_falls_back_to_the_extension(data, filename, fmt):
    assert (await detect(data, filename)).format == fmt


async def test_truncated_parquet_is_still_parquet():
    data = parquet_bytes()
    assert (await detect(data[: len(data) // 2], "rows.parquet")).format == "parquet"


async def test_first_jsonl_line_longer_than_the_sniff_window():
    long_line = b'{"text": "' + b"x" * 200_000 + b'"}\n'
    assert (await detect(long_line * 2, "upload")).format == "jsonl"


async def test_a_utf8_character_cut_by_the_sniff_window_is_still_text():
    # 65535 ASCII bytes then a 2-byte character straddling the 64 KiB mark.
    data = b"a" * 65535 + "é".encode() + b" more text\n"
    assert (await detect(data, "notes")).format == "text"

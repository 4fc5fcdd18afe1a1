"""The built-in "models" plugin: safetensors and GGUF headers, unsafe pickles.

The malicious pickles here are built with pickle.dumps and only ever
scanned: nothing in this file unpickles them.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile

import gguf
import numpy as np
import pytest
from ingestd.plugins.testing import run_plugins
from safetensors.numpy import save as save_safetensors

pytestmark = pytest.mark.unit

BUILTINS = {
    "detect": "ingestd.plugins.builtin.detect",
    "models": "ingestd.plugins.builtin.models",
}
# os.system pickles under its real module: "posix" on Linux, "nt" on Windows.
OS_SYSTEM = f"{os.system.__module__}.system"


async def process(data: bytes, filename: str, **config):
    return await run_plugins(data, filename, builtins=BUILTINS, config={"models": config})


# safetensors ------------------------------------------------------------------


def safetensors_file() -> bytes:
    return save_safetensors(
        {
            "embed.weight": np.zeros((10, 4), dtype=np.float32),
            "layer.0.weight": np.ones((4, 4), dtype=np.float16),
            "layer.0.bias": np.arange(4, dtype=np.int64),
            "scale": np.array(1.5, dtype=np.float64),  # a 0-d tensor: 1 parameter
        },
        metadata={"format": "np", "source": "tests"},
    )


def with_header(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


async def test_safetensors_is_described_from_its_header():
    outcome = await process(safetensors_file(), "model.safetensors")

    assert outcome.accepted, outcome.reason
    assert outcome.results["models"]["validate"]["parameters"] == 40 + 16 + 4 + 1
    described = outcome.metadata["models"]
    assert described["format"] == "safetensors"
    assert described["tensors"] == 4
    assert described["parameters"] == 61
    assert described["dtypes"] == {"F32": 1, "F16": 1, "I64": 1, "F64": 1}
    assert described["shapes"]["embed.weight"] == [10, 4]
    assert described["shapes"]["scale"] == []
    assert described["metadata"] == {"format": "np", "source": "tests"}


async def test_describe_lists_only_the_first_tensors():
    tensors = {f"t{i:02}": np.zeros(2, dtype=np.float32) for i in range(30)}
    outcome = await process(save_safetensors(tensors), "m.safetensors", list_tensors=5)
    assert outcome.metadata["models"]["tensors"] == 30
    assert len(outcome.metadata["models"]["shapes"]) == 5


async def test_truncated_safetensors_is_rejected_offsets_past_the_end():
    data = safetensors_file()
    outcome = await process(data[:-16], "model.safetensors")

    assert not outcome.accepted
    assert outcome.reason.startswith("models: invalid safetensors: tensor ")
    assert "past the" in outcome.reason and "bytes of tensor data in the file" in outcome.reason
    assert "models" not in outcome.metadata


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack("<Q", 10_000) + b'{"a": 1}', "header length 10000 exceeds the file size"),
        (struct.pack("<Q", 8) + b'{"a": 1,', "not valid JSON"),
        (struct.pack("<Q", 200_000_000) + b"{" * 64, "exceeds the limit of 100000000 bytes"),
        (
            with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12),
            "4 bytes after the last tensor's data",
        ),
        (
            with_header({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
            "data_offsets span 8 bytes, but F32[3] needs 12",
        ),
        (
            with_header(
                {
                    "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                    "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
                },
                b"\0" * 6,
            ),
            "tensor 'b': data_offsets start at 2, overlaps the previous tensor",
        ),
        (
            with_header({"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
            "unknown dtype 'Q9'",
        ),
        (
            with_header({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0"),
            "tensor 'w'",
        ),
        (
            with_header({"__metadata__": {"n": 1}}, b""),
            "not valid JSON of the expected shape",
        ),
    ],
)
async def test_invalid_safetensors_headers_are_rejected(data, message):
    outcome = await process(data, "model.safetensors")
    assert not outcome.accepted
    assert outcome.reason.startswith("models: invalid safetensors: ")
    assert message in outcome.reason


# GGUF -------------------------------------------------------------------------


def gguf_file(tmp_path, *, endianess=gguf.GGUFEndian.LITTLE) -> bytes:
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endianess)
    writer.add_name("tiny-test")
    writer.add_context_length(4096)
    writer.add_block_count(1)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # A vocabulary big enough to be summarised rather than listed.
    writer.add_token_list([f"tok{i}" for i in range(100)])
    writer.add_token_scores([0.0] * 100)
    writer.add_chat_template("{{ messages }}" * 200)
    writer.add_tensor("token_embd.weight", np.zeros((100, 8), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


async def test_gguf_is_described_from_its_header(tmp_path):
    outcome = await process(gguf_file(tmp_path), "tiny.gguf")

    assert outcome.accepted, outcome.reason
    described = outcome.metadata["models"]
    assert described["format"] == "gguf"
    assert described["version"] == 3
    assert described["architecture"] == "llama"
    assert described["name"] == "tiny-test"
    assert described["context_length"] == 4096
    assert described["file_type"] == "ALL_F32"
    assert described["tensors"] == 3
    assert described["parameters"] == 800 + 64 + 8
    assert described["tensor_types"] == {"F32": 3}
    # GGUF stores dimensions fastest-first: numpy's (100, 8) is [8, 100].
    assert described["shapes"]["token_embd.weight"] == [8, 100]
    metadata = described["metadata"]
    assert metadata["tokenizer.ggml.tokens"] == {"array_of": "string", "length": 100}
    assert metadata["tokenizer.ggml.scores"] == {"array_of": "f32", "length": 100}
    assert len(metadata["tokenizer.chat_template"]) == 1025  # cut, with "…"
    assert metadata["llama.block_count"] == 1


async def test_big_endian_gguf_is_read(tmp_path):
    data = gguf_file(tmp_path, endianess=gguf.GGUFEndian.BIG)
    outcome = await process(data, "tiny.gguf")
    assert outcome.accepted, outcome.reason
    assert outcome.metadata["models"]["parameters"] == 872


async def test_truncated_gguf_is_rejected(tmp_path):
    data = gguf_file(tmp_path)
    outcome = await process(data[:-100], "tiny.gguf")

    assert not outcome.accepted
    assert outcome.reason.startswith("models: invalid gguf: tensor ")
    assert "bytes of tensor data in the file" in outcome.reason


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (40, "truncated: needs"),
        # Inside the vocabulary: its declared length cannot fit in what is left.
        (300, "array of 100 items at offset"),
    ],
)
async def test_gguf_cut_inside_its_header_is_rejected(tmp_path, keep, message):
    outcome = await process(gguf_file(tmp_path)[:keep], "tiny.gguf")
    assert not outcome.accepted
    assert outcome.reason.startswith(f"models: invalid gguf: {message}")


async def test_file_named_gguf_without_the_magic_is_rejected():
    outcome = await process(b"GGML" + b"\0" * 60, "tiny.gguf")
    assert not outcome.accepted
    assert outcome.reason == "models: invalid gguf: bad magic (expected b'GGUF')"


# Pickles ----------------------------------------------------------------------


class RunsShellCommand:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class EvaluatesCode:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def torch_zip(pickled: bytes, name: str = "model") -> bytes:
    """A checkpoint laid out like torch.save's (torch itself is not needed)."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", pickled)
        archive.writestr(f"{name}/data/0", np.zeros(16, dtype=np.float32).tobytes())
        archive.writestr(f"{name}/version", b"3\n")
    return sink.getvalue()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
async def test_malicious_pickle_is_rejected_naming_the_global(protocol):
    data = pickle.dumps({"weights": [1, 2], "hook": RunsShellCommand()}, protocol=protocol)
    outcome = await process(data, "model.pkl")

    assert not outcome.accepted
    assert outcome.reason == f"models: unsafe pickle: imports {OS_SYSTEM}"
    assert outcome.results["models"]["scan"]["globals"] == [OS_SYSTEM]


async def test_every_dangerous_global_is_named():
    data = pickle.dumps([RunsShellCommand(), EvaluatesCode()], protocol=4)
    outcome = await process(data, "model.pickle")
    assert not outcome.accepted
    assert outcome.results["models"]["scan"]["globals"] == sorted(["builtins.eval", OS_SYSTEM])
    assert "builtins.eval" in outcome.reason and OS_SYSTEM in outcome.reason


async def test_safe_pickle_is_accepted_with_its_globals_listed():
    data = pickle.dumps(collections.OrderedDict(w=[1.0, 2.0], b=(3, 4)), protocol=2)
    outcome = await process(data, "model.pkl")

    assert outcome.accepted, outcome.reason
    scan = outcome.results["models"]["scan"]
    assert scan["globals"] == ["collections.OrderedDict"]
    assert scan["suspicious"] == []


async def test_pytorch_zip_with_malicious_data_pkl_is_rejected():
    data = torch_zip(pickle.dumps(collections.OrderedDict(w=RunsShellCommand()), protocol=2))
    outcome = await process(data, "checkpoint.pt")

    assert outcome.detection.format == "pytorch-zip"
    assert not outcome.accepted
    assert outcome.reason == f"models: unsafe pickle: imports {OS_SYSTEM}"
    assert outcome.results["models"]["scan"]["globals"] == [OS_SYSTEM]


async def test_pytorch_zip_is_scanned_whatever_its_name():
    data = torch_zip(pickle.dumps(RunsShellCommand(), protocol=2))
    outcome = await process(data, "innocent.jsonl")
    assert not outcome.accepted
    assert OS_SYSTEM in outcome.reason


async def test_safe_pytorch_zip_is_accepted():
    data = torch_zip(pickle.dumps(collections.OrderedDict(w=[0.0] * 4), protocol=2))
    outcome = await process(data, "checkpoint.pth")
    assert outcome.accepted, outcome.reason
    assert outcome.results["models"]["scan"]["globals"] == ["collections.OrderedDict"]


async def test_pickle_inside_a_generic_zip_is_scanned():
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.txt", "hello")
        archive.writestr("extra/state.pkl", pickle.dumps(RunsShellCommand()))
    outcome = await process(sink.getvalue(), "bundle.zip")
    assert not outcome.accepted
    assert OS_SYSTEM in outcome.reason


async def test_unknown_globals_are_reported_and_rejected_only_when_strict():
    data = pickle.dumps(collections.Counter("abc"), protocol=4)
    relaxed = await process(data, "counts.pkl")
    assert relaxed.accepted
    assert relaxed.results["models"]["scan"]["suspicious"] == ["collections.Counter"]

    strict = await process(data, "counts.pkl", strict_pickles=True)
    assert not strict.accepted
    assert strict.reason == "models: unsafe pickle: imports collections.Counter"


async def test_pickle_too_large_to_scan_is_rejected():
    data = pickle.dumps([b"x" * 50_000, RunsShellCommand()], protocol=4)
    outcome = await process(data, "big.pkl", max_scan_bytes=10_000)
    assert not outcome.accepted
    assert outcome.reason == (
        "models: pickle too large to scan: more than max_scan_bytes (10000 bytes)"
    )


async def test_compressed_pickle_member_inflating_past_the_limit_is_rejected():
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model/data.pkl", pickle.dumps(b"\0" * 2_000_000, protocol=4))
    data = sink.getvalue()
    assert len(data) < 100_000  # it compresses well: the read budget alone would pass it

    outcome = await process(data, "model.pt", max_scan_bytes=1_000_000)
    assert not outcome.accepted
    assert "'model/data.pkl' in the archive is too large to scan" in outcome.reason


async def test_numpy_object_array_is_scanned():
    sink = io.BytesIO()
    np.save(sink, np.array([RunsShellCommand()], dtype=object), allow_pickle=True)
    outcome = await process(sink.getvalue(), "array.npy")
    assert outcome.detection.format == "npy"
    assert not outcome.accepted
    assert OS_SYSTEM in outcome.reason


async def test_non_model_files_are_left_alone():
    outcome = await process(b'{"a": 1}\n', "x.jsonl")
    assert outcome.accepted
    assert "models" not in outcome.results

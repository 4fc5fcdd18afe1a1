"""The seed API's coarse `fileType`, from the filename's extension.

Content-based detection belongs to the `detect` plugin; this is the answer
the original API gave at completion time.
"""

from __future__ import annotations

from pathlib import PurePosixPath

DATASET_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt"}
MODEL_SUFFIXES = {
    ".safetensors",
    ".gguf",
    ".ggml",
    ".pt",
    ".pth",
    ".bin",
    ".ckpt",
    ".onnx",
    ".pkl",
    ".pickle",
    ".h5",
    ".keras",
    ".pb",
    ".tflite",
    ".mlmodel",
    ".msgpack",
}
COMPRESSION_SUFFIXES = {".gz", ".zst", ".bz2", ".xz"}


def file_type(filename: str) -> str:
    suffixes = [s.lower() for s in PurePosixPath(filename.replace("\\", "/")).suffixes]
    while suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    if suffix in DATASET_SUFFIXES:
        return "dataset"
    if suffix in MODEL_SUFFIXES:
        return "model"
    return "other"

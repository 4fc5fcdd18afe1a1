"""Cutting files into chunks for the /v1 API: layouts, hashes, dedup after an insertion."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import blake3
import pytest
from ingestd.daemon.client._chunking import Chunk, ChunkingError, ChunkingParams, chunk_file
from support.jsonl import insert_lines, jsonl_bytes

pytestmark = pytest.mark.unit

KiB = 1 << 10
MiB = 1 << 20
# The server's defaults (GET /v1/info).
PARAMS = ChunkingParams(fixed_size=1 * MiB, min_size=256 * KiB, avg_size=1 * MiB, max_size=4 * MiB)


def check_layout(chunks: list[Chunk], data: bytes, params: ChunkingParams) -> None:
    offset = 0
    for n, chunk in enumerate(chunks):
        assert chunk.offset == offset
        assert 1 <= chunk.size <= params.max_size
        if n < len(chunks) - 1:
            assert chunk.size >= params.min_size, (n, chunk.size)
        assert chunk.hash == blake3.blake3(data[offset : offset + chunk.size]).hexdigest()
        offset += chunk.size
    assert offset == len(data)


def new_bytes(old: list[Chunk], new: list[Chunk]) -> int:
    """Bytes of `new` in chunks that `old` does not have: what an upload would send."""
    known = {c.hash for c in old}
    return sum(c.size for c in new if c.hash not in known)


@pytest.fixture(scope="module")
def jsonl() -> bytes:
    return jsonl_bytes(32 * MiB, seed=7)


def test_cdc_layout_and_hashes(tmp_path: Path, jsonl: bytes):
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl)
    result = chunk_file(path, PARAMS, "cdc", workers=4)
    assert result.size == len(jsonl)
    assert result.blake3 == blake3.blake3(jsonl).hexdigest()
    check_layout(result.chunks, jsonl, PARAMS)
    # Content-defined, so not simply fixed: sizes vary around the average.
    sizes = {c.size for c in result.chunks[:-1]}
    assert len(sizes) > 1
    assert 8 <= len(result.chunks) <= 128


def test_cdc_random_data(tmp_path: Path):
    data = random.Random(1).randbytes(9 * MiB + 12345)
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    result = chunk_file(path, PARAMS, "cdc", workers=2)
    check_layout(result.chunks, data, PARAMS)
    assert result.blake3 == blake3.blake3(data).hexdigest()


def test_same_result_whatever_the_thread_count(tmp_path: Path):
    data = random.Random(2).randbytes(6 * MiB)
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    one = chunk_file(path, PARAMS, "cdc", workers=1)
    many = chunk_file(path, PARAMS, "cdc", workers=8)
    assert one == many


def test_insertion_near_start_changes_few_chunks(tmp_path: Path, jsonl: bytes):
    extra = jsonl_bytes(100 * KiB, seed=8)
    extra = extra[: extra.rindex(b"\n") + 1]
    edited = insert_lines(jsonl, 64 * KiB, extra)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(jsonl)
    b.write_bytes(edited)
    old = chunk_file(a, PARAMS, "cdc").chunks
    new = chunk_file(b, PARAMS, "cdc").chunks
    check_layout(new, edited, PARAMS)
    changed = new_bytes(old, new)
    assert changed <= len(edited) // 10, (changed, len(edited))
    # Fixed-size chunks, by contrast, all shift after the insertion point.
    fixed_old = chunk_file(a, PARAMS, "fixed").chunks
    fixed_new = chunk_file(b, PARAMS, "fixed").chunks
    assert new_bytes(fixed_old, fixed_new) > len(edited) // 2


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, 5 * MiB, 5 * MiB + 3])
def test_fixed_layout(tmp_path: Path, size: int):
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    result = chunk_file(path, PARAMS, "fixed", workers=3)
    fixed = PARAMS.fixed_size
    expected = [(o, min(fixed, size - o)) for o in range(0, size, fixed)]
    assert [(c.offset, c.size) for c in result.chunks] == expected
    for c in result.chunks:
        assert c.hash == blake3.blake3(data[c.offset : c.offset + c.size]).hexdigest()
    assert result.size == size
    assert result.blake3 == blake3.blake3(data).hexdigest()


def test_empty_file_cdc(tmp_path: Path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    result = chunk_file(path, PARAMS, "cdc")
    assert result.chunks == [] and result.size == 0
    assert result.blake3 == blake3.blake3(b"").hexdigest()


def test_small_file_is_one_chunk(tmp_path: Path):
    path = tmp_path / "small"
    path.write_bytes(b"hello\n")
    result = chunk_file(path, PARAMS, "cdc", whole_file=False)
    assert result.chunks == [Chunk(0, 6, blake3.blake3(b"hello\n").hexdigest())]
    assert result.blake3 is None


def test_odd_min_size_is_respected(tmp_path: Path):
    params = ChunkingParams(fixed_size=4096, min_size=1001, avg_size=4096, max_size=16384)
    data = random.Random(3).randbytes(2 * MiB)
    path = tmp_path / "odd"
    path.write_bytes(data)
    check_layout(chunk_file(path, params, "cdc").chunks, data, params)


def test_on_bytes_reports_every_byte(tmp_path: Path):
    data = os.urandom(3 * MiB + 7)
    path = tmp_path / "p"
    path.write_bytes(data)
    seen: list[int] = []
    chunk_file(path, PARAMS, "cdc", on_bytes=seen.append)
    assert sum(seen) == len(data)


@pytest.mark.parametrize(
    "params",
    [
        ChunkingParams(fixed_size=MiB, min_size=2 * MiB, avg_size=4 * MiB, max_size=8 * MiB),
        ChunkingParams(fixed_size=MiB, min_size=MiB, avg_size=8 * MiB, max_size=16 * MiB),
        ChunkingParams(fixed_size=MiB, min_size=MiB, avg_size=MiB, max_size=32 * MiB),
        ChunkingParams(fixed_size=MiB, min_size=MiB, avg_size=512 * KiB, max_size=4 * MiB),
    ],
)
def test_unusable_cdc_sizes_are_refused(tmp_path: Path, params: ChunkingParams):
    path = tmp_path / "x"
    path.write_bytes(b"x" * 100)
    with pytest.raises(ChunkingError):
        chunk_file(path, params, "cdc")


def test_unknown_mode_is_refused(tmp_path: Path):
    path = tmp_path / "x"
    path.write_bytes(b"x")
    with pytest.raises(ChunkingError, match="unknown chunking mode"):
        chunk_file(path, PARAMS, "rabin")  # type: ignore[arg-type]


def test_memory_does_not_grow_with_the_file(tmp_path: Path):
    params = ChunkingParams(fixed_size=MiB, min_size=64 * KiB, avg_size=256 * KiB, max_size=MiB)
    path = tmp_path / "big"
    with open(path, "wb") as f:
        for _ in range(48):
            f.write(os.urandom(MiB))
    tracemalloc.start()
    try:
        result = chunk_file(path, params, "cdc", workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == 48 * MiB
    # Stream buffer (2 × max) plus a window of 2 × workers + 2 chunks, and the list.
    assert peak < 12 * MiB, peak


def test_hash_cache_is_invalidated_by_any_write(tmp_path):
    from ingestd.daemon.client._state import HashCache

    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(300_000))
    params = ChunkingParams(fixed_size=65536, min_size=16384, avg_size=65536, max_size=262144)
    plan = chunk_file(path, params, "cdc")
    cache = HashCache(tmp_path / "cache")
    st = os.stat(path)
    key = HashCache.fingerprint(path, st, "cdc", params)
    assert cache.load(key) is None
    cache.save(key, plan)
    assert cache.load(key) == plan
    # Same size, same mtime put back: the ctime still tells the file changed.
    with open(path, "r+b") as f:
        f.write(b"changed")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert HashCache.fingerprint(path, os.stat(path), "cdc", params) != key
    assert HashCache.fingerprint(path, st, "fixed", params) != key

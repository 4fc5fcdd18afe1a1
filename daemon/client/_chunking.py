"""Cut a file into chunks and name each by its BLAKE3, as the `/v1` API expects.

Two layouts: `cdc` (FastCDC content-defined chunking with the server's
min/avg/max sizes, so an insertion near the start of a file changes only the
chunks around it) and `fixed` (every chunk `fixed_size` bytes but the last).

The file is read once, sequentially, through a bounded buffer; chunk hashes
are computed in a thread pool (blake3 releases the GIL) while the reader moves
on, and the whole-file BLAKE3 is fed the same bytes in order on its own
thread. At most a small, fixed number of chunks is held in memory at a time,
so memory does not grow with the file beyond the returned chunk list.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import blake3

Mode = Literal["cdc", "fixed"]
MODES: tuple[Mode, ...] = ("cdc", "fixed")

# pyfastcdc accepts only these sizes (see pyfastcdc/cy/fastcdc.pyx).
_CDC_BOUNDS = {
    "min_size": (64, 1 << 20),
    "avg_size": (256, 4 << 20),
    "max_size": (1024, 16 << 20),
}


class ChunkingError(ValueError):
    """The file cannot be cut as asked (bad parameters, or it changed while being read)."""


class FileChangedError(ChunkingError):
    """The file's size changed while it was being read."""


class Chunk(NamedTuple):
    offset: int
    size: int
    hash: str  # BLAKE3, lowercase hex


@dataclass(frozen=True)
class ChunkingParams:
    """The chunk sizes a server asks for (`chunking` in `GET /v1/info`)."""

    fixed_size: int
    min_size: int
    avg_size: int
    max_size: int

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> ChunkingParams:
        c = info["chunking"]
        return cls(int(c["fixed_size"]), int(c["min_size"]), int(c["avg_size"]), int(c["max_size"]))

    def as_dict(self) -> dict[str, int]:
        return {
            "fixed_size": self.fixed_size,
            "min_size": self.min_size,
            "avg_size": self.avg_size,
            "max_size": self.max_size,
        }


@dataclass(frozen=True)
class ChunkedFile:
    size: int
    chunks: list[Chunk]
    blake3: str | None  # of the whole file; None when not asked for


def chunk_file(
    path: str | os.PathLike[str],
    params: ChunkingParams,
    mode: Mode = "cdc",
    *,
    workers: int | None = None,
    whole_file: bool = True,
    on_bytes: Callable[[int], None] | None = None,
) -> ChunkedFile:
    """Cut `path` into chunks and hash each (and, with `whole_file`, the whole file).

    `workers` hashing threads (default: one per CPU). `on_bytes(n)` is called
    from this thread as each chunk's hash becomes known. Raises ChunkingError
    if the parameters are unusable or the file's size changed while it was read.
    """
    if mode not in MODES:
        raise ChunkingError(f"unknown chunking mode {mode!r} (expected one of {', '.join(MODES)})")
    workers = max(1, workers or os.cpu_count() or 1)
    expected = os.stat(path).st_size
    # Enough chunks in flight to keep every hashing thread busy, few enough to bound memory.
    window = 2 * workers + 2
    whole = blake3.blake3(max_threads=blake3.blake3.AUTO) if whole_file else None
    chunks: list[Chunk] = []
    pending: collections.deque[tuple[int, int, Future[str], Future[Any] | None]] = (
        collections.deque()
    )

    def settle_oldest() -> None:
        offset, size, hashed, fed = pending.popleft()
        chunks.append(Chunk(offset, size, hashed.result()))
        if fed is not None:
            fed.result()
        if on_bytes is not None:
            on_bytes(size)

    with (
        open(path, "rb", buffering=0) as f,
        ThreadPoolExecutor(workers, thread_name_prefix="chunk-hash") as hash_pool,
        # One thread, so the whole-file hasher sees the chunks in file order.
        ThreadPoolExecutor(1, thread_name_prefix="file-hash") as file_pool,
    ):
        pieces = _cdc_pieces(f, params) if mode == "cdc" else _fixed_pieces(f, params.fixed_size)
        try:
            for offset, data in pieces:
                fed = file_pool.submit(whole.update, data) if whole is not None else None
                pending.append((offset, len(data), hash_pool.submit(_hex, data), fed))
                if len(pending) >= window:
                    settle_oldest()
            while pending:
                settle_oldest()
        except BaseException:
            for _, _, hashed, fed in pending:
                hashed.cancel()
                if fed is not None:
                    fed.cancel()
            raise

    total = sum(c.size for c in chunks)
    if total != expected or os.stat(path).st_size != expected:
        raise FileChangedError(f"{path} changed size while it was being read")
    return ChunkedFile(total, chunks, whole.hexdigest() if whole is not None else None)


def _hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _fixed_pieces(f: Any, size: int) -> Iterator[tuple[int, bytes]]:
    if size < 1:
        raise ChunkingError(f"fixed chunk size must be positive, got {size}")
    offset = 0
    while True:
        data = _read_exactly(f, size)
        if not data:
            return
        yield offset, data
        offset += len(data)


def _read_exactly(f: Any, size: int) -> bytes:
    """Up to `size` bytes; fewer only at end of file (a raw read may return less)."""
    data = f.read(size)
    if not data or len(data) == size:
        return data
    buf = bytearray(data)
    while len(buf) < size and (more := f.read(size - len(buf))):
        buf += more
    return bytes(buf)


def cdc_chunker(params: ChunkingParams) -> Any:
    """A pyfastcdc FastCDC configured with the server's sizes."""
    from pyfastcdc import FastCDC

    # pyfastcdc may cut one byte short of an odd min_size (it scans in steps of
    # two from min_size rounded down), which the server would refuse.
    min_size = params.min_size + params.min_size % 2
    sizes = {"min_size": min_size, "avg_size": params.avg_size, "max_size": params.max_size}
    for name, value in sizes.items():
        low, high = _CDC_BOUNDS[name]
        if not low <= value <= high:
            raise ChunkingError(
                f"server's cdc {name} {value} is outside what FastCDC supports "
                f"({low}..{high}); use fixed-size chunking instead"
            )
    if not min_size <= params.avg_size <= params.max_size:
        raise ChunkingError(f"server's cdc sizes are inconsistent: {sizes}")
    return FastCDC(params.avg_size, min_size=min_size, max_size=params.max_size)


def _cdc_pieces(f: Any, params: ChunkingParams) -> Iterator[tuple[int, bytes]]:
    # cut_stream reads through a buffer of 2 × max_size and reuses it, so each
    # chunk is copied out before the next cut; a memory map (cut_file) would
    # avoid the copy but dies with SIGBUS if the file is truncated meanwhile.
    for chunk in cdc_chunker(params).cut_stream(f):
        yield chunk.offset, bytes(chunk.data)

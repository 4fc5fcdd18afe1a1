"""A seekable, streaming view of a manifest's bytes, read from chunk objects.

No materialised file is needed: `ManifestReader` is an `io.RawIOBase`, so it
can be wrapped in `io.BufferedReader` or handed to any code that wants a
binary file object (pyarrow, zipfile, a hasher).
"""

from __future__ import annotations

import bisect
import io
from itertools import accumulate

from .chunkstore import ChunkHandle, ChunkStore
from .errors import CorruptObject


class ManifestReader(io.RawIOBase):
    def __init__(self, chunks: ChunkStore, entries: list[tuple[str, int]]) -> None:
        super().__init__()
        self._chunks = chunks
        self._hashes = [h for h, _ in entries]
        self._lengths = [n for _, n in entries]
        # _starts[i] is the offset of chunk i; the last element is the size.
        self._starts = [0, *accumulate(self._lengths)]
        self.size = self._starts[-1]
        self._pos = 0
        self._open_index = -1
        self._handle: ChunkHandle | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._pos >= self.size or not len(view):
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        within = self._pos - self._starts[index]
        want = min(len(view), self._lengths[index] - within)
        got = self._chunk(index).readinto(view[:want], within)
        if got != want:
            raise CorruptObject(f"object {self._hashes[index]} is shorter than its manifest entry")
        self._pos += got
        return got

    def read(self, size: int = -1) -> bytes:
        """Read up to `size` bytes, crossing chunk boundaries (short only at EOF)."""
        remaining = self.size - self._pos
        if size < 0 or size > remaining:
            size = max(remaining, 0)
        out = bytearray(size)
        view = memoryview(out)
        filled = 0
        while filled < size:
            n = self.readinto(view[filled:])
            if n == 0:
                break
            filled += n
        view.release()
        del out[filled:]
        return bytes(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def _chunk(self, index: int) -> ChunkHandle:
        if index != self._open_index or self._handle is None:
            self._close_handle()
            self._handle = self._chunks.open(self._hashes[index])
            self._open_index = index
        return self._handle

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._open_index = -1

    def close(self) -> None:
        self._close_handle()
        super().close()

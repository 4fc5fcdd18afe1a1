"""Writing a completed file out as an ordinary file, for tools that want a path."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .chunkstore import ChunkStore
from .errors import StorageError
from .localstore import fsync_dir
from .reader import ManifestReader

# Characters that must never reach a name a person reads: controls (C0, DEL,
# C1), bidi marks, overrides and isolates, line and paragraph separators (the
# body of a regex character class).
UNREADABLE_CHARS = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
# Those, and what a path component must not hold.
_UNSAFE = re.compile(f"[{UNREADABLE_CHARS}" + '/\\\\:*?"<>|]')
_MAX_NAME_BYTES = 200


def safe_filename(name: str) -> str:
    """A single path component derived from a client's filename.

    Keeps only the last component of any path the client sent, removes control
    and reserved characters, refuses names made of dots, and bounds the length
    so that a name never leaves its directory or trips filesystem limits.
    """
    name = unicodedata.normalize("NFC", name).replace("\\", "/").split("/")[-1]
    name = _UNSAFE.sub("_", name).strip().lstrip(".")
    if not name:
        return "file"
    encoded = name.encode()
    if len(encoded) > _MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext = (dot + ext) if dot and len(ext.encode()) <= 16 else ""
        keep = _MAX_NAME_BYTES - len(ext.encode())
        name = encoded[:keep].decode(errors="ignore") + ext
    return name


# Copies are written in blocks of this size, whole blocks across chunk
# boundaries: writes that start mid-page (chunks of any length, back to back)
# cost the kernel several times more per byte.
COPY_BLOCK = 8 << 20


def materialize(
    chunks: ChunkStore,
    entries: list[tuple[str, int]],
    dest: Path,
    *,
    within: Path,
    durable: bool,
    same_as: str | None = None,
    observers: Sequence[Callable[[memoryview], object]] = (),
) -> Path:
    """Write the bytes of `entries` to `dest`, read once from the chunk store;
    every block read is also given to each of `observers` (hashers), so that
    a completion reads its content once for both.

    The copy is written to a temp name and renamed, so `dest` either does not
    exist or holds the whole file. `within` is the directory `dest` must stay
    inside. Copies are read-only: they are records of what was accepted. So
    when `same_as` names an existing copy of identical content, `dest` is a
    hard link to it rather than another copy (and `observers` see nothing).
    """
    dest = dest.resolve()
    if not dest.is_relative_to(within.resolve()):
        raise StorageError(f"refusing to write outside {within}: {dest}")
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty_dirs(dest.parent, within)
        raise StorageError(f"could not materialise {dest}: {exc}") from exc
    if same_as is not None:
        try:
            tmp.unlink(missing_ok=True)
            os.link(same_as, tmp)
            os.rename(tmp, dest)
            if durable:
                fsync_dir(dest.parent)
            return dest
        except OSError:
            tmp.unlink(missing_ok=True)  # the twin went away: copy instead
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
        try:
            _copy(chunks, entries, out, observers)
            if durable:
                os.fsync(out)
        finally:
            os.close(out)
        os.rename(tmp, dest)
        if durable:
            fsync_dir(dest.parent)
    except (OSError, StorageError) as exc:
        tmp.unlink(missing_ok=True)
        _remove_empty_dirs(dest.parent, within)
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"could not materialise {dest}: {exc}") from exc
    return dest


def _copy(
    chunks: ChunkStore,
    entries: list[tuple[str, int]],
    out: int,
    observers: Sequence[Callable[[memoryview], object]],
) -> None:
    """Write the manifest's bytes to `out`. Where the chunks lie in local
    files, the kernel copies them (copy_file_range: 2.8x faster than writing
    from Python here, bench/copy_out.py); the observers still see every byte,
    read from the same immutable ranges."""
    ranges = local_ranges(chunks, entries)
    kernel = _KernelCopy(ranges, out) if ranges is not None else None
    try:
        if kernel is not None and not observers:
            if kernel.copy(0, sum(length for _, _, length in kernel.ranges)):
                return
            kernel = None
        position = 0
        for block in read_blocks(chunks, entries, COPY_BLOCK):
            for observe in observers:
                observe(block)
            if kernel is None or not kernel.copy(position, len(block)):
                kernel = None  # this filesystem cannot: write the bytes ourselves
                _pwrite_all(out, block, position)
            position += len(block)
    finally:
        if kernel is not None:
            kernel.close()


def local_ranges(
    chunks: ChunkStore, entries: list[tuple[str, int]]
) -> list[tuple[Path, int, int]] | None:
    """The manifest's bytes as (file, offset, length) ranges, neighbours in the
    same file merged; None when any chunk is not in a local file."""
    ranges: list[tuple[Path, int, int]] = []
    for digest, length in entries:
        if length == 0:
            continue
        found = chunks.extent(digest)
        if found is None or found[2] != length:
            return None
        path, offset, _ = found
        if ranges and ranges[-1][0] == path and sum(ranges[-1][1:]) == offset:
            ranges[-1] = (path, ranges[-1][1], ranges[-1][2] + length)
        else:
            ranges.append((path, offset, length))
    return ranges


# copy_file_range's answers that mean "not between these files" (another
# filesystem on older kernels, or one that does not support it).
_CANNOT_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


class _KernelCopy:
    """Copies the next bytes of `ranges` to the same offsets of `out`."""

    def __init__(self, ranges: list[tuple[Path, int, int]], out: int) -> None:
        self.ranges = ranges
        self._out = out
        self._index = 0  # the range being copied, and how far into it
        self._within = 0
        self._source: tuple[Path, int] | None = None

    def copy(self, position: int, size: int) -> bool:
        """Copy `size` bytes to `position`; False (nothing to undo: the caller
        writes them) when the filesystem cannot."""
        while size:
            path, offset, length = self.ranges[self._index]
            n = min(size, length - self._within)
            src = self._open(path)
            done = 0
            while done < n:
                try:
                    copied = os.copy_file_range(
                        src, self._out, n - done, offset + self._within + done, position + done
                    )
                except OSError as exc:
                    if exc.errno in _CANNOT_COPY:
                        self.close()
                        return False
                    raise
                if copied == 0:
                    raise StorageError(f"{path} is shorter than its chunks' records")
                done += copied
            position += n
            size -= n
            self._within += n
            if self._within == length:
                self._index, self._within = self._index + 1, 0
        return True

    def _open(self, path: Path) -> int:
        if self._source is None or self._source[0] != path:
            self.close()
            self._source = (path, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        return self._source[1]

    def close(self) -> None:
        if self._source is not None:
            os.close(self._source[1])
            self._source = None


def _pwrite_all(fd: int, data: memoryview, position: int) -> None:
    while data:
        written = os.pwrite(fd, data, position)
        data, position = data[written:], position + written


def _remove_empty_dirs(directory: Path, within: Path) -> None:
    """Remove `directory` and its parents up to `within`, those that are empty."""
    top = within.resolve()
    while directory != top and directory.is_relative_to(top):
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or gone): nothing more to tidy
        directory = directory.parent


def read_blocks(
    chunks: ChunkStore, entries: list[tuple[str, int]], size: int
) -> Iterator[memoryview]:
    """The manifest's bytes in full blocks of `size` (the last one shorter),
    each valid until the next is asked for."""
    buf = bytearray(size)
    view = memoryview(buf)
    with ManifestReader(chunks, entries) as reader:
        while True:
            filled = 0
            while filled < size and (n := reader.readinto(view[filled:])):
                filled += n
            if filled:
                yield view[:filled]
            if filled < size:
                return


def remove_copy(path: str | None) -> None:
    """Remove a materialised copy (derived data) and its folder."""
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(os.path.dirname(path))

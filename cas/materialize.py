"""Writing a completed file out as an ordinary file, for tools that want a path."""

from __future__ import annotations

import contextlib
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
            for block in read_blocks(chunks, entries, COPY_BLOCK):
                for observe in observers:
                    observe(block)
                while block:
                    block = block[os.write(out, block) :]
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

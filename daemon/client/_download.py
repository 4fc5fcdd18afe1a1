"""A download to local disk (`Client.download`): streamed into a part file
beside the destination while its BLAKE3 is computed, resumed from that part
file with `Range` after an interruption, and moved into place only once
verified, never over an existing file unless asked. The request itself is
the client's (`Client._fetch`)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import blake3

from ._exceptions import DestinationExists, DownloadError

if TYPE_CHECKING:
    from ._client import Client

DOWNLOAD_BLOCK = 1 << 20


class DownloadProgress(Protocol):
    """Told how a download advances: "total" (the file's size, first), "kept"
    (`nbytes` of an earlier run's partial download, hashed again), then
    "received" (`nbytes` more)."""

    def __call__(self, kind: str, nbytes: int) -> None: ...


def download(
    client: Client,
    file_id: str,
    dest: str | os.PathLike[str] | None,
    *,
    force: bool,
    progress: DownloadProgress | None,
) -> Path:
    """`Client.download`: see there."""
    facts = client.file(file_id)
    dest = Path.cwd() if dest is None else Path(dest)
    if dest.is_dir():
        dest = dest / _safe_name(facts.filename, file_id)
    if not dest.parent.is_dir():
        raise DownloadError(f"{dest.parent}: no such directory")
    if (dest.exists() or dest.is_symlink()) and not force:
        raise DestinationExists(f"{dest} exists (use --force, or force=True, to overwrite it)")
    part = dest.parent / f".{dest.name}.{facts.blake3[:16]}.part"
    try:
        # 0o666 before the umask, as any program's new file (mkstemp would give 0600).
        fd = os.open(part, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        raise DownloadError(f"{part}: {exc.strerror}") from exc
    with os.fdopen(fd, "r+b") as out:
        if not stat.S_ISREG(os.fstat(out.fileno()).st_mode):
            raise DownloadError(f"{part} is not a regular file")
        hasher = blake3.blake3()
        kept = 0
        while block := out.read(DOWNLOAD_BLOCK):  # what an interrupted run wrote
            hasher.update(block)
            kept += len(block)
        if kept > facts.size:
            out.seek(0)
            out.truncate()
            hasher, kept = blake3.blake3(), 0
        try:
            digest, size = client._fetch(file_id, facts, out, hasher, kept, progress)
        except BaseException:
            # Keep what can be resumed; an empty part is only clutter.
            if os.fstat(out.fileno()).st_size == 0:
                with contextlib.suppress(OSError):
                    os.unlink(part)
            raise
        if digest != facts.blake3 or size != facts.size:
            out.close()
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise DownloadError(
                f"file {file_id}: received {size} bytes with BLAKE3 {digest}, "
                f"expected {facts.size} bytes with BLAKE3 {facts.blake3}"
                + (f" ({kept} of them kept from an earlier run)" if kept else "")
                + "; the partial download was removed: run it again"
            )
        out.flush()
        os.fsync(out.fileno())
    _place(part, dest, force)
    return dest


def _place(part: Path, dest: Path, force: bool) -> None:
    """Move a verified download into place; without `force`, never over a file
    that appeared meanwhile (a hard link fails if `dest` exists)."""
    if force:
        os.replace(part, dest)
        return
    try:
        os.link(part, dest)
    except FileExistsError:
        raise DestinationExists(
            f"{dest} exists (use --force, or force=True, to overwrite it)"
        ) from None
    except OSError:  # a filesystem without hard links
        if dest.exists():
            raise DestinationExists(f"{dest} exists") from None
        os.rename(part, dest)
        return
    os.unlink(part)


def _safe_name(filename: str, fallback: str) -> str:
    name = os.path.basename(filename.replace("\\", "/")).strip()
    if name in ("", ".", "..") or name.startswith("."):
        name = name.lstrip(".") or fallback
    return name

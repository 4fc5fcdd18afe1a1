"""What the client keeps on local disk between runs: a state file per
unfinished upload (so that running it again resumes it) and the hash cache
(so that an unchanged file is not read again). Both live in $INGESTD_STATE_DIR,
default the user's cache directory, and forget entries after STATE_MAX_AGE."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ._chunking import Chunk, ChunkedFile, ChunkingParams

STATE_MAX_AGE = 30 * 24 * 3600.0  # forget state files older than this (sessions expire before)


class UploadState:
    """One small JSON file per unfinished upload, keyed by the file's fingerprint.

    A file per upload (rather than one shared file) lets several `ingestd
    upload` processes run at once without locking. Each is written atomically
    before the first chunk is sent, so even a SIGKILL leaves it usable.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        if directory is None:
            directory = os.environ.get("INGESTD_STATE_DIR") or _default_state_dir()
        self.directory = Path(directory)
        self._pruned = False

    @staticmethod
    def key(fingerprint: dict[str, Any]) -> str:
        text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.directory / f"upload-{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None  # absent or damaged: start a new upload
        return record if isinstance(record, dict) else None

    def save(self, key: str, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._pruned:
            _prune(self.directory, "upload-*.json")
            self._pruned = True
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".upload-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()


class HashCache:
    """Chunk lists of files already hashed, so that uploading an unchanged file
    again does not read it again (as restic and rsync do).

    Keyed by path, size, mtime, ctime, inode and chunking parameters: any
    write to the file changes its ctime, which no one can set back.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pruned = False

    @staticmethod
    def fingerprint(path: Path, st: os.stat_result, mode: str, params: ChunkingParams) -> str:
        facts = [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        facts += [st.st_dev, mode, params.as_dict()]
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.directory / f"hashes-{key}.json"

    def load(self, key: str) -> ChunkedFile | None:
        try:
            record = json.loads(self._path(key).read_text())
            chunks = [Chunk(*c) for c in record["chunks"]]
            return ChunkedFile(size=record["size"], chunks=chunks, blake3=record["blake3"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or damaged: hash the file

    def save(self, key: str, plan: ChunkedFile) -> None:
        chunks = [list(c) for c in plan.chunks]
        record = {"size": plan.size, "blake3": plan.blake3, "chunks": chunks}
        with contextlib.suppress(OSError):  # a cache: failing to write it costs only time
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self._pruned:
                _prune(self.directory, "hashes-*.json")
                self._pruned = True
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".hashes-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, separators=(",", ":"))
            os.replace(tmp, self._path(key))


def _prune(directory: Path, pattern: str) -> None:
    """Remove entries older than STATE_MAX_AGE: those of files that changed or
    were never uploaded again would stay forever. Once per client, not per
    file: a directory upload would stat every entry for each of its files."""
    cutoff = time.time() - STATE_MAX_AGE
    for entry in directory.glob(pattern):
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                entry.unlink()


def _default_state_dir() -> str:
    import platformdirs

    return platformdirs.user_cache_dir("ingestd")

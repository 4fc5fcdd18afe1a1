"""The LMDB index and its group-commit writer.

LMDB allows one write transaction at a time. Instead of one synced commit per
chunk, every write goes through `GroupCommitter`: a single writer thread
takes all operations queued while the previous commit was syncing, applies
each in its own nested transaction (so one failing operation does not undo
the others), fsyncs the directories those operations dirtied, and commits
once. Callers block until their operation is durable.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lmdb

from . import records
from .errors import StorageError, StoreError
from .objects import fsync_dir

# "declared" holds the chunk list a client announced for a session
# (session/index -> hash, length); "parts" the chunks actually attached.
# "file_hashes" indexes files by content (BLAKE3 + file id), "manifest_files"
# by the BLAKE3 of their packed manifest (identical manifests, identical
# bytes: a re-upload is recognised without re-reading it); "outbox" holds
# plugin messages awaiting delivery; "streams" the tus state of sessions that
# receive one ordered byte stream (session id -> records.Stream).
DATABASES = (
    "meta",
    "chunks",
    "sessions",
    "parts",
    "declared",
    "files",
    "file_hashes",
    "manifests",
    "manifest_files",
    "jobs",
    "outbox",
    "streams",
)
DEFAULT_MAP_SIZE = 1 << 38  # 256 GiB of address space; the file grows as needed

WriteOp = Callable[[lmdb.Transaction], Any]


class Index:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        group_commit: bool = True,
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(self.path),
            max_dbs=32,  # room for databases later features add
            map_size=map_size,
            sync=durable,
            metasync=durable,
            max_readers=1024,
        )
        self.db = {name: self.env.open_db(name.encode()) for name in DATABASES}
        self._check_format()
        self.writer = GroupCommitter(self.env, durable=durable, grouped=group_commit)

    def _check_format(self) -> None:
        with self.env.begin(write=True, db=self.db["meta"]) as txn:
            raw = txn.get(b"format_version")
            if raw is None:
                txn.put(b"format_version", str(records.FORMAT_VERSION).encode())
            elif int(raw) > records.FORMAT_VERSION:
                raise StorageError(
                    f"index at {self.path} has format {int(raw)}, newer than this "
                    f"ingestd understands ({records.FORMAT_VERSION})"
                )

    def format_version(self) -> int:
        with self.env.begin(db=self.db["meta"]) as txn:
            return int(txn.get(b"format_version"))

    def reader(self) -> lmdb.Transaction:
        """A read-only snapshot; use it as a context manager, on one thread."""
        return self.env.begin()

    def write(self, op: WriteOp, dirty_dirs: Iterable[str] = ()) -> Any:
        """Apply `op(txn)` in the next group commit and wait until it is durable."""
        return self.writer.submit(op, tuple(dirty_dirs))

    def get(self, txn: lmdb.Transaction, db: str, key: bytes, kind: type) -> Any:
        raw = txn.get(key, db=self.db[db])
        return None if raw is None else records.decode(kind, raw)

    def put(self, txn: lmdb.Transaction, db: str, key: bytes, record: Any) -> None:
        txn.put(key, records.encode(record), db=self.db[db])

    def close(self) -> None:
        self.writer.close()
        self.env.close()


class _Pending:
    __slots__ = ("op", "dirs", "done", "result", "error")

    def __init__(self, op: WriteOp, dirs: tuple[str, ...]) -> None:
        self.op = op
        self.dirs = dirs
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter:
    def __init__(self, env: lmdb.Environment, *, durable: bool, grouped: bool = True) -> None:
        self._env = env
        self._durable = durable
        self._grouped = grouped
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.commits = 0
        self.ops = 0
        self._thread = threading.Thread(target=self._run, name="ingestd-index-writer", daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp, dirs: tuple[str, ...] = ()) -> Any:
        pending = _Pending(op, dirs)
        with self._cond:
            if self._closed:
                raise StorageError("the index is closed")
            self._queue.append(pending)
            self._cond.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                if self._grouped:
                    batch = list(self._queue)
                    self._queue.clear()
                else:
                    batch = [self._queue.popleft()]
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            if self._durable:
                for d in sorted({d for p in batch for d in p.dirs}):
                    fsync_dir(d)
            with self._env.begin(write=True) as txn:
                for p in batch:
                    child = self._env.begin(write=True, parent=txn)
                    try:
                        p.result = p.op(child)
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        child.abort()
                        p.error = exc
                    else:
                        child.commit()
            self.commits += 1
            self.ops += len(batch)
        except Exception as exc:  # noqa: BLE001 - the writer thread must outlive any failure
            for p in batch:
                if p.error is None or not isinstance(p.error, StoreError):
                    p.error = StorageError(f"index commit failed: {exc}")
        finally:
            for p in batch:
                p.done.set()
